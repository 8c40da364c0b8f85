import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKey } from "../../src/core/keys/key-format.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { grpcClient, unary, type GrpcClient } from "../support/grpc-js.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { policyLine } from "../support/policy-lines.js";

/**
 * Envoy's ext_authz gRPC service (envoy.service.auth.v3.Authorization/Check)
 * on a real `keygate serve`, called by grpc-js from the vendored protos with
 * CheckRequests shaped as Envoy's HTTP filter sends them: the raw :path with
 * its query string, lower-case headers (pseudo-headers included), the
 * downstream address as the source peer.
 */

let data: TestDataDir;
let server: ServerProcess;
let envoy: GrpcClient;

type KeyName = "reader" | "writer" | "alphaWriter" | "revoked" | "limited";
const keys = {} as Record<KeyName, CreatedKeyJson>;
const UNKNOWN_KEY = generateKey();

beforeAll(async () => {
  data = await createTestDataDir();
  // A small failed-auth budget, so the guard test is quick: 2 invalid keys per minute per address, refused past 4.
  const options = { cwd: data.dir, env: { ...data.env, KEYGATE_AUTH_FAIL_LIMIT: "2/1m" } };
  server = await startServerProcess([], options);
  keys.reader = await createKey(["--org", "acme", "--role", "reader", "--name", "reader"], options);
  keys.writer = await createKey(["--org", "acme", "--role", "writer", "--name", "writer"], options);
  keys.alphaWriter = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "writer", "--name", "alpha-writer"], options);
  keys.revoked = await createKey(["--org", "acme", "--role", "reader", "--name", "revoked"], options);
  keys.limited = await createKey(["--org", "acme", "--role", "reader", "--name", "limited", "--rate-limit", "2/1h"], options);
  const revoked = await runCli(["keys", "revoke", keys.revoked.id], options);
  expect(revoked.code, revoked.stderr).toBe(0);
  envoy = grpcClient("envoy/service/auth/v3/external_auth.proto", "envoy.service.auth.v3.Authorization", server.port);
});

afterAll(async () => {
  envoy?.close();
  const code = await server?.stop();
  await data?.dispose();
  expect(code).toBe(0);
});

// --- requests and responses as grpc-js sees them ---------------------------------

interface EnvoyRequest {
  method: string;
  /** The raw :path, query string included. */
  path: string;
  headers?: Record<string, string>;
  /** The downstream client's address (attributes.source). */
  source?: string;
  /** Per-route check_settings.context_extensions. */
  context?: Record<string, string>;
}

let requestCounter = 0;

/** A CheckRequest as Envoy's HTTP ext_authz filter builds it (with_request_body unset). */
function checkRequest({ method, path, headers = {}, source = "192.0.2.10", context = {} }: EnvoyRequest): object {
  const id = `8c5f0e7a-${String(++requestCounter).padStart(4, "0")}-4d3b-9d1e-5b0c6a7f2e11`;
  return {
    attributes: {
      source: { address: { socket_address: { address: source, port_value: 51234 } } },
      destination: { address: { socket_address: { address: "10.0.0.5", port_value: 8443 } } },
      request: {
        time: { seconds: String(Math.floor(Date.now() / 1000)), nanos: 0 },
        http: {
          id,
          method,
          path,
          host: "api.example.com",
          scheme: "https",
          protocol: "HTTP/1.1",
          size: "-1",
          headers: {
            ":authority": "api.example.com",
            ":method": method,
            ":path": path,
            ":scheme": "https",
            "user-agent": "e2b-python-sdk/1.5.0",
            "x-forwarded-proto": "https",
            "x-request-id": id,
            ...headers,
          },
        },
      },
      context_extensions: context,
    },
  };
}

interface WireHeaderOption {
  header: { key: string; value: string };
  append: unknown;
  append_action: string;
}

interface CheckResponse {
  status: { code: number; message: string };
  http_response: "ok_response" | "denied_response";
  ok_response?: { headers: WireHeaderOption[]; response_headers_to_add: WireHeaderOption[]; headers_to_remove: string[] };
  denied_response?: { status: { code: string }; headers: WireHeaderOption[]; body: string };
  /** google.protobuf.Struct, as protobufjs's bundled struct.proto spells it (camelCase). */
  dynamic_metadata: { fields: Record<string, { stringValue: string }> } | null;
}

const check = (request: EnvoyRequest) => unary<CheckResponse>(envoy, "Check", checkRequest(request));

const bearer = (key: string) => ({ authorization: `Bearer ${key}` });
const xApiKey = (key: string) => ({ "x-api-key": key });

function headerMap(options: WireHeaderOption[]): Record<string, string> {
  for (const option of options) {
    // Set, never appended: whatever the client sent under that name is replaced.
    expect(option.append_action).toBe("OVERWRITE_IF_EXISTS_OR_ADD");
    expect(option.append).toBeNull();
  }
  return Object.fromEntries(options.map((o) => [o.header.key, o.header.value]));
}

function expectAllowed(response: CheckResponse, key: CreatedKeyJson): void {
  expect(response.status.code).toBe(0);
  expect(response.http_response).toBe("ok_response");
  expect(headerMap(response.ok_response!.headers)).toEqual({ "x-auth-user": key.id });
  expect(response.ok_response!.headers_to_remove).toEqual([]);
  expect(response.dynamic_metadata?.fields.key_id?.stringValue).toBe(key.id);
}

const HTTP_STATUS_NAME: Record<number, string> = { 401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests", 503: "ServiceUnavailable" };
const GRPC_CODE: Record<number, number> = { 401: 16, 403: 7, 429: 8, 503: 14 };

function expectDenied(response: CheckResponse, status: number, message: string): Record<string, string> {
  expect(response.status).toEqual({ code: GRPC_CODE[status], message, details: [] });
  expect(response.http_response).toBe("denied_response");
  const denied = response.denied_response!;
  expect(denied.status.code).toBe(HTTP_STATUS_NAME[status]);
  expect(JSON.parse(denied.body)).toEqual({ code: status, message });
  const headers = headerMap(denied.headers);
  expect(headers["content-type"]).toBe("application/json");
  return headers;
}

// --- decisions -------------------------------------------------------------------

interface Case {
  name: string;
  request: () => EnvoyRequest;
  allowed?: KeyName;
  denied?: [status: number, message: string];
}

const CASES: Case[] = [
  {
    name: "reader GETs a sandbox, query string and all (Bearer)",
    request: () => ({ method: "GET", path: "/sandboxes/sbx-7f3a9c?limit=10&state=running", headers: bearer(keys.reader.key) }),
    allowed: "reader",
  },
  {
    name: "reader GETs a build's status, ids in the path (X-API-Key)",
    request: () => ({ method: "GET", path: "/templates/tmpl-01HZX/builds/bld-99e2/status", headers: xApiKey(keys.reader.key) }),
    allowed: "reader",
  },
  {
    name: "a query string that looks like a path is never matched",
    request: () => ({ method: "GET", path: "/volumes/vol-3?next=/../../keys/reset-all", headers: bearer(keys.reader.key) }),
    allowed: "reader",
  },
  {
    name: "an X-Auth-User sent by the client is replaced by the key's id",
    request: () => ({ method: "GET", path: "/sandboxes", headers: { ...bearer(keys.reader.key), "x-auth-user": "key_admin" } }),
    allowed: "reader",
  },
  {
    name: "writer DELETEs a sandbox",
    request: () => ({ method: "DELETE", path: "/sandboxes/sbx-7f3a9c?force=true", headers: bearer(keys.writer.key) }),
    allowed: "writer",
  },
  {
    name: "reader may not DELETE a sandbox (the message names the path without its query)",
    request: () => ({ method: "DELETE", path: "/sandboxes/sbx-7f3a9c?force=true", headers: bearer(keys.reader.key) }),
    denied: [403, "API key is not allowed to DELETE /sandboxes/sbx-7f3a9c"],
  },
  {
    name: "an org hint that is not the key's",
    request: () => ({ method: "GET", path: "/sandboxes", headers: { ...bearer(keys.reader.key), "x-request-org": "globex" } }),
    denied: [403, "API key is not allowed to GET /sandboxes"],
  },
  {
    name: "a namespace-scoped key, another namespace by header",
    request: () => ({ method: "DELETE", path: "/sandboxes/sbx-1", headers: { ...bearer(keys.alphaWriter.key), "x-request-namespace": "team-beta" } }),
    denied: [403, "API key is not allowed to DELETE /sandboxes/sbx-1"],
  },
  {
    name: "a namespace-scoped key, the route's namespace (context_extensions) over the client's header",
    request: () => ({
      method: "DELETE",
      path: "/sandboxes/sbx-1",
      headers: { ...bearer(keys.alphaWriter.key), "x-request-namespace": "team-beta" },
      context: { namespace: "team-alpha" },
    }),
    allowed: "alphaWriter",
  },
  {
    name: "a namespace-scoped key on another route's namespace (context_extensions)",
    request: () => ({ method: "DELETE", path: "/sandboxes/sbx-1", headers: bearer(keys.alphaWriter.key), context: { namespace: "team-beta" } }),
    denied: [403, "API key is not allowed to DELETE /sandboxes/sbx-1"],
  },
  {
    name: "a '..' segment is a bad request, denied 403",
    request: () => ({ method: "GET", path: "/sandboxes/sbx-1/../../keys?x=1", headers: bearer(keys.reader.key) }),
    denied: [403, 'path contains a ".." segment'],
  },
  {
    name: "no credential",
    request: () => ({ method: "GET", path: "/sandboxes" }),
    denied: [401, "missing API key in Authorization header"],
  },
  {
    name: "another Authorization scheme is no credential",
    request: () => ({ method: "GET", path: "/sandboxes", headers: { authorization: "Basic dXNlcjpwYXNz" } }),
    denied: [401, "missing API key in Authorization header"],
  },
  {
    name: "an unknown key",
    request: () => ({ method: "GET", path: "/sandboxes", headers: bearer(UNKNOWN_KEY), source: "198.51.100.1" }),
    denied: [401, "invalid API key"],
  },
  {
    name: "not a key at all",
    request: () => ({ method: "GET", path: "/sandboxes", headers: xApiKey("hunter2"), source: "198.51.100.2" }),
    denied: [401, "invalid API key"],
  },
  {
    name: "an Authorization header sent twice (Envoy joins the values: 'Bearer a, Bearer b')",
    request: () => ({ method: "GET", path: "/sandboxes", headers: { authorization: `Bearer ${keys.reader.key}, Bearer ${keys.writer.key}` }, source: "198.51.100.3" }),
    denied: [401, "invalid API key"],
  },
  {
    name: "an X-API-Key header sent twice, the same key both times",
    request: () => ({ method: "GET", path: "/sandboxes", headers: { "x-api-key": `${keys.reader.key},${keys.reader.key}` }, source: "198.51.100.4" }),
    denied: [401, "invalid API key"],
  },
  {
    name: "a revoked key",
    request: () => ({ method: "GET", path: "/sandboxes", headers: bearer(keys.revoked.key) }),
    denied: [401, "API key has been revoked"],
  },
];

describe("envoy.service.auth.v3.Authorization/Check (grpc-js)", () => {
  it.each(CASES)("$name", async ({ request, allowed, denied }) => {
    const response = await check(request());
    if (allowed) expectAllowed(response, keys[allowed]);
    else expectDenied(response, denied![0], denied![1]);
    // The credential is never echoed back, allowed or denied.
    const raw = JSON.stringify(response);
    for (const key of Object.values(keys)) expect(raw).not.toContain(key.key);
  });

  it("an allow names the rule that decided in the dynamic metadata", async () => {
    const response = await check({ method: "DELETE", path: "/sandboxes/sbx-2", headers: bearer(keys.writer.key) });
    expect(response.dynamic_metadata?.fields).toMatchObject({
      key_id: { stringValue: keys.writer.id },
      org: { stringValue: "acme" },
      matched_rule: { stringValue: policyLine("p, writer, *, *, /sandboxes/:id, ^DELETE$") },
    });
  });

  it("a key with a rate limit: RateLimit-* on allows (to the client), then 429 with Retry-After", async () => {
    const request = { method: "GET", path: "/sandboxes?page=2", headers: bearer(keys.limited.key) };
    for (const remaining of ["1", "0"]) {
      const response = await check(request);
      expectAllowed(response, keys.limited);
      expect(headerMap(response.ok_response!.response_headers_to_add)).toEqual({ "ratelimit-limit": "2", "ratelimit-remaining": remaining, "ratelimit-reset": expect.stringMatching(/^\d+$/) });
    }
    const headers = expectDenied(await check(request), 429, "rate limit exceeded");
    expect(headers).toMatchObject({ "ratelimit-limit": "2", "ratelimit-remaining": "0" });
    expect(Number(headers["retry-after"])).toBeGreaterThan(0);
    expect(headers["retry-after"]).toBe(headers["ratelimit-reset"]);
  });

  it("the failed-auth guard counts the client Envoy names (its source attribute), not Envoy", async () => {
    const guessing = { method: "GET", path: "/sandboxes", headers: bearer(UNKNOWN_KEY), source: "203.0.113.50" };
    // 2 answered at once, 2 more after a delay, then refused.
    for (let i = 0; i < 4; i++) expectDenied(await check(guessing), 401, "invalid API key");
    const refused = expectDenied(await check(guessing), 429, "too many invalid API keys from this address");
    expect(Number(refused["retry-after"])).toBeGreaterThan(0);
    // Another client behind the same Envoy is not affected, and neither is a valid key from the guessing address.
    expectDenied(await check({ ...guessing, source: "203.0.113.51" }), 401, "invalid API key");
    expectAllowed(await check({ ...guessing, headers: bearer(keys.reader.key) }), keys.reader);
  });
});
