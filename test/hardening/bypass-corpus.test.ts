import { randomBytes } from "node:crypto";
import { cp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { create, fromBinary, fromJson, toBinary, toJsonString, type JsonValue } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeRequestSchema, AuthorizeResponseSchema, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { CheckRequestSchema, CheckResponseSchema } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { BYPASS_CORPUS, ENTRIES, expectedFor, type BypassRow, type Entry, type Expected, type KeyRole } from "../fixtures/bypass-corpus.js";
import { cubeRequest, type CubeResponse, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { grpcClient, type GrpcClient } from "../support/grpc-js.js";
import { createKey, POLICY_DIR, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { startLeakWatch, type LeakWatch } from "../support/leak-watch.js";

/**
 * The bypass corpus (test/fixtures/bypass-corpus.ts) end to end: every row
 * through every way into a real `keygate serve` — the Cube callback and the
 * nginx/Traefik endpoints over raw sockets (the bytes are exactly the row's),
 * Authorize over Connect (JSON and binary, HTTP/1.1) and gRPC (grpc-js), and
 * Envoy's ext_authz Check (grpc-js). Each row is asked twice per entry: with
 * its key (allowed only where the normalized path and method are), and with
 * a key whose role has no rule at all, whose "not allowed to METHOD PATH"
 * message shows the path and method the policy was asked about.
 */

let watch: LeakWatch;
let data: TestDataDir;
let server: ServerProcess;
let authorizeGrpc: GrpcClient;
let envoyGrpc: GrpcClient;
const keys = {} as Record<KeyRole | "probe", CreatedKeyJson>;

const figures = { rows: BYPASS_CORPUS.length, entries: ENTRIES.length, requests: 0, denied: 0, normalized: 0 };

beforeAll(async () => {
  watch = await startLeakWatch();
  data = await createTestDataDir();
  const policyDir = join(data.dir, "policies");
  await cp(POLICY_DIR, policyDir, { recursive: true });
  // GET without HEAD, to show HEAD is never implied (the default policy gives readers both).
  await writeFile(join(policyDir, "hardening.csv"), "p, getonly, *, *, /sandboxes/:id/logs, ^GET$\n");
  const options = { cwd: data.dir, env: { ...data.env, ...watch.env, KEYGATE_POLICY_DIR: policyDir } };
  // Every request comes from loopback: the failed-auth guard is off so that no row is slowed.
  server = await startServerProcess(["--auth-fail-limit", "off"], options);
  for (const role of ["reader", "getonly", "admin", "probe"] as const) {
    // "probe" is named by no policy line on purpose: a key allowed nothing.
    keys[role] = await createKey(["--org", "acme", "--role", role, "--name", `corpus-${role}`, ...(role === "probe" ? ["--allow-unknown-role"] : [])], options);
    watch.key(keys[role].key);
  }
  authorizeGrpc = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
  envoyGrpc = grpcClient("envoy/service/auth/v3/external_auth.proto", "envoy.service.auth.v3.Authorization", server.port);
});

afterAll(async () => {
  authorizeGrpc?.close();
  envoyGrpc?.close();
  const code = await server?.stop();
  if (server) watch.text("keygate serve output", server.output());
  await data?.dispose();
  await watch?.close();
  console.log("[hardening] bypass-corpus:", JSON.stringify(figures));
  expect(code).toBe(0);
});

// --- the request, as bytes -------------------------------------------------------------------

/** The row's path as the bytes sent: its characters as bytes (`bytes` rows), else UTF-8. */
function pathBytes(row: BypassRow): Buffer {
  return Buffer.from(row.path, row.bytes ? "latin1" : "utf8");
}

/**
 * A placeholder of the same byte length as the raw path, so a message can be
 * serialized with it and the raw bytes (possibly invalid UTF-8, which no
 * serializer writes) swapped in without changing any length prefix.
 */
function placeholderFor(raw: Buffer): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  return [...randomBytes(raw.length)].map((b) => alphabet[b % alphabet.length]).join("");
}

function swapIn(serialized: Uint8Array, placeholder: string, raw: Buffer): Buffer {
  const out = Buffer.from(serialized);
  const needle = Buffer.from(placeholder, "latin1");
  let at = out.indexOf(needle);
  if (at === -1) throw new Error("placeholder not found in the serialized message");
  while (at !== -1) {
    raw.copy(out, at);
    at = out.indexOf(needle, at + raw.length);
  }
  return out;
}

/** What one entry answered, reduced to what the table says. */
type Outcome =
  | { kind: "allow"; user: string }
  | { kind: "deny"; reason: string; message: string }
  | { kind: "parser"; status: number }
  | { kind: "rpc-error"; code: string; message: string };

// --- the entries ---------------------------------------------------------------------------------

function credentialHeaders(key: string, row: BypassRow): RawHeaders {
  return [["Authorization", `Bearer ${key}`], ...(row.headers ?? [])];
}

function fromHttp(response: CubeResponse, reasonHeader: boolean): Outcome {
  if (response.status === 200) return { kind: "allow", user: response.headers["x-auth-user"] ?? "" };
  // keygate's handlers never answer 400: a 400 is the HTTP parser's (bare, or the listener's own error answer).
  if (response.status === 400) {
    watch.text("parser error body", response.body);
    return { kind: "parser", status: 400 };
  }
  let body: { code?: number; message?: string } | undefined;
  try {
    body = JSON.parse(response.body) as { code?: number; message?: string };
  } catch {
    body = undefined;
  }
  if (body?.message === undefined) return { kind: "parser", status: response.status };
  expect(body.code).toBe(response.status);
  const reason = reasonHeader ? (response.headers["x-keygate-reason"] ?? "?") : reasonOfMessage(body.message);
  return { kind: "deny", reason: response.status === 403 ? reason : `status ${response.status}: ${reason}`, message: body.message };
}

/** The shim's and ext_authz's 403 carry no reason: a policy deny's message is the fixed form. */
function reasonOfMessage(message: string): string {
  return message.startsWith("API key is not allowed to ") ? "forbidden" : "bad_request";
}

async function viaShim(row: BypassRow, key: string): Promise<Outcome> {
  const headers: RawHeaders = [
    ...credentialHeaders(key, row),
    ["X-Request-Path", pathBytes(row).toString("latin1")],
    ...(row.method === null ? [] : [["X-Request-Method", Buffer.from(row.method, "utf8").toString("latin1")] as const]),
  ];
  return fromHttp(await cubeRequest(server.url, headers), false);
}

async function viaGateway(row: BypassRow, key: string, gateway: "nginx" | "traefik"): Promise<Outcome> {
  const [uriHeader, methodHeader] = gateway === "nginx" ? ["X-Original-URI", "X-Original-Method"] : ["X-Forwarded-Uri", "X-Forwarded-Method"];
  const headers: RawHeaders = [
    ...credentialHeaders(key, row),
    [uriHeader, pathBytes(row).toString("latin1")],
    ...(row.method === null ? [] : [[methodHeader, Buffer.from(row.method, "utf8").toString("latin1")] as const]),
  ];
  return fromHttp(await cubeRequest(server.url, headers, { method: "GET", target: `/auth/${gateway}` }), true);
}

const REASON_NAMES: Record<number, string> = {
  [Reason.ALLOWED]: "allowed",
  [Reason.MISSING_CREDENTIAL]: "missing_credential",
  [Reason.INVALID_KEY]: "invalid_key",
  [Reason.REVOKED]: "revoked",
  [Reason.EXPIRED]: "expired",
  [Reason.FORBIDDEN]: "forbidden",
  [Reason.RATE_LIMITED]: "rate_limited",
  [Reason.BAD_REQUEST]: "bad_request",
  [Reason.UNAVAILABLE]: "unavailable",
};

function authorizeMessage(row: BypassRow, key: string): { binary: Buffer; json: Buffer } {
  const raw = pathBytes(row);
  const placeholder = row.bytes ? placeholderFor(raw) : undefined;
  const message = create(AuthorizeRequestSchema, { credential: key, path: placeholder ?? row.path, method: row.method ?? "" });
  const binary = toBinary(AuthorizeRequestSchema, message);
  const json = Buffer.from(toJsonString(AuthorizeRequestSchema, message), "utf8");
  return placeholder === undefined ? { binary: Buffer.from(binary), json } : { binary: swapIn(binary, placeholder, raw), json: swapIn(json, placeholder, raw) };
}

function fromAuthorizeResponse(allowed: boolean, reason: Reason, message: string, keyId: string): Outcome {
  if (allowed) {
    expect(reason).toBe(Reason.ALLOWED);
    return { kind: "allow", user: keyId };
  }
  return { kind: "deny", reason: REASON_NAMES[reason] ?? `reason ${reason}`, message };
}

async function viaConnect(row: BypassRow, key: string, format: "json" | "binary"): Promise<Outcome> {
  const { binary, json } = authorizeMessage(row, key);
  const extra = Object.fromEntries((row.headers ?? []).map(([name, value]) => [name, value]));
  const response = await fetch(`${server.url}/keygate.v1.AuthorizeService/Authorize`, {
    method: "POST",
    headers: { "content-type": format === "json" ? "application/json" : "application/proto", ...extra },
    body: format === "json" ? json : binary,
    signal: AbortSignal.timeout(10_000),
  });
  const body = Buffer.from(await response.arrayBuffer());
  if (response.status !== 200) {
    const error = JSON.parse(body.toString("utf8")) as { code: string; message: string };
    return { kind: "rpc-error", code: error.code, message: error.message };
  }
  const decoded =
    format === "json" ? fromJson(AuthorizeResponseSchema, JSON.parse(body.toString("utf8")) as JsonValue) : fromBinary(AuthorizeResponseSchema, body);
  return fromAuthorizeResponse(decoded.allowed, decoded.reason, decoded.message, decoded.key?.id ?? "");
}

function grpcUnary(client: GrpcClient, path: string, request: Buffer, metadata: grpc.Metadata): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      path,
      (b) => b,
      (b) => b,
      request,
      metadata,
      { deadline: Date.now() + 10_000 },
      (error, response) => (error ? reject(error) : resolve(response!)),
    );
  });
}

function metadataOf(row: BypassRow): grpc.Metadata {
  const metadata = new grpc.Metadata();
  for (const [name, value] of row.headers ?? []) metadata.add(name.toLowerCase(), value);
  return metadata;
}

async function viaGrpc(row: BypassRow, key: string): Promise<Outcome> {
  try {
    const body = await grpcUnary(authorizeGrpc, "/keygate.v1.AuthorizeService/Authorize", authorizeMessage(row, key).binary, metadataOf(row));
    const decoded = fromBinary(AuthorizeResponseSchema, body);
    return fromAuthorizeResponse(decoded.allowed, decoded.reason, decoded.message, decoded.key?.id ?? "");
  } catch (error) {
    const e = error as grpc.ServiceError;
    if (typeof e.code !== "number") throw error;
    return { kind: "rpc-error", code: grpc.status[e.code] ?? String(e.code), message: e.details };
  }
}

/** A CheckRequest as Envoy's HTTP ext_authz filter builds it: raw :path (query and all), lower-case headers. */
async function viaExtAuthz(row: BypassRow, key: string): Promise<Outcome> {
  const raw = pathBytes(row);
  const placeholder = row.bytes ? placeholderFor(raw) : undefined;
  const path = placeholder ?? row.path;
  const method = row.method ?? "";
  const headers: Record<string, string> = {
    ":authority": "api.example.com",
    ":method": method,
    ":path": path,
    ":scheme": "https",
    authorization: `Bearer ${key}`,
  };
  for (const [name, value] of row.headers ?? []) headers[name.toLowerCase()] = value;
  const message = create(CheckRequestSchema, {
    attributes: { request: { http: { id: "corpus", method, path, host: "api.example.com", scheme: "https", protocol: "HTTP/1.1", headers } } },
  });
  const serialized = toBinary(CheckRequestSchema, message);
  const bytes = placeholder === undefined ? Buffer.from(serialized) : swapIn(serialized, placeholder, raw);
  let answer: Buffer;
  try {
    answer = await grpcUnary(envoyGrpc, "/envoy.service.auth.v3.Authorization/Check", bytes, new grpc.Metadata());
  } catch (error) {
    const e = error as grpc.ServiceError;
    if (typeof e.code !== "number") throw error;
    return { kind: "rpc-error", code: grpc.status[e.code] ?? String(e.code), message: e.details };
  }
  const response = fromBinary(CheckResponseSchema, answer);
  if (response.httpResponse.case === "okResponse") {
    expect(response.status?.code ?? 0).toBe(0);
    const user = response.httpResponse.value.headers.find((h) => h.header?.key === "x-auth-user")?.header?.value ?? "";
    return { kind: "allow", user };
  }
  expect(response.httpResponse.case).toBe("deniedResponse");
  const denied = response.httpResponse.case === "deniedResponse" ? response.httpResponse.value : undefined;
  const status = denied?.status?.code ?? 0;
  const body = JSON.parse(denied?.body ?? "{}") as { code: number; message: string };
  expect(body.code).toBe(status);
  return { kind: "deny", reason: status === 403 ? reasonOfMessage(body.message) : `status ${status}`, message: body.message };
}

function ask(entry: Entry, row: BypassRow, key: string): Promise<Outcome> {
  figures.requests++;
  switch (entry) {
    case "shim":
      return viaShim(row, key);
    case "nginx":
    case "traefik":
      return viaGateway(row, key, entry);
    case "connect-json":
      return viaConnect(row, key, "json");
    case "connect-binary":
      return viaConnect(row, key, "binary");
    case "grpc":
      return viaGrpc(row, key);
    case "ext_authz":
      return viaExtAuthz(row, key);
  }
}

// --- the table -----------------------------------------------------------------------------------

function describeExpected(expected: Expected): string {
  if ("parser" in expected) return "HTTP parser 400";
  if ("rpcError" in expected) return "RPC error";
  if ("denied" in expected) return `denied (${expected.message.source})`;
  return `${expected.allowed ? "allowed" : "forbidden"} as ${expected.method || "(every method)"} ${expected.path.length > 40 ? `${expected.path.slice(0, 40)}…` : expected.path}`;
}

function check(entry: Entry, outcome: Outcome, expected: Expected, keyId: string): void {
  const where = `${entry}: got ${JSON.stringify(outcome).slice(0, 300)}`;
  if ("parser" in expected) {
    expect(outcome, where).toEqual({ kind: "parser", status: expected.parser });
    return;
  }
  if ("rpcError" in expected) {
    expect(outcome.kind, where).toBe("rpc-error");
    if (outcome.kind === "rpc-error") {
      expect(outcome.code.toLowerCase(), where).toBe(expected.rpcError);
      expect(outcome.message, where).toMatch(expected.message);
    }
    return;
  }
  if ("denied" in expected) {
    expect(outcome.kind, where).toBe("deny");
    if (outcome.kind === "deny") {
      expect(outcome.reason, where).toBe(expected.denied);
      expect(outcome.message, where).toMatch(expected.message);
      watch.text(`corpus ${entry} message`, outcome.message);
    }
    return;
  }
  if (expected.allowed) {
    expect(outcome, where).toEqual({ kind: "allow", user: keyId });
    return;
  }
  expect(outcome, where).toEqual({ kind: "deny", reason: "forbidden", message: `API key is not allowed to ${expected.method} ${expected.path}` });
}

describe("bypass corpus: every trick through every entry (allowed only where the normalized path and method are)", () => {
  it("has at least 50 rows, each citing its source, with distinct labels", () => {
    expect(BYPASS_CORPUS.length).toBeGreaterThanOrEqual(50);
    for (const row of BYPASS_CORPUS) expect(row.source, row.label).toMatch(/CVE-\d{4}-\d+|GHSA-[0-9a-z]{4}-[0-9a-z]{4}-[0-9a-z]{4}/);
    expect(new Set(BYPASS_CORPUS.map((row) => row.label)).size).toBe(BYPASS_CORPUS.length);
    // Every override is explained.
    for (const row of BYPASS_CORPUS) if (row.override) expect(row.why, row.label).toBeTruthy();
  });

  it.each(BYPASS_CORPUS.map((row) => [row.label, row.source, describeExpected(row.expected), row] as const))("%s (%s) → %s", async (_label, _source, _shown, row) => {
    const key = keys[row.key];
    for (const entry of ENTRIES) {
      const expected = expectedFor(row, entry);
      check(entry, await ask(entry, row, key.key), expected, key.id);
      if ("path" in expected) {
        figures.normalized++;
        if (!expected.allowed) figures.denied++;
        // The probe key is allowed nothing: its message names the path and method the policy saw.
        // With no method, every method is asked in order and the first refused is named: GET.
        const shownMethod = row.method === null ? "GET" : expected.method;
        check(entry, await ask(entry, row, keys.probe.key), { path: expected.path, method: shownMethod, allowed: false }, keys.probe.id);
      } else {
        figures.denied++;
      }
    }
  });

  it("the server is alive and answers a known-good request after the corpus", async () => {
    const ok = BYPASS_CORPUS[0]!;
    for (const entry of ENTRIES) check(entry, await ask(entry, ok, keys.reader.key), ok.expected, keys.reader.id);
    expect(server.child.exitCode).toBeNull();
  });

  it("no key appears in any output, message or trace", async () => {
    await new Promise((resolve) => setTimeout(resolve, 400)); // one trace batch (OTEL_BSP_SCHEDULE_DELAY 200 ms)
    watch.text("keygate serve output (so far)", server.output());
    expect(watch.leaks()).toEqual([]);
    expect(watch.counts().keys).toBe(4);
  });
});
