import { execFile } from "node:child_process";
import { resolve } from "node:path";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from "@bufbuild/protobuf/wkt";
import type * as grpc from "@grpc/grpc-js";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDataDir, TEST_DATABASE_URL, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { grpcClient, streamReader, unary, type GrpcClient } from "../support/grpc-js.js";
import { createKey, REPO, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * gRPC health checking and server reflection against a real `keygate serve`,
 * as grpc-js (with the vendored protos), buf curl and Kubernetes see them.
 */

const GRPC_STATUS = { OK: 0, CANCELLED: 1, INVALID_ARGUMENT: 3, NOT_FOUND: 5 } as const;

const SERVICES = [
  "envoy.service.auth.v3.Authorization",
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
  "keygate.v1.AuditService",
  "keygate.v1.AuthorizeService",
  "keygate.v1.KeyService",
  "keygate.v1.ResourceService",
];

let data: TestDataDir;
let server: ServerProcess;
let health: GrpcClient;
let reader: CreatedKeyJson;
const clients: GrpcClient[] = [];

beforeAll(async () => {
  data = await createTestDataDir();
  server = await startServerProcess([], { cwd: data.dir, env: data.env });
  reader = await createKey(["--role", "reader", "--name", "health-reader"], { cwd: data.dir, env: data.env });
  health = grpcClient("grpc/health/v1/health.proto", "grpc.health.v1.Health", server.port);
  clients.push(health);
});

afterAll(async () => {
  for (const client of clients) client.close();
  const code = await server?.stop();
  await data?.dispose();
  expect(code).toBe(0);
});

interface HealthCheckResponse {
  status: string;
}

const check = (service: string) => unary<HealthCheckResponse>(health, "Check", { service });

function watch(service: string) {
  const call = health.Watch!({ service }) as grpc.ClientReadableStream<HealthCheckResponse>;
  return { call, stream: streamReader(call) };
}

async function expectGrpcError(promise: Promise<unknown>, code: number): Promise<grpc.ServiceError> {
  const error = (await promise.then(
    () => undefined,
    (e: unknown) => e,
  )) as grpc.ServiceError | undefined;
  expect(error, "the call should have failed").toBeDefined();
  expect(error!.code).toBe(code);
  return error!;
}

// --- health -------------------------------------------------------------------

describe("grpc.health.v1.Health (grpc-js)", () => {
  it.each(["", ...SERVICES])("Check '%s' → SERVING", async (service) => {
    expect(await check(service)).toEqual({ status: "SERVING" });
  });

  it("Check of an unknown service → NOT_FOUND", async () => {
    const error = await expectGrpcError(check("keygate.v1.NoSuchService"), GRPC_STATUS.NOT_FOUND);
    expect(error.details).toBe('unknown service "keygate.v1.NoSuchService"');
  });

  it("List → every service, SERVING", async () => {
    const { statuses } = await unary<{ statuses: Record<string, HealthCheckResponse> }>(health, "List", {});
    expect(Object.keys(statuses).sort()).toEqual(["", ...SERVICES]);
    for (const status of Object.values(statuses)) expect(status).toEqual({ status: "SERVING" });
  });

  it("Watch sends SERVING at once and stays open until the client cancels", async () => {
    const { call, stream } = watch("keygate.v1.AuthorizeService");
    expect(await stream.message()).toEqual({ status: "SERVING" });
    call.cancel();
    const event = await stream.next();
    expect("error" in event && event.error.code).toBe(GRPC_STATUS.CANCELLED);
  });

  it("Watch of an unknown service → SERVICE_UNKNOWN, call kept open", async () => {
    const { call, stream } = watch("keygate.v1.NoSuchService");
    expect(await stream.message()).toEqual({ status: "SERVICE_UNKNOWN" });
    await expect(stream.next(300)).rejects.toThrow(/no stream event/);
    call.cancel();
  });
});

// --- reflection ---------------------------------------------------------------

interface ReflectionResponse {
  valid_host: string;
  original_request: object;
  message_response: string;
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  list_services_response?: { service: { name: string }[] };
  all_extension_numbers_response?: { base_type_name: string; extension_number: number[] };
  error_response?: { error_code: number; error_message: string };
}

/** A reflection stream: one request written, one response read, in turn. */
function reflection(version: "v1" | "v1alpha") {
  const client = grpcClient(`grpc/reflection/${version}/reflection.proto`, `grpc.reflection.${version}.ServerReflection`, server.port);
  clients.push(client);
  const call = client.ServerReflectionInfo!() as grpc.ClientDuplexStream<object, ReflectionResponse>;
  const stream = streamReader(call);
  return {
    async ask(request: object): Promise<ReflectionResponse> {
      call.write(request);
      return stream.message();
    },
    async close() {
      call.end();
      expect(await stream.next()).toEqual({ end: true });
    },
    next: () => stream.next(),
  };
}

function descriptors(response: ReflectionResponse): FileDescriptorProto[] {
  expect(response.message_response, JSON.stringify(response.error_response)).toBe("file_descriptor_response");
  return response.file_descriptor_response!.file_descriptor_proto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

/**
 * Files in an order where each comes after its imports, as a
 * FileDescriptorSet must be; a reflection answer may come in any order (grpcurl
 * and buf curl resolve imports by name). Fails when an import is missing.
 */
function importsFirst(files: FileDescriptorProto[]): FileDescriptorProto[] {
  const byName = new Map(files.map((f) => [f.name, f]));
  const ordered: FileDescriptorProto[] = [];
  const visit = (file: FileDescriptorProto) => {
    if (ordered.includes(file)) return;
    for (const name of file.dependency) {
      const dependency = byName.get(name);
      if (!dependency) throw new Error(`${file.name} imports ${name}, which was not sent`);
      visit(dependency);
    }
    ordered.push(file);
  };
  for (const file of files) visit(file);
  return ordered;
}

describe.each(["v1", "v1alpha"] as const)("grpc.reflection.%s.ServerReflection (grpc-js)", (version) => {
  it("list_services names every service served", async () => {
    const stream = reflection(version);
    const response = await stream.ask({ list_services: "" });
    expect(response.message_response).toBe("list_services_response");
    expect(response.list_services_response!.service.map((s) => s.name)).toEqual(SERVICES);
    await stream.close();
  });

  it("file_containing_symbol keygate.v1.AuthorizeService → authorize.proto with its methods", async () => {
    const stream = reflection(version);
    const response = await stream.ask({ host: "keygate", file_containing_symbol: "keygate.v1.AuthorizeService" });
    expect(response.valid_host).toBe("keygate");
    expect(response.original_request).toMatchObject({ file_containing_symbol: "keygate.v1.AuthorizeService" });
    const [file] = descriptors(response);
    expect(file).toMatchObject({ name: "keygate/v1/authorize.proto", package: "keygate.v1", syntax: "proto3" });
    const service = file!.service.find((s) => s.name === "AuthorizeService");
    expect(service?.method.map((m) => ({ name: m.name, input: m.inputType, output: m.outputType, clientStreaming: m.clientStreaming, serverStreaming: m.serverStreaming }))).toEqual([
      { name: "Authorize", input: ".keygate.v1.AuthorizeRequest", output: ".keygate.v1.AuthorizeResponse", clientStreaming: false, serverStreaming: false },
      {
        name: "AuthorizeStream",
        input: ".keygate.v1.AuthorizeStreamRequest",
        output: ".keygate.v1.AuthorizeStreamResponse",
        clientStreaming: true,
        serverStreaming: true,
      },
    ]);
    const request = file!.messageType.find((m) => m.name === "AuthorizeRequest");
    expect(request?.field.map((f) => [f.name, f.number])).toEqual([
      ["credential", 1],
      ["path", 2],
      ["method", 3],
      ["namespace", 4],
      ["org", 5],
      ["explain", 6],
    ]);
    await stream.close();
  });

  it.each([
    ["a method", "keygate.v1.AuthorizeService.Authorize", "keygate/v1/authorize.proto"],
    ["a message", "keygate.v1.ManageKeyRequest", "keygate/v1/key.proto"],
    ["an enum", "keygate.v1.Reason", "keygate/v1/authorize.proto"],
    ["a nested enum", "grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"],
    ["a nested message", "envoy.service.auth.v3.AttributeContext.HttpRequest", "envoy/service/auth/v3/attribute_context.proto"],
    ["a field", "keygate.v1.AuthorizeRequest.credential", "keygate/v1/authorize.proto"],
    ["an imported type", "envoy.config.core.v3.HeaderValueOption", "envoy/config/core/v3/base.proto"],
    ["a well-known type", "google.protobuf.Timestamp", "google/protobuf/timestamp.proto"],
    ["a leading dot", ".keygate.v1.AuditService", "keygate/v1/audit.proto"],
  ])("file_containing_symbol finds %s", async (_, symbol, fileName) => {
    const stream = reflection(version);
    const [file] = descriptors(await stream.ask({ file_containing_symbol: symbol }));
    expect(file?.name).toBe(fileName);
    await stream.close();
  });

  it("file_by_filename sends the file, then its imports not yet sent on this stream", async () => {
    const stream = reflection(version);
    const first = descriptors(await stream.ask({ file_by_filename: "keygate/v1/audit.proto" }));
    expect(first.map((f) => f.name)).toEqual(["keygate/v1/audit.proto", "google/protobuf/struct.proto", "google/protobuf/timestamp.proto"]);
    expect(first[0]!.dependency).toEqual(["google/protobuf/struct.proto", "google/protobuf/timestamp.proto"]);
    // Asked again on the same stream: the file itself, its imports already known.
    const again = descriptors(await stream.ask({ file_by_filename: "keygate/v1/audit.proto" }));
    expect(again.map((f) => f.name)).toEqual(["keygate/v1/audit.proto"]);
    // An imported file can be asked for by name, as grpcurl does.
    const imported = descriptors(await stream.ask({ file_by_filename: "google/protobuf/struct.proto" }));
    expect(imported.map((f) => f.name)).toEqual(["google/protobuf/struct.proto"]);
    await stream.close();
  });

  it("what one answer sends is a complete set: Envoy's Authorization resolves from it alone", async () => {
    const stream = reflection(version);
    const files = descriptors(await stream.ask({ file_containing_symbol: "envoy.service.auth.v3.Authorization" }));
    const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: importsFirst(files) }));
    const service = registry.getService("envoy.service.auth.v3.Authorization");
    expect(service?.methods.map((m) => [m.name, m.input.typeName, m.output.typeName])).toEqual([
      ["Check", "envoy.service.auth.v3.CheckRequest", "envoy.service.auth.v3.CheckResponse"],
    ]);
    const ok = registry.getMessage("envoy.service.auth.v3.OkHttpResponse");
    expect(ok?.fields.map((f) => [f.name, f.number])).toEqual([
      ["headers", 2],
      ["headers_to_remove", 5],
      ["dynamic_metadata", 3],
      ["response_headers_to_add", 6],
      ["query_parameters_to_set", 7],
      ["query_parameters_to_remove", 8],
    ]);
    await stream.close();
  });

  it.each([
    ["file_by_filename", { file_by_filename: "no/such.proto" }, "file not found: no/such.proto"],
    ["file_containing_symbol", { file_containing_symbol: "keygate.v1.Nope" }, "symbol not found: keygate.v1.Nope"],
    [
      "file_containing_extension",
      { file_containing_extension: { containing_type: "keygate.v1.AuthorizeRequest", extension_number: 100 } },
      "extension not found: keygate.v1.AuthorizeRequest 100",
    ],
    ["all_extension_numbers_of_type (unknown type)", { all_extension_numbers_of_type: "keygate.v1.Nope" }, "type not found: keygate.v1.Nope"],
  ])("%s of something unknown → error_response NOT_FOUND, stream still usable", async (_, request, message) => {
    const stream = reflection(version);
    const response = await stream.ask(request);
    expect(response.message_response).toBe("error_response");
    expect(response.error_response).toEqual({ error_code: GRPC_STATUS.NOT_FOUND, error_message: message });
    expect((await stream.ask({ list_services: "*" })).message_response).toBe("list_services_response");
    await stream.close();
  });

  it("all_extension_numbers_of_type of a known message: none", async () => {
    const stream = reflection(version);
    const response = await stream.ask({ all_extension_numbers_of_type: "keygate.v1.AuthorizeRequest" });
    expect(response.all_extension_numbers_response).toEqual({ base_type_name: "keygate.v1.AuthorizeRequest", extension_number: [] });
    await stream.close();
  });

  it("an empty request → error_response INVALID_ARGUMENT", async () => {
    const stream = reflection(version);
    const response = await stream.ask({ host: "" });
    expect(response.error_response?.error_code).toBe(GRPC_STATUS.INVALID_ARGUMENT);
    await stream.close();
  });
});

// --- buf curl, no schema: reflection only ---------------------------------------

const BUF = resolve(REPO, "node_modules/.bin/buf");

function bufCurl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done) => {
    execFile(BUF, ["curl", "--http2-prior-knowledge", ...args], { timeout: 30_000 }, (error, stdout, stderr) => {
      done({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe("buf curl without --schema (server reflection)", () => {
  it("--list-methods lists every method", async () => {
    const result = await bufCurl(["--list-methods", server.url]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout.trim().split("\n")).toEqual([
      "envoy.service.auth.v3.Authorization/Check",
      "grpc.health.v1.Health/Check",
      "grpc.health.v1.Health/List",
      "grpc.health.v1.Health/Watch",
      "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
      "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
      "keygate.v1.AuditService/ListAuditEvents",
      "keygate.v1.AuthorizeService/Authorize",
      "keygate.v1.AuthorizeService/AuthorizeStream",
      "keygate.v1.KeyService/ManageKey",
      "keygate.v1.ResourceService/Claim",
      "keygate.v1.ResourceService/Get",
      "keygate.v1.ResourceService/List",
      "keygate.v1.ResourceService/Release",
    ]);
  });

  it.each(["connect", "grpc"])("calls Authorize over %s with JSON in and out", async (protocol) => {
    const body = JSON.stringify({ credential: reader.key, path: "/sandboxes/abc", method: "GET" });
    const result = await bufCurl(["--protocol", protocol, "-d", body, `${server.url}/keygate.v1.AuthorizeService/Authorize`]);
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({ allowed: true, reason: "REASON_ALLOWED", key: { id: reader.id }, matchedRule: expect.stringMatching(/^policy\.csv:\d+$/) });
    expect(result.stdout).not.toContain(reader.key);
  });

  it("checks health", async () => {
    const result = await bufCurl(["--protocol", "grpc", "-d", "{}", `${server.url}/grpc.health.v1.Health/Check`]);
    expect(result.code, result.stderr).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({ status: "SERVING" });
  });
});

// --- the database goes away (Postgres only) ---------------------------------------

function adminClient(): pg.Client {
  const url = TEST_DATABASE_URL!;
  return new pg.Client({ connectionString: url, user: new URL(url).username || process.env.USER || "postgres" });
}

/** Polls `probe` (no fixed sleep) until it returns `expected`, or fails after `timeoutMs`. */
async function until<T>(probe: () => Promise<T>, expected: T, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    last = await probe();
    if (last === expected) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  expect(last).toBe(expected);
}

describe.runIf(testDatabaseKind === "postgres")("over Postgres, when keygate's database refuses connections", () => {
  it("Check and Watch turn NOT_SERVING, ext_authz denies 503, then SERVING again once it is back", async () => {
    const database = new URL(data.env.DATABASE_URL!).pathname.slice(1);
    const fresh = await createKey(["--role", "reader", "--name", "never-used"], { cwd: data.dir, env: data.env });
    const envoy = grpcClient("envoy/service/auth/v3/external_auth.proto", "envoy.service.auth.v3.Authorization", server.port);
    clients.push(envoy);
    const { call, stream } = watch("");
    expect(await stream.message()).toEqual({ status: "SERVING" });

    const admin = adminClient();
    await admin.connect();
    try {
      // Only this test's database: the server itself and every other database are untouched.
      await admin.query(`alter database ${database} allow_connections false`);
      await admin.query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", [database]);

      await until(async () => (await check("")).status, "NOT_SERVING");
      expect(await stream.message(10_000)).toEqual({ status: "NOT_SERVING" });
      expect(await check("keygate.v1.AuthorizeService")).toEqual({ status: "NOT_SERVING" });

      // A key never seen before cannot be looked up: fail closed.
      const denied = await unary<{ status: { code: number }; denied_response: { status: { code: string }; body: string } }>(envoy, "Check", {
        attributes: { request: { http: { method: "GET", path: "/sandboxes", headers: { authorization: `Bearer ${fresh.key}` } } } },
      });
      expect(denied.status.code).toBe(14); // UNAVAILABLE
      expect(denied.denied_response.status.code).toBe("ServiceUnavailable");
      expect(JSON.parse(denied.denied_response.body)).toMatchObject({ code: 503 });
    } finally {
      await admin.query(`alter database ${database} allow_connections true`);
      await admin.end();
    }

    expect(await stream.message(10_000)).toEqual({ status: "SERVING" });
    await until(async () => (await check("")).status, "SERVING");
    call.cancel();
  });
});

// --- shutdown (last: it stops the server) -----------------------------------------

describe("on shutdown", () => {
  it("a Watch gets NOT_SERVING, then its stream ends; an open reflection stream ends; neither holds the shutdown", async () => {
    const { stream } = watch("");
    expect(await stream.message()).toEqual({ status: "SERVING" });
    const open = reflection("v1");
    expect((await open.ask({ list_services: "" })).message_response).toBe("list_services_response");
    const started = Date.now();
    const stopped = server.stop();
    expect(await stream.message()).toEqual({ status: "NOT_SERVING" });
    expect(await stream.next()).toEqual({ end: true });
    expect(await open.next()).toEqual({ end: true });
    expect(await stopped).toBe(0);
    // Well inside the shutdown grace period (10 s): the open Watch did not hold it.
    expect(Date.now() - started).toBeLessThan(5_000);
  });
});
