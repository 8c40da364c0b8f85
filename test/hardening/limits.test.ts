import http2 from "node:http2";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeRequestSchema, AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { AuditService } from "../../gen/keygate/v1/audit_pb.js";
import { MANAGEMENT_READ_MAX_BYTES } from "../../src/server/routes.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { grpcClient, streamReader, unary, type GrpcClient } from "../support/grpc-js.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { startLeakWatch, type LeakWatch } from "../support/leak-watch.js";

/**
 * The public port's limits, each with the error a client sees, over every
 * path where it applies, and a normal request served right after:
 *
 * - header size (KEYGATE_MAX_HEADER_BYTES, 16 KiB): HTTP/1.1 431 with a JSON
 *   body; over h2 RESOURCE_EXHAUSTED for gRPC and Connect, 431 for the shim;
 * - path length (4096 characters): a deny that says so (shim 403, Authorize
 *   BAD_REQUEST); an enormous request target is a header-size 431;
 * - request time (KEYGATE_HEADERS_TIMEOUT, KEYGATE_REQUEST_TIMEOUT): a
 *   slow-loris client gets 408 and its connection closed; an RPC deadline
 *   shorter than a stream gives DEADLINE_EXCEEDED;
 * - message size (64 KiB): RESOURCE_EXHAUSTED over Connect, gRPC and
 *   gRPC-Web, on the direct Authorize path and through the adapter; a plain
 *   endpoint refuses a declared body over 64 KiB with 413.
 */

const HEADERS_TIMEOUT_MS = 1_000;
const REQUEST_TIMEOUT_MS = 2_000;
const MAX_HEADER_BYTES = 16 * 1024;
const READ_MAX_BYTES = 64 * 1024;

let watch: LeakWatch;
let data: TestDataDir;
/** The adapter server's own (PGlite allows one server per data dir). */
let adapterData: TestDataDir;
/** Direct Authorize path on (the default), with short request timeouts. */
let direct: ServerProcess;
/** Every call through the connect-node adapter, and a larger header limit. */
let adapter: ServerProcess;
let key: CreatedKeyJson;
let adapterKey: CreatedKeyJson;
const figures: Record<string, unknown> = {};

beforeAll(async () => {
  watch = await startLeakWatch();
  [data, adapterData] = await Promise.all([createTestDataDir(), createTestDataDir()]);
  const options = (where: TestDataDir, env: Record<string, string> = {}) => ({ cwd: where.dir, env: { ...where.env, ...watch.env, ...env } });
  const timeouts = { KEYGATE_HEADERS_TIMEOUT: `${HEADERS_TIMEOUT_MS}ms`, KEYGATE_REQUEST_TIMEOUT: `${REQUEST_TIMEOUT_MS}ms` };
  [direct, adapter] = await Promise.all([
    startServerProcess(["--auth-fail-limit", "off"], options(data, timeouts)),
    startServerProcess(["--auth-fail-limit", "off"], options(adapterData, { ...timeouts, KEYGATE_DIRECT_AUTHORIZE: "false", KEYGATE_MAX_HEADER_BYTES: String(2 * MAX_HEADER_BYTES) })),
  ]);
  [key, adapterKey] = await Promise.all([
    createKey(["--org", "acme", "--role", "reader", "--name", "limits"], options(data)),
    createKey(["--org", "acme", "--role", "reader", "--name", "limits-adapter"], options(adapterData)),
  ]);
  watch.key(key.key);
  watch.key(adapterKey.key);
});

afterAll(async () => {
  const codes = await Promise.all([direct?.stop(), adapter?.stop()]);
  if (direct) watch.text("direct server output", direct.output());
  if (adapter) watch.text("adapter server output", adapter.output());
  await data?.dispose();
  await adapterData?.dispose();
  await watch?.close();
  console.log("[hardening] limits:", JSON.stringify(figures));
  expect(codes).toEqual([0, 0]);
});

const servers = () => [
  ["direct", direct],
  ["adapter", adapter],
] as const;

/** A normal Cube callback and a normal Authorize (Connect, h2): the server still serves. */
async function expectServing(server: ServerProcess): Promise<void> {
  const key = keyFor(server);
  const shim = await cubeRequest(server.url, bearer(key.key, "/sandboxes/abc", "GET"));
  expect({ status: shim.status, user: shim.headers["x-auth-user"] }).toEqual({ status: 200, user: key.id });
  const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
  expect((await client.authorize({ credential: key.key, path: "/sandboxes/abc", method: "GET" })).allowed).toBe(true);
}

const keyFor = (server: ServerProcess) => (server === adapter ? adapterKey : key);

interface RawAnswer {
  status: number;
  headers: Record<string, string>;
  body: string;
  /** Milliseconds from the first byte written to the connection's end. */
  ms: number;
}

/**
 * Writes `parts` on a fresh connection (`gapMs` apart, the connection left
 * open after the last) and reads until the server ends it.
 */
function raw(server: ServerProcess, parts: (string | Buffer)[], gapMs = 0): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(server.port, "127.0.0.1");
    const chunks: Buffer[] = [];
    let started = 0;
    let stopped = false;
    socket.setTimeout(15_000, () => socket.destroy(new Error("no end from the server in 15 s")));
    socket.on("connect", async () => {
      started = performance.now();
      for (const [i, part] of parts.entries()) {
        if (stopped) return;
        if (i > 0 && gapMs > 0) await sleep(gapMs);
        if (!stopped) socket.write(part);
      }
    });
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (error) => {
      stopped = true;
      reject(error);
    });
    socket.on("close", () => {
      stopped = true;
      const text = Buffer.concat(chunks).toString("utf8");
      const split = text.indexOf("\r\n\r\n");
      const [statusLine, ...lines] = (split === -1 ? text : text.slice(0, split)).split("\r\n");
      const headers: Record<string, string> = {};
      for (const line of lines) headers[line.slice(0, line.indexOf(":")).toLowerCase()] = line.slice(line.indexOf(":") + 1).trim();
      const answer = { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine ?? "")?.[1] ?? 0), headers, body: split === -1 ? "" : text.slice(split + 4), ms: Math.round(performance.now() - started) };
      watch.text("raw answer", text);
      resolve(answer);
    });
  });
}

const shimHead = (extra: string[] = [], target = "/verify", server = direct) =>
  [`POST ${target} HTTP/1.1`, "Host: 127.0.0.1", `Authorization: Bearer ${keyFor(server).key}`, "X-Request-Path: /sandboxes/abc", "X-Request-Method: GET", ...extra, "", ""].join("\r\n");

function connectError(error: unknown): ConnectError {
  expect(error).toBeInstanceOf(ConnectError);
  watch.text("connect error", (error as ConnectError).message);
  return error as ConnectError;
}

function grpcError(error: unknown): grpc.ServiceError {
  expect((error as grpc.ServiceError).code).toBeTypeOf("number");
  watch.text("grpc error", (error as grpc.ServiceError).details);
  return error as grpc.ServiceError;
}

const transports = (server: ServerProcess): [string, Transport][] => [
  ["Connect (HTTP/1.1)", createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
  ["Connect (h2)", createConnectTransport({ baseUrl: server.url, httpVersion: "2" })],
  ["gRPC (connect-node)", createGrpcTransport({ baseUrl: server.url })],
  ["gRPC-Web", createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
];

describe("header size", () => {
  const big = (bytes: number) => "a".repeat(bytes);

  it("HTTP/1.1: headers over 16 KiB get 431 with a JSON message, the connection closed", async () => {
    const answer = await raw(direct, [shimHead([`X-Filler: ${big(MAX_HEADER_BYTES + 1)}`])]);
    expect(answer.status).toBe(431);
    expect(answer.headers["connection"]).toBe("close");
    expect(JSON.parse(answer.body)).toEqual({ code: 431, message: `request line and headers larger than ${MAX_HEADER_BYTES} bytes` });
    figures.headerOverflow = { status: answer.status, body: JSON.parse(answer.body) };
    await expectServing(direct);
  });

  it("a huge Authorization or X-API-Key on the shim: 431 over the limit, an invalid key under it", async () => {
    for (const header of ["Authorization: Bearer ", "X-API-Key: "]) {
      const over = await raw(direct, [[`POST /verify HTTP/1.1`, "Host: 127.0.0.1", `${header}${big(MAX_HEADER_BYTES)}`, "X-Request-Path: /sandboxes", "", ""].join("\r\n")]);
      expect(over.status).toBe(431);
      const under = await cubeRequest(direct.url, [[header.slice(0, header.indexOf(":")), `${header.endsWith("Bearer ") ? "Bearer " : ""}${big(8 * 1024)}`], ["X-Request-Path", "/sandboxes"]]);
      expect({ status: under.status, body: JSON.parse(under.body) }).toEqual({ status: 401, body: { code: 401, message: "invalid API key" } });
    }
    await expectServing(direct);
  });

  it("KEYGATE_MAX_HEADER_BYTES raises the limit (32 KiB here): 20 KiB of headers are served", async () => {
    const answer = await raw(adapter, [shimHead([`X-Filler: ${big(20 * 1024)}`, "Connection: close"], "/verify", adapter)]);
    expect(answer.status).toBe(200);
    const over = await raw(adapter, [shimHead([`X-Filler: ${big(2 * MAX_HEADER_BYTES)}`], "/verify", adapter)]);
    expect(JSON.parse(over.body)).toEqual({ code: 431, message: `request line and headers larger than ${2 * MAX_HEADER_BYTES} bytes` });
  });

  it("h2: a header list over the limit: gRPC and Connect RESOURCE_EXHAUSTED, the shim 431 saying so", async () => {
    const message = `request headers larger than ${MAX_HEADER_BYTES} bytes`;
    const client = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", direct.port);
    const grpcWithHeader = (bytes: number) => {
      const metadata = new grpc.Metadata();
      metadata.set("x-filler", big(bytes));
      return new Promise<unknown>((resolve) =>
        client.Authorize!({ credential: key.key, path: "/sandboxes/abc", method: "GET" }, metadata, { deadline: Date.now() + 5_000 }, (e: unknown) => resolve(e)),
      );
    };
    // Once the client has acknowledged the server's SETTINGS (max header list size 16 KiB), nghttp2
    // resets such a stream with ENHANCE_YOUR_CALM, which grpc-js and connect-node report as
    // RESOURCE_EXHAUSTED; a request sent before that reaches keygate's own check, which says so.
    const status = grpcError(await grpcWithHeader(20 * 1024));
    expect(grpc.status[status.code]).toBe("RESOURCE_EXHAUSTED");
    expect([message, "Bandwidth exhausted or memory limit exceeded"]).toContain(status.details);
    // Past Node's own HTTP/2 cap (64 KiB) the stream is reset before keygate sees it: still an error, never a hang.
    const nodeCap = grpcError(await grpcWithHeader(70 * 1024));
    client.close();

    const connect = createClient(AuthorizeService, createConnectTransport({ baseUrl: direct.url, httpVersion: "2" }));
    const connectFailure = connectError(
      await connect.authorize({ credential: key.key, path: "/sandboxes/abc", method: "GET" }, { headers: { "x-filler": big(20 * 1024) }, timeoutMs: 5_000 }).catch((e: unknown) => e),
    );
    expect(connectFailure.code).toBe(Code.ResourceExhausted);

    // Written in the client's first flight, before it can have acknowledged the server's SETTINGS.
    const session = http2.connect(direct.url);
    const stream = session.request({ ":method": "POST", ":path": "/verify", authorization: `Bearer ${key.key}`, "x-request-path": "/sandboxes/abc", "x-filler": big(20 * 1024) });
    stream.end();
    const shim = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      let status = 0;
      let body = "";
      stream.on("response", (headers) => (status = Number(headers[":status"])));
      stream.on("data", (chunk: Buffer) => (body += chunk.toString()));
      stream.on("end", () => resolve({ status, body }));
      stream.on("error", reject);
    });
    session.close();
    expect({ status: shim.status, body: JSON.parse(shim.body) }).toEqual({ status: 431, body: { code: 431, message } });

    figures.h2HeaderOverflow = {
      "grpc-js 20 KiB": `${grpc.status[status.code]}: ${status.details}`,
      "grpc-js 70 KiB": `${grpc.status[nodeCap.code]}: ${nodeCap.details}`,
      "connect h2 20 KiB": `${Code[connectFailure.code]}: ${connectFailure.rawMessage}`,
      "shim h2 20 KiB": `${shim.status} ${shim.body}`,
    };
    await expectServing(direct);
  });
});

describe("path length", () => {
  const long = "/sandboxes/" + "a".repeat(5000);

  it("a path over 4096 characters is denied, saying so (shim 403, Authorize BAD_REQUEST over Connect and gRPC)", async () => {
    const shim = await cubeRequest(direct.url, bearer(key.key, long, "GET"));
    expect({ status: shim.status, body: JSON.parse(shim.body) }).toEqual({ status: 403, body: { code: 403, message: "path longer than 4096 characters" } });
    for (const [name, server] of servers()) {
      const key = keyFor(server);
      const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
      const response = await client.authorize({ credential: key.key, path: long, method: "GET" });
      expect({ name, allowed: response.allowed, reason: response.reason, message: response.message }).toEqual({ name, allowed: false, reason: Reason.BAD_REQUEST, message: "path longer than 4096 characters" });
      const grpcAuthorize = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
      const viaGrpc = await unary<{ allowed: boolean; reason: string; message: string }>(grpcAuthorize, "Authorize", { credential: key.key, path: long, method: "GET" });
      grpcAuthorize.close();
      expect({ allowed: viaGrpc.allowed, reason: viaGrpc.reason, message: viaGrpc.message }).toEqual({ allowed: false, reason: "REASON_BAD_REQUEST", message: "path longer than 4096 characters" });
      await expectServing(server);
    }
  });

  it("an enormous request target is refused as header size (431), the query string included", async () => {
    const answer = await raw(direct, [shimHead([], `/verify?${"q".repeat(MAX_HEADER_BYTES + 10)}`)]);
    expect({ status: answer.status, body: JSON.parse(answer.body) }).toEqual({ status: 431, body: { code: 431, message: `request line and headers larger than ${MAX_HEADER_BYTES} bytes` } });
    await expectServing(direct);
  });
});

describe("request time", () => {
  const timeoutMessage = `request not received in time (headers within ${HEADERS_TIMEOUT_MS} ms, the whole request within ${REQUEST_TIMEOUT_MS} ms)`;

  it("slow-loris headers (one line every 300 ms, never finished): 408 after KEYGATE_HEADERS_TIMEOUT, connection closed", async () => {
    const lines = ["POST /verify HTTP/1.1\r\n", ...Array.from({ length: 30 }, (_, i) => `X-Slow-${i}: x\r\n`)];
    const answer = await raw(direct, lines, 300);
    expect({ status: answer.status, body: JSON.parse(answer.body) }).toEqual({ status: 408, body: { code: 408, message: timeoutMessage } });
    expect(answer.ms).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - 50);
    expect(answer.ms).toBeLessThan(HEADERS_TIMEOUT_MS + 1_500);
    figures.slowHeadersMs = answer.ms;
    await expectServing(direct);
  });

  it("a body never finished: 408 after KEYGATE_REQUEST_TIMEOUT", async () => {
    const body = JSON.stringify({ credential: key.key, path: "/sandboxes/abc", method: "GET" });
    const head = `POST /keygate.v1.AuthorizeService/Authorize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: ${body.length + 100}\r\n\r\n`;
    const answer = await raw(direct, [head + body]);
    expect({ status: answer.status, body: JSON.parse(answer.body) }).toEqual({ status: 408, body: { code: 408, message: timeoutMessage } });
    expect(answer.ms).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - 50);
    expect(answer.ms).toBeLessThan(REQUEST_TIMEOUT_MS + 1_500);
    figures.unfinishedBodyMs = answer.ms;
    await expectServing(direct);
  });

  it("a connection that sends nothing is closed after the headers timeout", async () => {
    const answer = await raw(direct, [""]);
    expect(answer.status).toBe(0);
    expect(answer.ms).toBeLessThan(HEADERS_TIMEOUT_MS + 1_000);
    figures.silentConnectionMs = answer.ms;
  });

  it("an RPC deadline shorter than the call: DEADLINE_EXCEEDED (AuthorizeStream over gRPC and Connect)", async () => {
    const client = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", direct.port);
    const call = (client.AuthorizeStream as (options: object) => grpc.ClientDuplexStream<object, { id: string }>)({ deadline: Date.now() + 500 });
    const reader = streamReader(call);
    call.write({ id: "1", request: { credential: key.key, path: "/sandboxes/abc", method: "GET" } });
    expect((await reader.message()).id).toBe("1");
    const end = await reader.next(5_000);
    expect("error" in end && end.error.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    client.close();

    const connect = createClient(AuthorizeService, createConnectTransport({ baseUrl: direct.url, httpVersion: "2" }));
    async function* slow() {
      yield { id: 1n, request: { credential: key.key, path: "/sandboxes/abc", method: "GET" } };
      await sleep(2_000);
    }
    const error = await (async () => {
      for await (const _ of connect.authorizeStream(slow(), { timeoutMs: 500 }));
    })().catch((e: unknown) => e);
    expect(connectError(error).code).toBe(Code.DeadlineExceeded);
    await expectServing(direct);
  });

  it.each(["direct", "adapter"] as const)("gRPC unary whose body arrives after its grpc-timeout: a well-formed gRPC answer (%s)", async (which) => {
    // The client's own deadline has fired by then (grpc-js, connect); the server answers what
    // it has: neither the direct path nor connect-node cuts a late unary body short today.
    const server = which === "direct" ? direct : adapter;
    const message = toBinary(AuthorizeRequestSchema, create(AuthorizeRequestSchema, { credential: keyFor(server).key, path: "/sandboxes/abc", method: "GET" }));
    const envelope = Buffer.alloc(5 + message.length);
    envelope.writeUInt32BE(message.length, 1);
    envelope.set(message, 5);
    const session = http2.connect(server.url);
    const started = performance.now();
    const stream = session.request({ ":method": "POST", ":path": "/keygate.v1.AuthorizeService/Authorize", "content-type": "application/grpc", te: "trailers", "grpc-timeout": "300m" });
    const answer = await new Promise<Record<string, unknown>>((resolve) => {
      let headers: Record<string, unknown> = {};
      stream.on("response", (h) => (headers = { ...h }));
      stream.on("trailers", (t) => resolve({ ...headers, ...t }));
      stream.on("close", () => resolve(headers));
      stream.resume();
      setTimeout(() => !stream.destroyed && stream.end(envelope), 1_000).unref();
    });
    watch.text("grpc trailers", JSON.stringify(answer));
    expect(["0", "4"]).toContain(answer["grpc-status"]);
    ((figures.lateUnaryBody ??= {}) as Record<string, unknown>)[which] = { grpcStatus: answer["grpc-status"], ms: Math.round(performance.now() - started) };
    session.close();
    await expectServing(server);
  });
});

describe("message size", () => {
  const huge = "k".repeat(READ_MAX_BYTES + 1);

  it.each(["direct", "adapter"] as const)("Authorize over 64 KiB: RESOURCE_EXHAUSTED over Connect, gRPC and gRPC-Web (%s)", async (which) => {
    const server = which === "direct" ? direct : adapter;
    const seen: Record<string, string> = {};
    for (const [name, transport] of transports(server)) {
      const client = createClient(AuthorizeService, transport);
      const error = connectError(await client.authorize({ credential: huge, path: "/sandboxes/abc", method: "GET" }).catch((e: unknown) => e));
      seen[name] = `${Code[error.code]}: ${error.rawMessage}`;
      expect({ name, code: error.code }).toEqual({ name, code: Code.ResourceExhausted });
      expect(error.rawMessage).toMatch(/^message size (\d+ )?is larger than configured readMaxBytes 65536$/);
    }
    const grpcAuthorize: GrpcClient = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
    const status = grpcError(await unary(grpcAuthorize, "Authorize", { credential: huge, path: "/sandboxes/abc", method: "GET" }).catch((e: unknown) => e));
    grpcAuthorize.close();
    seen["grpc-js"] = `${grpc.status[status.code]}: ${status.details}`;
    expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    figures[`messageSize_${which}`] = seen;
    await expectServing(server);
  });

  // Repeated: each HTTP/1.1 answer comes before the rest of its body was read, and a keep-alive
  // client reuses the connection; the next call must not wait behind the unread bytes (408).
  // Repeated: each HTTP/1.1 answer comes before the rest of its body was read, and a keep-alive
  // client reuses the connection; the next call must not wait behind the unread bytes (408).
  // Management calls are capped lower (16 KiB): the flood sent 30 KB fields.
  const managementHuge = "k".repeat(30_000);
  it.each([1, 2, 3])("ManageKey and AuditService over 16 KiB (a 30 KB field): RESOURCE_EXHAUSTED at once, before any authentication (round %i)", async () => {
    const tooLarge = expect.stringMatching(new RegExp(`^message size (\\d+ )?is larger than configured readMaxBytes ${MANAGEMENT_READ_MAX_BYTES}$`));
    for (const [name, transport] of transports(direct)) {
      const keys = createClient(KeyService, transport);
      const audit = createClient(AuditService, transport);
      for (const [call, send] of [
        ["create", () => keys.manageKey({ action: { case: "create", value: { name: huge } } })],
        ["list", () => keys.manageKey({ action: { case: "list", value: { org: managementHuge, namespace: managementHuge } } })],
        ["audit", () => audit.listAuditEvents({ org: managementHuge, keyId: managementHuge })],
      ] as const) {
        const started = performance.now();
        const error = connectError(await send().catch((e: unknown) => e));
        expect({ name, call, code: error.code, message: error.rawMessage, ms: performance.now() - started < 1_000 }).toEqual({ name, call, code: Code.ResourceExhausted, message: tooLarge, ms: true });
      }
    }
    await expectServing(direct);
  });

  it("a plain endpoint refuses a declared body over 64 KiB with 413 (it reads none); a small body is ignored", async () => {
    const answer = await raw(direct, [shimHead([`Content-Length: ${10 * 1024 * 1024}`]), Buffer.alloc(64 * 1024)]);
    expect({ status: answer.status, body: JSON.parse(answer.body) }).toEqual({ status: 413, body: { code: 413, message: "request body larger than 65536 bytes (this endpoint reads no body)" } });
    expect(answer.headers["connection"]).toBe("close");
    const small = await raw(direct, [shimHead(["Content-Length: 2", "Connection: close"]) + "{}"]);
    expect(small.status).toBe(200);
    await expectServing(direct);
  });
});

describe("bad limit settings are refused at start", () => {
  it.each([
    [{ KEYGATE_MAX_HEADER_BYTES: "100" }, 'KEYGATE_MAX_HEADER_BYTES: "100" is not a whole number from 1024 to 1048576'],
    [{ KEYGATE_REQUEST_TIMEOUT: "soon" }, 'KEYGATE_REQUEST_TIMEOUT: "soon" is not a duration from 100ms to 1h'],
    [{ KEYGATE_HEADERS_TIMEOUT: "10ms" }, 'KEYGATE_HEADERS_TIMEOUT: "10ms" is not a duration from 100ms to 1h'],
    [{ KEYGATE_REQUEST_TIMEOUT: "5s", KEYGATE_HEADERS_TIMEOUT: "10s" }, "KEYGATE_HEADERS_TIMEOUT: 10000 ms is longer than KEYGATE_REQUEST_TIMEOUT (5000 ms)"],
  ])("%j", async (env, message) => {
    const result = await runCli(["serve", "--port", "0"], { cwd: data.dir, env: { ...data.env, ...env }, timeoutMs: 20_000 });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain(message);
  });
});

it("no key in any output, error message or trace", () => {
  watch.text("direct server output (so far)", direct.output());
  watch.text("adapter server output (so far)", adapter.output());
  expect(watch.counts().texts).toBeGreaterThan(10);
  expect(watch.leaks()).toEqual([]);
});
