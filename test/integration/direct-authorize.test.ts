import { readFile } from "node:fs/promises";
import http from "node:http";
import http2 from "node:http2";
import { BlockList } from "node:net";
import { gzipSync } from "node:zlib";
import { create, toBinary, toJsonString, type MessageInitShape } from "@bufbuild/protobuf";
import { PGlite } from "@electric-sql/pglite";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AuthorizeRequestSchema } from "../../gen/keygate/v1/authorize_pb.js";
import { DEFAULT_LISTENER_LIMITS, readRuntimeConfig, type RuntimeConfig } from "../../src/config/config.js";
import type { StoreTarget } from "../../src/core/db/connect.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { createAuthorizeCall } from "../../src/entries/rpc/authorize-call.js";
import { AUTHORIZE_PATH, createDirectAuthorize } from "../../src/entries/rpc/direct-authorize.js";
import { createListener, type Handler, type Listener } from "../../src/http/listener.js";
import { requestSource } from "../../src/http/client-ip.js";
import { createRequestHandler } from "../../src/server/serve.js";
import { createPostgresDatabase, TEST_DATABASE_URL } from "../support/database.js";
import { HOUR, LOCAL, POLICY_DIR, unwrap } from "./test-core.js";

/**
 * The direct unary Authorize path against the connect-node adapter it
 * stands in for: every request is sent to a server that answers plain
 * unary calls directly and to one that sends everything through the
 * adapter, and the answers must be the same (status, protocol headers,
 * body, gRPC trailers). Requests the direct path does not take (compressed,
 * malformed timeouts, GET, gRPC-Web) are checked to reach the adapter.
 */

const SERVE = { credentialPriority: ["authorization", "x-api-key"] as const, clientIp: { header: undefined, trusted: new BlockList() }, shimPath: "/verify" };
const silent = createLogger("error", () => {});

let runtime: Runtime;
let drop: (() => Promise<void>) | undefined;
const listeners: Listener[] = [];
const sessions: http2.ClientHttp2Session[] = [];
/** Per server pair: the direct one (which records what it took) and the adapter-only one. */
interface Pair {
  direct: number;
  adapter: number;
  taken: string[];
}
let live: Pair;
let down: Pair;
let allowKey: string;
let readerKey: string;

async function target(): Promise<StoreTarget> {
  if (TEST_DATABASE_URL) {
    const database = await createPostgresDatabase();
    drop = database.drop;
    return { kind: "postgres", url: database.url, defaultUser: "postgres", poolSize: 5 };
  }
  const snapshot = await readFile(inject("pgliteSnapshot"));
  return { kind: "pglite-instance", pglite: await PGlite.create({ loadDataDir: new Blob([snapshot]) }), location: "memory (test)" };
}

async function serve(handler: Handler): Promise<number> {
  const listener = createListener(handler, DEFAULT_LISTENER_LIMITS);
  listeners.push(listener);
  return (await listener.listen(0, "127.0.0.1")).port;
}

async function pair(core: Runtime): Promise<Pair> {
  const taken: string[] = [];
  const adapterOnly = createRequestHandler({ ...SERVE, credentialPriority: [...SERVE.credentialPriority], directAuthorize: false }, core, silent);
  const direct = createDirectAuthorize({ call: createAuthorizeCall(core.authorize, false), sourceOf: (req) => requestSource(SERVE.clientIp, req), readMaxBytes: 64 * 1024 });
  const viaDirect: Handler = (req, res) => {
    if (direct(req, res)) taken.push(String(req.headers["x-case"]));
    else adapterOnly(req, res);
  };
  return { direct: await serve(viaDirect), adapter: await serve(adapterOnly), taken };
}

beforeAll(async () => {
  const read = readRuntimeConfig({ "policy-dir": POLICY_DIR }, {}, process.cwd());
  if (!read.ok) throw new Error(read.errors.join("; "));
  const config: RuntimeConfig = { ...read.config, usageFlushMs: HOUR };
  runtime = await openRuntime(config, { storeTarget: await target() });
  allowKey = unwrap(await runtime.keys.create(LOCAL, { org: "acme", roles: ["admin"], name: "direct-admin" })).plaintext;
  readerKey = unwrap(await runtime.keys.create(LOCAL, { org: "acme", roles: ["reader"], name: "direct-reader" })).plaintext;
  live = await pair(runtime);
  // The same stack over a core that cannot decide (the database is down).
  down = await pair({ ...runtime, authorize: async () => ({ allowed: false, reason: "unavailable", message: "authorization unavailable, request denied", matchedRule: "" }) });
});

afterAll(async () => {
  for (const session of sessions) session.close();
  await Promise.all(listeners.map((listener) => listener.close(1_000)));
  await runtime?.close();
  await drop?.();
});

interface Answer {
  status: number;
  contentType: string | undefined;
  body: unknown;
  trailers?: Record<string, string | undefined>;
}

function decodeBody(contentType: string | undefined, bytes: Buffer): unknown {
  if (contentType?.includes("json") && !contentType.includes("grpc")) {
    const text = bytes.toString("utf8");
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }
  return bytes.toString("hex");
}

function http1(port: number, name: string, headers: Record<string, string>, body: Uint8Array, method = "POST", path = AUTHORIZE_PATH): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, headers: { ...headers, "x-case": name, "content-length": String(body.byteLength) }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode!, contentType: res.headers["content-type"], body: decodeBody(res.headers["content-type"], Buffer.concat(chunks)) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(Buffer.from(body));
  });
}

const h2Sessions = new Map<number, http2.ClientHttp2Session>();
function session(port: number): http2.ClientHttp2Session {
  let s = h2Sessions.get(port);
  if (!s || s.closed || s.destroyed) {
    s = http2.connect(`http://127.0.0.1:${port}`);
    sessions.push(s);
    h2Sessions.set(port, s);
  }
  return s;
}

function h2(port: number, name: string, headers: Record<string, string>, body: Uint8Array, path = AUTHORIZE_PATH): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const stream = session(port).request({ ":method": "POST", ":path": path, te: "trailers", "x-case": name, ...headers });
    const chunks: Buffer[] = [];
    let status = 0;
    let contentType: string | undefined;
    let trailers: Record<string, string | undefined> | undefined;
    stream.on("response", (h) => {
      status = Number(h[":status"]);
      contentType = h["content-type"] as string | undefined;
      // A trailers-only answer carries the status in the headers.
      if (h["grpc-status"] !== undefined) trailers = { "grpc-status": h["grpc-status"] as string, "grpc-message": h["grpc-message"] as string | undefined };
    });
    stream.on("trailers", (t) => (trailers = { "grpc-status": t["grpc-status"] as string, "grpc-message": t["grpc-message"] as string | undefined }));
    stream.on("data", (chunk: Buffer) => chunks.push(chunk));
    stream.on("end", () => resolve({ status, contentType, body: decodeBody(contentType, Buffer.concat(chunks)), ...(trailers && { trailers }) }));
    stream.on("error", reject);
    stream.end(Buffer.from(body));
  });
}

function envelope(message: Uint8Array, flags = 0, declared = message.byteLength): Uint8Array {
  const out = Buffer.alloc(5 + message.byteLength);
  out.writeUInt8(flags, 0);
  out.writeUInt32BE(declared, 1);
  out.set(message, 5);
  return out;
}

const binary = (fields: MessageInitShape<typeof AuthorizeRequestSchema>) => toBinary(AuthorizeRequestSchema, create(AuthorizeRequestSchema, fields));
const json = (fields: MessageInitShape<typeof AuthorizeRequestSchema>) => Buffer.from(toJsonString(AuthorizeRequestSchema, create(AuthorizeRequestSchema, fields)));
const PROTO = { "content-type": "application/proto" };
const JSON_TYPE = { "content-type": "application/json" };
const GRPC = { "content-type": "application/grpc" };

interface Case {
  name: string;
  headers: Record<string, string>;
  body: () => Uint8Array;
  /** Whether the direct path should answer it (else the adapter does, on both servers). */
  direct: boolean;
}

function connectCases(): Case[] {
  const allow = () => binary({ credential: allowKey, path: "/sandboxes", method: "GET" });
  return [
    { name: "proto allow", headers: PROTO, body: allow, direct: true },
    { name: "proto forbidden", headers: PROTO, body: () => binary({ credential: readerKey, path: "/sandboxes", method: "DELETE" }), direct: true },
    { name: "proto explain ignored", headers: PROTO, body: () => binary({ credential: readerKey, path: "/sandboxes", method: "DELETE", explain: true }), direct: true },
    { name: "proto invalid key", headers: PROTO, body: () => binary({ credential: "sk-sb-nope", path: "/sandboxes", method: "GET" }), direct: true },
    { name: "proto bad path", headers: PROTO, body: () => binary({ credential: allowKey, path: "/sandboxes/../keys", method: "GET" }), direct: true },
    { name: "proto empty body", headers: PROTO, body: () => new Uint8Array(), direct: true },
    { name: "proto unknown field", headers: PROTO, body: () => Buffer.concat([allow(), Buffer.from([0xf8, 0x06, 0x01])]), direct: true },
    { name: "proto garbage", headers: PROTO, body: () => Buffer.from([0x0a, 0xff, 0xff, 0xff]), direct: true },
    { name: "proto too large", headers: PROTO, body: () => binary({ credential: "x".repeat(70_000) }), direct: true },
    { name: "proto valid timeout", headers: { ...PROTO, "connect-timeout-ms": "5000" }, body: allow, direct: true },
    { name: "proto protocol version", headers: { ...PROTO, "connect-protocol-version": "1" }, body: allow, direct: true },
    { name: "json allow", headers: JSON_TYPE, body: () => json({ credential: allowKey, path: "/sandboxes", method: "POST" }), direct: true },
    { name: "json charset", headers: { "content-type": "application/json; charset=utf-8" }, body: () => json({ credential: allowKey, path: "/sandboxes", method: "POST" }), direct: true },
    { name: "json unknown field", headers: JSON_TYPE, body: () => Buffer.from(`{"credential":"${allowKey}","path":"/sandboxes","surprise":1}`), direct: true },
    { name: "json wrong type", headers: JSON_TYPE, body: () => Buffer.from(`{"credential":5}`), direct: true },
    { name: "json broken", headers: JSON_TYPE, body: () => Buffer.from(`{"credential":`), direct: true },
    { name: "json not utf-8", headers: JSON_TYPE, body: () => Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), direct: true },
    { name: "gzip body", headers: { ...PROTO, "content-encoding": "gzip" }, body: () => gzipSync(allow()), direct: false },
    { name: "unknown encoding", headers: { ...PROTO, "content-encoding": "br2" }, body: allow, direct: false },
    { name: "bad timeout", headers: { ...PROTO, "connect-timeout-ms": "soon" }, body: allow, direct: false },
    { name: "stream content type", headers: { "content-type": "application/connect+proto" }, body: allow, direct: false },
    { name: "text content type", headers: { "content-type": "text/plain" }, body: allow, direct: false },
    { name: "grpc-web", headers: { "content-type": "application/grpc-web+proto" }, body: () => envelope(allow()), direct: false },
  ];
}

function grpcCases(): Case[] {
  const allow = () => binary({ credential: allowKey, path: "/sandboxes", method: "GET" });
  return [
    { name: "grpc allow", headers: GRPC, body: () => envelope(allow()), direct: true },
    { name: "grpc+proto forbidden", headers: { "content-type": "application/grpc+proto" }, body: () => envelope(binary({ credential: readerKey, path: "/volumes", method: "POST" })), direct: true },
    { name: "grpc invalid key", headers: GRPC, body: () => envelope(binary({ credential: "garbage", path: "/sandboxes" })), direct: true },
    { name: "grpc+json allow", headers: { "content-type": "application/grpc+json" }, body: () => envelope(json({ credential: allowKey, path: "/sandboxes", method: "GET" })), direct: true },
    { name: "grpc no message", headers: GRPC, body: () => new Uint8Array(), direct: true },
    { name: "grpc short header", headers: GRPC, body: () => Buffer.from([0, 0, 0]), direct: true },
    { name: "grpc incomplete", headers: GRPC, body: () => envelope(allow(), 0, allow().byteLength + 10), direct: true },
    { name: "grpc compressed flag", headers: GRPC, body: () => envelope(allow(), 1), direct: true },
    { name: "grpc two messages", headers: GRPC, body: () => Buffer.concat([envelope(allow()), envelope(allow())]), direct: true },
    { name: "grpc too large", headers: GRPC, body: () => envelope(binary({ credential: "x".repeat(70_000) })), direct: true },
    { name: "grpc garbage message", headers: GRPC, body: () => envelope(Buffer.from([0x0a, 0xff])), direct: true },
    { name: "grpc valid timeout", headers: { ...GRPC, "grpc-timeout": "2S" }, body: () => envelope(allow()), direct: true },
    { name: "grpc bad timeout", headers: { ...GRPC, "grpc-timeout": "forever" }, body: () => envelope(allow()), direct: false },
    { name: "grpc gzip", headers: { ...GRPC, "grpc-encoding": "gzip" }, body: () => envelope(gzipSync(allow()), 1), direct: false },
    // Connect unary over h2c takes the same direct path as over HTTP/1.1.
    { name: "connect over h2", headers: PROTO, body: allow, direct: true },
    { name: "connect json over h2", headers: JSON_TYPE, body: () => json({ credential: readerKey, path: "/templates" }), direct: true },
  ];
}

function withTimeout<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in 5 s: ${what}`)), 5_000)));
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function compare(servers: Pair, send: (port: number, name: string, c: Case) => Promise<Answer>, cases: Case[]): Promise<void> {
  for (const c of cases) {
    const name = `${c.name} #${Math.random().toString(36).slice(2, 8)}`;
    const viaAdapter = await withTimeout(send(servers.adapter, name, c), `${c.name} (adapter)`);
    const viaDirect = await withTimeout(send(servers.direct, name, c), `${c.name} (direct)`);
    expect({ case: c.name, ...viaDirect }).toEqual({ case: c.name, ...viaAdapter });
    expect({ case: c.name, direct: servers.taken.includes(name) }).toEqual({ case: c.name, direct: c.direct });
  }
}

describe("direct unary Authorize answers exactly as the connect-node adapter", () => {
  it("Connect over HTTP/1.1: decisions, explain, malformed and oversized bodies, JSON and binary", async () => {
    await compare(live, (port, name, c) => http1(port, name, c.headers, c.body()), connectCases());
  });

  it("gRPC and Connect over h2c: decisions, envelopes, trailers, timeouts", async () => {
    await compare(live, (port, name, c) => h2(port, name, c.headers, c.body()), grpcCases());
  });

  it("an outage is UNAVAILABLE on every protocol, never an allow", async () => {
    const connect = connectCases().filter((c) => c.direct);
    await compare(down, (port, name, c) => http1(port, name, c.headers, c.body()), connect);
    await compare(down, (port, name, c) => h2(port, name, c.headers, c.body()), grpcCases());
    const answer = await http1(down.direct, "outage", PROTO, binary({ credential: allowKey, path: "/sandboxes", method: "GET" }));
    expect(answer).toEqual({ status: 503, contentType: "application/json", body: { code: "unavailable", message: "authorization unavailable, request denied" } });
    const grpc = await h2(down.direct, "outage", GRPC, envelope(binary({ credential: allowKey, path: "/sandboxes", method: "GET" })));
    expect(grpc.trailers).toEqual({ "grpc-status": "14", "grpc-message": encodeURIComponent("authorization unavailable, request denied") });
  });

  it("other methods and paths are the adapter's", async () => {
    for (const [method, path] of [
      ["GET", AUTHORIZE_PATH],
      ["PUT", AUTHORIZE_PATH],
      ["POST", `${AUTHORIZE_PATH}?x=1`],
      ["POST", `${AUTHORIZE_PATH}/`],
      ["POST", "/keygate.v1.KeyService/ManageKey"],
    ] as const) {
      const name = `${method} ${path}`;
      const body = binary({ credential: allowKey, path: "/sandboxes" });
      const viaAdapter = await http1(live.adapter, name, PROTO, body, method, path);
      expect(await http1(live.direct, name, PROTO, body, method, path)).toEqual(viaAdapter);
      expect(live.taken).not.toContain(name);
    }
  });
});
