import { cp } from "node:fs/promises";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAuthorizer, type Authorize } from "../../src/core/authorize/authorizer.js";
import { MESSAGES } from "../../src/core/authorize/decision.js";
import { readServeConfig } from "../../src/config/config.js";
import { createForwardAuthHandler, NGINX_HEADERS, TRAEFIK_HEADERS, type ForwardAuthDeps } from "../../src/entries/gateway/forward-auth.js";
import { FORWARD_AUTH_PATHS } from "../../src/config/public-paths.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { loadPolicy } from "../../src/core/policy/policy.js";
import { cubeRequest, type CubeResponse, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, POLICY_DIR, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * The gateway endpoints on a real `keygate serve`, asked directly with the
 * headers each gateway sends. Traefik cannot be installed here (it is not in
 * Debian), so its forwardAuth request is reproduced: GET to /auth/traefik
 * with the client's headers copied and X-Forwarded-Method/-Uri/-Proto/-Host/
 * -For set. nginx's edge cases that nginx itself would never produce
 * (missing headers, absolute URIs) are here too; nginx in front is
 * test/e2e/nginx-auth-request.test.ts.
 */

let data: TestDataDir;
let server: ServerProcess | undefined;

type KeyName = "admin" | "writer" | "reader" | "alpha" | "revoked" | "expired" | "limited";
const keys = {} as Record<KeyName, CreatedKeyJson>;
const k = (name: KeyName) => keys[name].key;
const UNKNOWN_KEY = generateKey();

beforeAll(async () => {
  data = await createTestDataDir();
  const policyDir = join(data.dir, "policies");
  await cp(POLICY_DIR, policyDir, { recursive: true });
  const env = { ...data.env, KEYGATE_POLICY_DIR: policyDir };
  const cli = { cwd: data.dir, env };
  // The gateway is the peer (loopback, trusted by default); the client is in X-Forwarded-For.
  server = await startServerProcess(["--trusted-proxy-header", "X-Forwarded-For", "--auth-fail-limit", "2/1m"], cli);
  keys.expired = await createKey(["--org", "acme", "--role", "reader", "--expire", "1s"], cli);
  keys.admin = await createKey(["--org", "acme", "--role", "admin"], cli);
  keys.writer = await createKey(["--org", "acme", "--role", "writer"], cli);
  keys.reader = await createKey(["--org", "acme", "--role", "reader"], cli);
  keys.alpha = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "reader"], cli);
  keys.limited = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "1/1h"], cli);
  keys.revoked = await createKey(["--org", "acme", "--role", "reader"], cli);
  const revoked = await runCli(["keys", "revoke", keys.revoked.id], cli);
  expect(revoked.code, revoked.stderr).toBe(0);
  await sleep(Math.max(0, Date.parse(keys.expired.expires_at!) + 100 - Date.now()));
});

afterAll(async () => {
  const code = await server?.stop();
  await data?.dispose();
  expect(code === undefined || code === 0).toBe(true);
});

/** What Traefik's forwardAuth sends for a client request (trustForwardHeader: false, the default). */
function traefik(method: string, uri: string, clientHeaders: RawHeaders, { host = "api.example.com", proto = "https", client = "198.51.100.20" } = {}): RawHeaders {
  return [
    ...clientHeaders,
    ["User-Agent", "curl/8.5.0"],
    ["Accept", "*/*"],
    ["X-Forwarded-For", client],
    ["X-Forwarded-Host", host],
    ["X-Forwarded-Method", method],
    ["X-Forwarded-Proto", proto],
    ["X-Forwarded-Uri", uri],
    ["Accept-Encoding", "gzip"],
  ];
}

/** What the documented nginx config sends in its auth_request sub-request. */
function nginx(method: string, uri: string, clientHeaders: RawHeaders, client = "198.51.100.30"): RawHeaders {
  return [...clientHeaders, ["X-Original-URI", uri], ["X-Original-Method", method], ["X-Forwarded-For", client]];
}

const bearer = (name: KeyName): RawHeaders => [["Authorization", `Bearer ${k(name)}`]];
const apiKey = (name: KeyName): RawHeaders => [["X-Api-Key", k(name)]];

function ask(path: string, headers: RawHeaders, method = "GET"): Promise<CubeResponse> {
  return cubeRequest(server!.url, headers, { method, target: path });
}

type Expect = { allow: KeyName } | { status: 401 | 403 | 429; reason: string; message: string | RegExp };

function expectAnswer(response: CubeResponse, expected: Expect): void {
  // Only these four, whatever happened.
  expect([200, 401, 403, 429]).toContain(response.status);
  if ("allow" in expected) {
    expect({ status: response.status, body: response.body, reason: response.headers["x-keygate-reason"] }).toEqual({ status: 200, body: "{}", reason: "allowed" });
    expect(response.headers["x-auth-user"]).toBe(keys[expected.allow].id);
  } else {
    expect(response.status, response.body).toBe(expected.status);
    expect(response.headers["x-auth-user"]).toBeUndefined();
    expect(response.headers["x-keygate-reason"]).toBe(expected.reason);
    expect(response.headers["content-type"]).toBe("application/json");
    const body = JSON.parse(response.body) as { code: number; message: string };
    expect(body.code).toBe(expected.status);
    if (typeof expected.message === "string") expect(body.message).toBe(expected.message);
    else expect(body.message).toMatch(expected.message);
    expect(response.headers["www-authenticate"]).toBe(expected.status === 401 ? 'Bearer realm="keygate"' : undefined);
  }
  expect(response.headers["cache-control"]).toBe("no-store");
  // Never the key back, in a header or the body.
  const everything = JSON.stringify(response);
  for (const key of Object.values(keys)) expect(everything).not.toContain(key.key);
}

const MISSING = "missing API key in Authorization header";
const INVALID = "invalid API key";
const forbidden = (method: string, path: string) => `API key is not allowed to ${method} ${path}`;

interface Row {
  name: string;
  method: string;
  uri: string;
  client: () => RawHeaders;
  expected: Expect;
}

/** The same table through both gateways' headers. */
const DECISIONS: Row[] = [
  { name: "allowed, Authorization: Bearer", method: "GET", uri: "/sandboxes/abc", client: () => bearer("reader"), expected: { allow: "reader" } },
  { name: "allowed, X-Api-Key", method: "GET", uri: "/sandboxes/abc", client: () => apiKey("reader"), expected: { allow: "reader" } },
  { name: "allowed, writer DELETE", method: "DELETE", uri: "/sandboxes/abc", client: () => bearer("writer"), expected: { allow: "writer" } },
  { name: "allowed, method in lower case", method: "delete", uri: "/sandboxes/abc", client: () => bearer("writer"), expected: { allow: "writer" } },
  { name: "allowed, the query string dropped", method: "GET", uri: "/sandboxes/abc?next=%2F..%2Fkeys&a=b", client: () => bearer("reader"), expected: { allow: "reader" } },
  { name: "allowed, // collapses", method: "GET", uri: "//sandboxes//abc/", client: () => bearer("reader"), expected: { allow: "reader" } },
  { name: "HEAD where the policy grants it", method: "HEAD", uri: "/sandboxes/abc", client: () => bearer("reader"), expected: { allow: "reader" } },
  { name: "no credential → 401", method: "GET", uri: "/sandboxes/abc", client: () => [], expected: { status: 401, reason: "missing_credential", message: MISSING } },
  { name: "unknown key → 401", method: "GET", uri: "/sandboxes/abc", client: () => [["Authorization", `Bearer ${UNKNOWN_KEY}`]], expected: { status: 401, reason: "invalid_key", message: INVALID } },
  { name: "revoked → 401", method: "GET", uri: "/sandboxes/abc", client: () => bearer("revoked"), expected: { status: 401, reason: "revoked", message: "API key has been revoked" } },
  { name: "expired → 401", method: "GET", uri: "/sandboxes/abc", client: () => apiKey("expired"), expected: { status: 401, reason: "expired", message: "API key has expired" } },
  { name: "forbidden by policy → 403", method: "DELETE", uri: "/sandboxes/abc", client: () => bearer("reader"), expected: { status: 403, reason: "forbidden", message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "a query string does not change the decision → 403", method: "DELETE", uri: "/sandboxes/abc?method=GET", client: () => bearer("reader"), expected: { status: 403, reason: "forbidden", message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "../ → 403", method: "GET", uri: "/sandboxes/../keys", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'path contains a ".." segment' } },
  { name: "%2e%2e → 403", method: "GET", uri: "/sandboxes/%2e%2e/keys", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'path contains a ".." segment' } },
  { name: "%2f → 403", method: "GET", uri: "/sandboxes/abc%2f..%2fkeys", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: "path contains an encoded / or \\" } },
  { name: "; path parameter → 403", method: "GET", uri: "/sandboxes/abc;jsessionid=1", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: /forbidden character/ } },
  { name: "unknown method → 403", method: "BREW", uri: "/sandboxes/abc", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'unknown HTTP method "BREW"' } },
  { name: "CONNECT → 403", method: "CONNECT", uri: "/sandboxes/abc", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'unknown HTTP method "CONNECT"' } },
  // Not origin-form: what a proxy would send for an absolute-form or asterisk request.
  { name: "absolute URI http://… → 403", method: "GET", uri: "http://api.example.com/sandboxes/abc", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'path must start with "/"' } },
  { name: "absolute URI https://… → 403", method: "GET", uri: "https://evil.example/sandboxes", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'path must start with "/"' } },
  { name: "asterisk-form * → 403", method: "OPTIONS", uri: "*", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'path must start with "/"' } },
  { name: "empty URI → 403", method: "GET", uri: "", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: "missing path" } },
  { name: "relative URI → 403", method: "GET", uri: "sandboxes/abc", client: () => bearer("admin"), expected: { status: 403, reason: "bad_request", message: 'path must start with "/"' } },
  // Org and namespace hints, read as the Cube callback reads them.
  { name: "X-Request-Org of another org → 403", method: "GET", uri: "/sandboxes/abc", client: () => [...bearer("admin"), ["X-Request-Org", "globex"]], expected: { status: 403, reason: "forbidden", message: forbidden("GET", "/sandboxes/abc") } },
  { name: "namespace-scoped key in its namespace", method: "GET", uri: "/sandboxes/abc", client: () => [...bearer("alpha"), ["X-Request-Namespace", "team-alpha"]], expected: { allow: "alpha" } },
  { name: "namespace-scoped key in another namespace → 403", method: "GET", uri: "/sandboxes/abc", client: () => [...bearer("alpha"), ["X-Request-Namespace", "team-beta"]], expected: { status: 403, reason: "forbidden", message: forbidden("GET", "/sandboxes/abc") } },
  // Cube's credential order by default.
  { name: "Bearer wins over X-API-Key", method: "DELETE", uri: "/sandboxes/abc", client: () => [...bearer("reader"), ...apiKey("admin")], expected: { status: 403, reason: "forbidden", message: forbidden("DELETE", "/sandboxes/abc") } },
];

describe("Traefik forwardAuth → /auth/traefik", () => {
  it.each(DECISIONS)("$name", async ({ method, uri, client, expected }) => {
    expectAnswer(await ask("/auth/traefik", traefik(method, uri, client())), expected);
  });

  it("X-Forwarded-Host and X-Forwarded-Proto do not change the decision", async () => {
    for (const options of [{ host: "other.example" }, { proto: "http" }, { host: "localhost:8080", proto: "https" }]) {
      expectAnswer(await ask("/auth/traefik", traefik("GET", "/sandboxes/abc", bearer("reader"), options)), { allow: "reader" });
      expectAnswer(await ask("/auth/traefik", traefik("DELETE", "/sandboxes/abc", bearer("reader"), options)), { status: 403, reason: "forbidden", message: forbidden("DELETE", "/sandboxes/abc") });
    }
  });

  it("the nginx headers mean nothing on the Traefik endpoint", async () => {
    const headers: RawHeaders = [...bearer("reader"), ["X-Original-URI", "/sandboxes/abc"], ["X-Original-Method", "GET"]];
    expectAnswer(await ask("/auth/traefik", headers), { status: 403, reason: "bad_request", message: "missing X-Forwarded-Uri header (the gateway's config sets it)" });
  });

  it("a request with the client's method and body (Traefik's preserveRequestMethod, forwardBody) is decided on the headers; the body is never read", async () => {
    const body = JSON.stringify({ method: "GET", path: "/sandboxes" });
    const headers = traefik("DELETE", "/sandboxes/abc", [...bearer("reader"), ["Content-Type", "application/json"], ["Content-Length", String(body.length)]]);
    const { hostname, port } = new URL(server!.url);
    const response = await new Promise<{ status: number; reason: string | undefined }>((done, fail) => {
      const req = http.request({ host: hostname, port, method: "DELETE", path: "/auth/traefik", headers: Object.fromEntries(headers) }, (res) => {
        res.resume();
        res.on("end", () => done({ status: res.statusCode ?? 0, reason: res.headers["x-keygate-reason"] as string | undefined }));
      });
      req.on("error", fail);
      req.end(body);
    });
    expect(response).toEqual({ status: 403, reason: "forbidden" });
  });

  it("over the key's rate limit: 429 with Retry-After and RateLimit-* (Traefik passes them to the client)", async () => {
    const first = await ask("/auth/traefik", traefik("GET", "/sandboxes", bearer("limited")));
    expectAnswer(first, { allow: "limited" });
    expect(first.headers["ratelimit-limit"]).toBe("1");
    expect(first.headers["ratelimit-remaining"]).toBe("0");
    const second = await ask("/auth/traefik", traefik("GET", "/sandboxes", bearer("limited")));
    expectAnswer(second, { status: 429, reason: "rate_limited", message: "rate limit exceeded" });
    expect(Number(second.headers["retry-after"])).toBeGreaterThan(3500);
    expect(second.headers["ratelimit-remaining"]).toBe("0");
  });
});

describe("nginx auth_request → /auth/nginx", () => {
  it.each(DECISIONS)("$name", async ({ method, uri, client, expected }) => {
    expectAnswer(await ask("/auth/nginx", nginx(method, uri, client())), expected);
  });

  it.each<[string, () => RawHeaders, string]>([
    ["no X-Original-URI", () => [...bearer("admin"), ["X-Original-Method", "GET"]], "missing X-Original-URI header (the gateway's config sets it)"],
    ["no X-Original-Method", () => [...bearer("admin"), ["X-Original-URI", "/sandboxes"]], "missing X-Original-Method header (the gateway's config sets it)"],
    ["an empty X-Original-Method (not 'every method', as for old Cube)", () => [...bearer("admin"), ["X-Original-URI", "/sandboxes"], ["X-Original-Method", ""]], "missing X-Original-Method header (the gateway's config sets it)"],
    ["Traefik's headers on the nginx endpoint", () => [...bearer("admin"), ["X-Forwarded-Uri", "/sandboxes"], ["X-Forwarded-Method", "GET"]], "missing X-Original-URI header (the gateway's config sets it)"],
  ])("%s → 403, even for an admin key (a config line is missing)", async (_, headers, message) => {
    expectAnswer(await ask("/auth/nginx", headers()), { status: 403, reason: "bad_request", message });
  });

  it.each<[string, () => RawHeaders, RegExp]>([
    ["X-Original-URI twice", () => [...bearer("reader"), ["X-Original-URI", "/sandboxes/abc"], ["X-Original-URI", "/templates/t1"], ["X-Original-Method", "GET"]], /forbidden character/],
    ["X-Original-Method twice", () => [...bearer("writer"), ["X-Original-URI", "/sandboxes/abc"], ["X-Original-Method", "GET"], ["X-Original-Method", "DELETE"]], /^unknown HTTP method/],
  ])("%s (a client's copy next to nginx's) → 403", async (_, headers, message) => {
    expectAnswer(await ask("/auth/nginx", headers()), { status: 403, reason: "bad_request", message });
  });

  it("answers any method on the endpoint itself (nginx sends GET), never a 405, and ignores its query string", async () => {
    for (const method of ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]) {
      const allowed = await ask("/auth/nginx", nginx("GET", "/sandboxes/abc", bearer("reader")), method);
      expect([allowed.status, allowed.headers["x-auth-user"]], method).toEqual([200, keys.reader.id]);
      const denied = await ask("/auth/nginx?x=1", nginx("DELETE", "/sandboxes/abc", bearer("reader")), method);
      expect(denied.status, method).toBe(403);
    }
  });

  it("counts invalid keys per client, as X-Forwarded-For from the (trusted) gateway names it", async () => {
    const invalid = (client: string) => ask("/auth/nginx", nginx("GET", "/sandboxes", [["Authorization", `Bearer ${generateKey()}`]], client));
    // --auth-fail-limit 2/1m: four answered (the last two slowed), the fifth refused.
    for (let i = 0; i < 4; i++) expectAnswer(await invalid("203.0.113.7"), { status: 401, reason: "invalid_key", message: INVALID });
    const refused = await invalid("203.0.113.7");
    expectAnswer(refused, { status: 429, reason: "rate_limited", message: "too many invalid API keys from this address" });
    expect(Number(refused.headers["retry-after"])).toBeGreaterThan(0);
    // Another client behind the same gateway, and a valid key from the same client, are not affected.
    expectAnswer(await invalid("203.0.113.8"), { status: 401, reason: "invalid_key", message: INVALID });
    expectAnswer(await ask("/auth/nginx", nginx("GET", "/sandboxes", bearer("reader"), "203.0.113.7")), { allow: "reader" });
  });
});

describe("status mapping when keygate cannot decide", () => {
  let local: http.Server;
  let url: string;
  let authorize: Authorize;
  const errors: unknown[] = [];

  beforeAll(async () => {
    const policy = await loadPolicy(POLICY_DIR);
    const down = new Error("connect ECONNREFUSED 127.0.0.1:5432");
    // The real core with its key store down: it answers "unavailable".
    const core = createAuthorizer({
      lookupKey: async () => {
        throw down;
      },
      policy: () => policy,
      now: () => new Date(),
    });
    authorize = core;
    const deps = (): ForwardAuthDeps => ({ authorize: (input) => authorize(input), credentialPriority: ["authorization", "x-api-key"], onError: (error) => errors.push(error) });
    const nginxHandler = createForwardAuthHandler(NGINX_HEADERS, deps());
    const traefikHandler = createForwardAuthHandler(TRAEFIK_HEADERS, deps());
    local = http.createServer((req, res) => (req.url?.startsWith("/auth/nginx") ? nginxHandler : traefikHandler)(req, res));
    await new Promise<void>((done) => local.listen(0, "127.0.0.1", done));
    url = `http://127.0.0.1:${(local.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise((done) => local.close(done));
  });

  it.each([
    ["nginx", "/auth/nginx", nginx],
    ["Traefik", "/auth/traefik", traefik],
  ] as const)("%s: the key store down → 403 with reason unavailable (a 503 would be a 500 from nginx), never 200", async (_, path, headers) => {
    const response = await cubeRequest(url, headers("GET", "/sandboxes", [["Authorization", `Bearer ${generateKey()}`]]), { method: "GET", target: path });
    expect({ status: response.status, reason: response.headers["x-keygate-reason"], body: JSON.parse(response.body) as unknown }).toEqual({
      status: 403,
      reason: "unavailable",
      body: { code: 403, message: MESSAGES.unavailable },
    });
    expect(response.headers["x-auth-user"]).toBeUndefined();
  });

  it("an authorizer that throws (a bug) → 403 unavailable, and the error is reported", async () => {
    const bug = new Error("bug");
    authorize = async () => {
      throw bug;
    };
    errors.length = 0;
    const response = await cubeRequest(url, nginx("GET", "/sandboxes", [["Authorization", `Bearer ${generateKey()}`]]), { method: "GET", target: "/auth/nginx" });
    expect([response.status, response.headers["x-keygate-reason"], response.headers["x-auth-user"]]).toEqual([403, "unavailable", undefined]);
    expect(JSON.parse(response.body)).toEqual({ code: 403, message: "authorization unavailable, request denied" });
    expect(errors).toEqual([bug]);
  });
});

describe("the gateway paths are fixed", () => {
  it.each(FORWARD_AUTH_PATHS)("--shim-path %s is refused (it would hide a gateway endpoint)", (path) => {
    const result = readServeConfig({ "shim-path": path }, {}, "/tmp");
    expect(result.ok).toBe(false);
    expect(!result.ok && result.errors).toEqual([`--shim-path/KEYGATE_SHIM_PATH: "${path}" is taken by a gateway endpoint (/auth/nginx, /auth/traefik)`]);
    const fromEnv = readServeConfig({}, { KEYGATE_SHIM_PATH: path }, "/tmp");
    expect(fromEnv.ok).toBe(false);
  });

  it("any other shim path is fine", () => {
    expect(readServeConfig({ "shim-path": "/auth/cube" }, {}, "/tmp").ok).toBe(true);
  });
});
