import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { createKeygateClient } from "../../src/client/index.js";
import { cubeRequest, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { grpcClient, unary, type GrpcClient } from "../support/grpc-js.js";
import { cliBudgetMs, createKey, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * Ownership holds on every way in, not only in the proxy: a real server with
 * `--ownership on`, sandboxes claimed through the ResourceService, and the
 * same three questions asked through the Cube callback, Authorize (Connect
 * and grpc-js), AuthorizeStream, Envoy ext_authz, nginx auth_request and
 * Traefik forwardAuth: acme's own sandbox (allowed), globex's sandbox and a
 * sandbox nobody owns (the same not-found answer), each with and without the
 * /cubeapi/v1 prefix; a platform key (org *) reaches all.
 */

let data: TestDataDir;
let server: ServerProcess;
let envoy: GrpcClient;
let grpcAuthorize: GrpcClient;
const keys = {} as Record<"acme" | "globex" | "platform" | "acmeAdmin" | "globexAdmin", CreatedKeyJson>;

beforeAll(async () => {
  data = await createTestDataDir();
  const options = { cwd: data.dir, env: data.env };
  server = await startServerProcess(["--ownership", "on"], options);
  keys.acme = await createKey(["--org", "acme", "--role", "writer", "--name", "acme-writer"], options);
  keys.globex = await createKey(["--org", "globex", "--role", "writer", "--name", "globex-writer"], options);
  keys.platform = await createKey(["--org", "*", "--role", "writer", "--name", "platform"], options);
  keys.acmeAdmin = await createKey(["--org", "acme", "--role", "admin", "--name", "acme-admin"], options);
  keys.globexAdmin = await createKey(["--org", "globex", "--role", "admin", "--name", "globex-admin"], options);
  for (const [admin, id] of [
    [keys.acmeAdmin, "sbx-acme"],
    [keys.globexAdmin, "sbx-globex"],
  ] as const) {
    const client = createKeygateClient({ baseUrl: server.url, apiKey: admin.key });
    try {
      await client.resources.claim({ kind: "sandboxes", id });
    } finally {
      client.close();
    }
  }
  envoy = grpcClient("envoy/service/auth/v3/external_auth.proto", "envoy.service.auth.v3.Authorization", server.port);
  grpcAuthorize = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
}, cliBudgetMs(7));

afterAll(async () => {
  envoy?.close();
  grpcAuthorize?.close();
  const code = await server?.stop();
  await data?.dispose();
  expect(code).toBe(0);
});

/** What an entry answered, reduced to what every entry can say. */
interface Answer {
  allowed: boolean;
  /** HTTP status where the entry has one (0 for Authorize). */
  status: number;
  message: string;
}

type Entry = (key: string, method: string, path: string) => Promise<Answer>;

const viaHttp =
  (target: string, headers: (key: string, method: string, path: string) => RawHeaders, method = "GET"): Entry =>
  async (key, m, path) => {
    const response = await cubeRequest(server.url, headers(key, m, path), { method, target });
    const message = response.status === 200 ? "" : (JSON.parse(response.body) as { message: string }).message;
    return { allowed: response.status === 200, status: response.status, message };
  };

const ENTRIES: Record<string, Entry> = {
  "Cube callback": viaHttp("/verify", (key, method, path) => [["Authorization", `Bearer ${key}`], ["X-Request-Path", path], ["X-Request-Method", method]], "POST"),
  "nginx auth_request": viaHttp("/auth/nginx", (key, method, path) => [["X-Api-Key", key], ["X-Original-URI", path], ["X-Original-Method", method]]),
  "Traefik forwardAuth": viaHttp("/auth/traefik", (key, method, path) => [["Authorization", `Bearer ${key}`], ["X-Forwarded-Uri", path], ["X-Forwarded-Method", method]]),
  "Authorize (Connect)": async (credential, method, path) => {
    const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const response = await client.authorize({ credential, method, path });
    expect(response.reason).toBe(response.allowed ? Reason.ALLOWED : Reason.NOT_FOUND);
    return { allowed: response.allowed, status: 0, message: response.message };
  },
  "Authorize (grpc-js)": async (credential, method, path) => {
    const response = await unary<{ allowed: boolean; reason: string; message: string }>(grpcAuthorize, "authorize", { credential, method, path });
    expect(response.reason).toBe(response.allowed ? "REASON_ALLOWED" : "REASON_NOT_FOUND");
    return { allowed: response.allowed, status: 0, message: response.message };
  },
  AuthorizeStream: async (credential, method, path) => {
    const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    async function* one() {
      yield { id: 1n, request: { credential, method, path } };
    }
    for await (const answer of client.authorizeStream(one())) {
      return { allowed: answer.response!.allowed, status: 0, message: answer.response!.message };
    }
    throw new Error("no answer on the stream");
  },
  "Envoy ext_authz": async (key, method, path) => {
    const response = await unary<{ status: { code: number }; denied_response?: { status: { code: string }; body: string } }>(envoy, "check", {
      attributes: {
        source: { address: { socket_address: { address: "192.0.2.10", port_value: 51234 } } },
        request: { http: { method, path, host: "api.example.com", headers: { ":method": method, ":path": path, authorization: `Bearer ${key}` } } },
      },
    });
    if (response.status.code === 0) return { allowed: true, status: 200, message: "" };
    expect(response.status.code).toBe(5); // google.rpc.Code NOT_FOUND
    expect(response.denied_response!.status.code).toBe("NotFound");
    const body = JSON.parse(response.denied_response!.body) as { code: number; message: string };
    return { allowed: false, status: body.code, message: body.message };
  },
};

/** The status each entry answers a not-found with: 404, but nginx and Traefik only pass 401/403 on. */
const NOT_FOUND_STATUS: Record<string, number> = { "Cube callback": 404, "nginx auth_request": 403, "Traefik forwardAuth": 403, "Envoy ext_authz": 404 };

describe.each(Object.keys(ENTRIES))("%s", (name) => {
  const ask = ENTRIES[name]!;

  it.each(["", "/cubeapi/v1"])("acme's writer uses its own sandbox (prefix %j)", async (prefix) => {
    expect(await ask(keys.acme.key, "DELETE", `${prefix}/sandboxes/sbx-acme`)).toMatchObject({ allowed: true });
    expect(await ask(keys.acme.key, "GET", `${prefix}/sandboxes/sbx-acme/logs`)).toMatchObject({ allowed: true });
  });

  it.each(["", "/cubeapi/v1"])("globex's sandbox and a missing one get the same answer (prefix %j)", async (prefix) => {
    const others = await ask(keys.acme.key, "DELETE", `${prefix}/sandboxes/sbx-globex`);
    const missing = await ask(keys.acme.key, "DELETE", `${prefix}/sandboxes/sbx-missing`);
    const status = NOT_FOUND_STATUS[name] ?? 0;
    expect(others).toEqual({ allowed: false, status, message: "sandboxes/sbx-globex not found" });
    expect(missing).toEqual({ allowed: false, status, message: "sandboxes/sbx-missing not found" });
    expect(await ask(keys.globex.key, "POST", `${prefix}/sandboxes/sbx-acme/timeout`)).toEqual({ allowed: false, status, message: "sandboxes/sbx-acme not found" });
  });

  it("a platform key (org *) reaches every sandbox, owned or not", async () => {
    for (const id of ["sbx-acme", "sbx-globex", "sbx-missing"]) {
      expect(await ask(keys.platform.key, "GET", `/sandboxes/${id}`), id).toMatchObject({ allowed: true });
    }
  });
});

describe("the ledger as the server keeps it", () => {
  it("a release through the ResourceService takes effect on the next decision", async () => {
    const acme = createKeygateClient({ baseUrl: server.url, apiKey: keys.acmeAdmin.key });
    try {
      await acme.resources.claim({ kind: "sandboxes", id: "sbx-short" });
      expect(await ENTRIES["Cube callback"]!(keys.acme.key, "GET", "/sandboxes/sbx-short")).toMatchObject({ allowed: true });
      await acme.resources.release({ kind: "sandboxes", id: "sbx-short" });
      expect(await ENTRIES["Cube callback"]!(keys.acme.key, "GET", "/sandboxes/sbx-short")).toMatchObject({ allowed: false, status: 404 });
    } finally {
      acme.close();
    }
  });
});
