import { cp, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKey } from "../../src/core/keys/key-format.js";
import { apiKey, bearer, cubeRequest, type CubeResponse, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import {
  createKey,
  POLICY_DIR,
  runCli,
  startServerProcess,
  startShimProcess,
  type CreatedKeyJson,
  type ServerProcess,
  type ShimProcess,
} from "../support/keygate-process.js";

/**
 * The Cube API Server auth callback, sent exactly as Cube sends it (POST, no
 * body, one credential header, X-Request-Path, X-Request-Method), to the
 * server's own /verify and to `keygate shim` asking that server over gRPC.
 */

let data: TestDataDir;
let server: ServerProcess | undefined;
let shim: ShimProcess | undefined;
let shimFlipped: ShimProcess | undefined;
let flippedServer: ServerProcess | undefined;
let env: Record<string, string>;

type KeyName = "admin" | "writer" | "reader" | "platform" | "getOnly" | "everything" | "alpha" | "revoked" | "expired" | "named";
const keys = {} as Record<KeyName, CreatedKeyJson>;
const UNKNOWN_KEY = generateKey();
const NAMED = " Zoë's 50% ☃ key";

beforeAll(async () => {
  data = await createTestDataDir();
  // The default policy, plus a role that may GET but not HEAD (HEAD is never implied by GET) and one
  // that may use every method on a sandbox (no default role may: older Cube sends no method).
  const policyDir = join(data.dir, "policies");
  await cp(POLICY_DIR, policyDir, { recursive: true });
  await writeFile(join(policyDir, "extra.csv"), "# test-only roles\np, getonly, *, *, /sandboxes/:id, ^GET$\np, everything, *, *, /sandboxes/:id, ^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)$\n");
  env = { ...data.env, KEYGATE_POLICY_DIR: policyDir };
  const cli = { cwd: data.dir, env };
  server = await startServerProcess([], cli);
  // First, so that making the others uses up most of its second.
  keys.expired = await createKey(["--org", "acme", "--role", "reader", "--expire", "1s", "--name", "short-lived"], cli);
  keys.admin = await createKey(["--org", "acme", "--role", "admin", "--name", "acme-admin"], cli);
  keys.writer = await createKey(["--org", "acme", "--role", "writer"], cli);
  keys.reader = await createKey(["--org", "acme", "--role", "reader"], cli);
  keys.platform = await createKey(["--org", "acme", "--role", "platform"], cli);
  keys.getOnly = await createKey(["--org", "acme", "--role", "getonly"], cli);
  keys.everything = await createKey(["--org", "acme", "--role", "everything"], cli);
  keys.alpha = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "reader"], cli);
  keys.revoked = await createKey(["--org", "acme", "--role", "reader"], cli);
  // Characters a header value cannot carry as they are (see identity-headers.ts).
  keys.named = await createKey(["--org", "acme", "--role", "reader", "--name", NAMED], cli);
  const revoked = await runCli(["keys", "revoke", keys.revoked.id], cli);
  expect(revoked.code, revoked.stderr).toBe(0);
  // One after the other, so that each one started is assigned and stopped by afterAll.
  shim = await startShimProcess(server.url, [], cli);
  shimFlipped = await startShimProcess(server.url, ["--credential-priority", "x-api-key,authorization"], cli);
  // The one sleep in the suite: an expiry is wall-clock time in another process.
  await sleep(Math.max(0, Date.parse(keys.expired.expires_at!) + 100 - Date.now()));
});

afterAll(async () => {
  const codes = await Promise.all([shim, shimFlipped, server, flippedServer].map((p) => p?.stop()));
  await data?.dispose();
  // Everything that started shut down cleanly.
  expect(codes.filter((code) => code !== undefined && code !== 0)).toEqual([]);
});

type Expect = { allow: KeyName } | { status: 401 | 403 | 503; message: string | RegExp };

function expectDecision(response: CubeResponse, expected: Expect): void {
  if ("allow" in expected) {
    expect({ status: response.status, body: response.body }).toEqual({ status: 200, body: "{}" });
    expect(response.headers["x-auth-user"]).toBe(keys[expected.allow].id);
    // What Cube's auth middleware writes into its audit log.
    expect(response.headers["x-user-id"]).toBe(keys[expected.allow].id);
    const name = keys[expected.allow].name;
    if (name === "") expect(response.headers["x-user-name"]).toBeUndefined();
    else expect(decodeURIComponent(response.headers["x-user-name"]!)).toBe(name);
  } else {
    expect(response.status).toBe(expected.status);
    expect(response.headers["content-type"]).toBe("application/json");
    expect(response.headers["x-auth-user"]).toBeUndefined();
    expect([response.headers["x-user-id"], response.headers["x-user-name"]]).toEqual([undefined, undefined]);
    const body = JSON.parse(response.body) as { code: number; message: string };
    expect(Object.keys(body).sort()).toEqual(["code", "message"]);
    expect(body.code).toBe(expected.status);
    if (typeof expected.message === "string") expect(body.message).toBe(expected.message);
    else expect(body.message).toMatch(expected.message);
  }
  // Whatever the answer, no key ever comes back.
  const everything = JSON.stringify(response);
  for (const key of Object.values(keys)) expect(everything).not.toContain(key.key);
}

const k = (name: KeyName) => keys[name].key;
const MISSING = "missing API key in Authorization header";
const INVALID = "invalid API key";
const forbidden = (method: string, path: string) => `API key is not allowed to ${method} ${path}`;

interface Row {
  name: string;
  headers: () => RawHeaders;
  expected: Expect;
}

/** SPEC's reason table, row by row. */
const REASONS: Row[] = [
  { name: "allowed, Authorization: Bearer → 200 + X-Auth-User", headers: () => bearer(k("reader"), "/sandboxes/abc", "GET"), expected: { allow: "reader" } },
  { name: "allowed, X-API-Key (the E2B SDK) → 200", headers: () => apiKey(k("reader"), "/sandboxes/abc", "GET"), expected: { allow: "reader" } },
  { name: "allowed, header names upper-cased", headers: () => [["AUTHORIZATION", `Bearer ${k("writer")}`], ["X-REQUEST-PATH", "/sandboxes/abc"], ["X-REQUEST-METHOD", "DELETE"]], expected: { allow: "writer" } },
  { name: "allowed, header names lower-cased, scheme lower-cased", headers: () => [["authorization", `bearer ${k("writer")}`], ["x-request-path", "/sandboxes/abc"], ["x-request-method", "DELETE"]], expected: { allow: "writer" } },
  { name: "allowed, X-Api-Key in mixed case", headers: () => [["X-Api-Key", k("writer")], ["x-Request-Path", "/sandboxes/abc/pause"], ["X-Request-method", "POST"]], expected: { allow: "writer" } },
  { name: "missing credential → 401", headers: () => [["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: MISSING } },
  { name: "missing: Authorization with no key → 401", headers: () => [["Authorization", "Bearer"], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: MISSING } },
  { name: "missing: empty X-API-Key → 401", headers: () => [["X-API-Key", ""], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: MISSING } },
  { name: "missing: Authorization: Basic is not a key → 401", headers: () => [["Authorization", `Basic ${Buffer.from(`admin:${k("admin")}`).toString("base64")}`], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: MISSING } },
  { name: "invalid: a well-formed key nobody issued → 401", headers: () => bearer(UNKNOWN_KEY, "/sandboxes/abc", "GET"), expected: { status: 401, message: INVALID } },
  { name: "invalid: one character changed (checksum) → 401", headers: () => bearer(k("admin").slice(0, -1) + (k("admin").endsWith("A") ? "B" : "A"), "/sandboxes/abc", "GET"), expected: { status: 401, message: INVALID } },
  { name: "invalid: wrong prefix → 401", headers: () => bearer(k("admin").replace("sk-sb-", "sk-xx-"), "/sandboxes/abc", "GET"), expected: { status: 401, message: INVALID } },
  { name: "invalid: \"Bearer KEY\" sent as X-API-Key → 401", headers: () => apiKey(`Bearer ${k("admin")}`, "/sandboxes/abc", "GET"), expected: { status: 401, message: INVALID } },
  { name: "invalid: a 10 kB credential → 401", headers: () => apiKey(`sk-sb-${"A".repeat(10_000)}`, "/sandboxes/abc", "GET"), expected: { status: 401, message: INVALID } },
  { name: "invalid: key with a suffix → 401", headers: () => bearer(`${k("admin")}x`, "/sandboxes/abc", "GET"), expected: { status: 401, message: INVALID } },
  { name: "revoked (keys revoke ID) → 401", headers: () => bearer(k("revoked"), "/sandboxes/abc", "GET"), expected: { status: 401, message: "API key has been revoked" } },
  { name: "expired (keygen --expire 1s) → 401", headers: () => apiKey(k("expired"), "/sandboxes/abc", "GET"), expected: { status: 401, message: "API key has expired" } },
  { name: "forbidden by policy → 403", headers: () => bearer(k("reader"), "/sandboxes/abc", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "forbidden: no rule for the path → 403", headers: () => bearer(k("writer"), "/admin/settings", "GET"), expected: { status: 403, message: forbidden("GET", "/admin/settings") } },
  { name: "bad request: no X-Request-Path → 403, not 400", headers: () => [["Authorization", `Bearer ${k("admin")}`], ["X-Request-Method", "GET"]], expected: { status: 403, message: "missing path" } },
  { name: "bad request: unknown method → 403, not 400", headers: () => bearer(k("admin"), "/sandboxes/abc", "BREW"), expected: { status: 403, message: 'unknown HTTP method "BREW"' } },
];

/** Bypass attempts seen in Envoy, Oathkeeper and fastify-middie, and method tricks. */
const SECURITY: Row[] = [
  // A path that can be read two ways is refused, even for the most powerful key.
  { name: "../ traversal", headers: () => bearer(k("admin"), "/sandboxes/../templates", "GET"), expected: { status: 403, message: 'path contains a ".." segment' } },
  { name: "./ segment", headers: () => bearer(k("admin"), "/sandboxes/./abc", "GET"), expected: { status: 403, message: 'path contains a "." segment' } },
  { name: "%2e%2e traversal", headers: () => bearer(k("admin"), "/sandboxes/%2e%2e/templates", "GET"), expected: { status: 403, message: 'path contains a ".." segment' } },
  { name: "%2E%2E traversal", headers: () => bearer(k("admin"), "/sandboxes/%2E%2E/templates", "GET"), expected: { status: 403, message: 'path contains a ".." segment' } },
  { name: ".%2e traversal", headers: () => bearer(k("admin"), "/sandboxes/.%2e/templates", "GET"), expected: { status: 403, message: 'path contains a ".." segment' } },
  { name: "%2f encoded slash", headers: () => bearer(k("admin"), "/sandboxes/abc%2f..%2ftemplates", "GET"), expected: { status: 403, message: "path contains an encoded / or \\" } },
  { name: "%2F encoded slash", headers: () => bearer(k("admin"), "/templates/t1%2Fbuilds", "GET"), expected: { status: 403, message: "path contains an encoded / or \\" } },
  { name: "%5c encoded backslash", headers: () => bearer(k("admin"), "/sandboxes/abc%5c..%5ctemplates", "GET"), expected: { status: 403, message: "path contains an encoded / or \\" } },
  { name: "raw backslash", headers: () => bearer(k("admin"), "/sandboxes\\..\\templates", "GET"), expected: { status: 403, message: /forbidden character/ } },
  { name: "; path parameter", headers: () => bearer(k("admin"), "/sandboxes/abc;jsessionid=1", "GET"), expected: { status: 403, message: /forbidden character/ } },
  { name: "%3b encoded ;", headers: () => bearer(k("admin"), "/sandboxes/abc%3b..", "GET"), expected: { status: 403, message: "path contains a forbidden encoded character" } },
  { name: "%00 NUL", headers: () => bearer(k("admin"), "/sandboxes/abc%00.json", "GET"), expected: { status: 403, message: "path contains a forbidden encoded character" } },
  { name: "%0a newline", headers: () => bearer(k("admin"), "/sandboxes/abc%0a", "GET"), expected: { status: 403, message: "path contains a forbidden encoded character" } },
  { name: "overlong UTF-8 dot-dot %c0%ae%c0%ae", headers: () => bearer(k("admin"), "/sandboxes/%c0%ae%c0%ae/templates", "GET"), expected: { status: 403, message: "path contains an invalid percent-encoding or invalid UTF-8" } },
  { name: "overlong UTF-8 slash %c0%af", headers: () => bearer(k("admin"), "/sandboxes/..%c0%aftemplates", "GET"), expected: { status: 403, message: "path contains an invalid percent-encoding or invalid UTF-8" } },
  { name: "double encoding %252e%252e", headers: () => bearer(k("admin"), "/sandboxes/%252e%252e/templates", "GET"), expected: { status: 403, message: "path is percent-encoded twice" } },
  { name: "double encoding %252f", headers: () => bearer(k("admin"), "/sandboxes/abc%252ftemplates", "GET"), expected: { status: 403, message: "path is percent-encoded twice" } },
  { name: "invalid escape %zz", headers: () => bearer(k("admin"), "/sandboxes/%zz", "GET"), expected: { status: 403, message: "path contains an invalid percent-encoding or invalid UTF-8" } },
  { name: "# fragment", headers: () => bearer(k("admin"), "/sandboxes/abc#/templates", "GET"), expected: { status: 403, message: /forbidden character/ } },
  { name: "no leading slash", headers: () => bearer(k("admin"), "sandboxes/abc", "GET"), expected: { status: 403, message: 'path must start with "/"' } },
  { name: "a path longer than 4096 characters", headers: () => bearer(k("admin"), `/sandboxes/${"a".repeat(5000)}`, "GET"), expected: { status: 403, message: "path longer than 4096 characters" } },
  { name: "empty X-Request-Path", headers: () => bearer(k("admin"), "", "GET"), expected: { status: 403, message: "missing path" } },
  // Normalizations that keep the meaning: the policy sees the path the upstream serves.
  { name: "// collapses (allow)", headers: () => bearer(k("reader"), "//sandboxes//abc", "GET"), expected: { allow: "reader" } },
  { name: "// collapses (deny names the normalized path)", headers: () => bearer(k("reader"), "//sandboxes///abc/", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "query string is dropped, never matched", headers: () => bearer(k("reader"), "/sandboxes/abc?x=/../../templates", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "a plain character percent-encoded is decoded once", headers: () => bearer(k("reader"), "/sandboxes/%61bc", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "paths are case-sensitive", headers: () => bearer(k("reader"), "/SANDBOXES/abc", "GET"), expected: { status: 403, message: forbidden("GET", "/SANDBOXES/abc") } },
  // Methods.
  { name: "delete is DELETE (writer)", headers: () => bearer(k("writer"), "/sandboxes/abc", "delete"), expected: { allow: "writer" } },
  { name: "delete is DELETE (reader)", headers: () => bearer(k("reader"), "/sandboxes/abc", "delete"), expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "gEt is GET", headers: () => bearer(k("reader"), "/sandboxes/abc", "gEt"), expected: { allow: "reader" } },
  { name: "unknown method FOO", headers: () => bearer(k("admin"), "/sandboxes/abc", "FOO"), expected: { status: 403, message: 'unknown HTTP method "FOO"' } },
  { name: "CONNECT", headers: () => bearer(k("admin"), "/sandboxes/abc", "CONNECT"), expected: { status: 403, message: 'unknown HTTP method "CONNECT"' } },
  { name: "TRACE", headers: () => bearer(k("admin"), "/sandboxes/abc", "TRACE"), expected: { status: 403, message: 'unknown HTTP method "TRACE"' } },
  { name: "non-ASCII look-alike poſt (UTF-8 bytes)", headers: () => bearer(k("writer"), "/sandboxes", "po\u00c5\u00bft"), expected: { status: 403, message: /^unknown HTTP method/ } },
  { name: "two methods in one", headers: () => bearer(k("writer"), "/sandboxes/abc", "GET,DELETE"), expected: { status: 403, message: /^unknown HTTP method/ } },
  { name: "HEAD where the policy grants it (reader)", headers: () => bearer(k("reader"), "/sandboxes/abc", "HEAD"), expected: { allow: "reader" } },
  { name: "HEAD is not GET (a GET-only role)", headers: () => bearer(k("getOnly"), "/sandboxes/abc", "HEAD"), expected: { status: 403, message: forbidden("HEAD", "/sandboxes/abc") } },
  { name: "GET for the GET-only role", headers: () => bearer(k("getOnly"), "/sandboxes/abc", "GET"), expected: { allow: "getOnly" } },
  { name: "OPTIONS is not implied for a reader", headers: () => bearer(k("reader"), "/sandboxes/abc", "OPTIONS"), expected: { status: 403, message: forbidden("OPTIONS", "/sandboxes/abc") } },
  // Older Cube releases send no X-Request-Method: only a key allowed every method passes.
  { name: "no X-Request-Method, a role with every method", headers: () => bearer(k("everything"), "/sandboxes/abc"), expected: { allow: "everything" } },
  { name: "no X-Request-Method, admin (no default role has every method)", headers: () => bearer(k("admin"), "/sandboxes/abc"), expected: { status: 403, message: /^API key is not allowed to [A-Z]+ \/sandboxes\/abc$/ } },
  { name: "no X-Request-Method, reader", headers: () => bearer(k("reader"), "/sandboxes/abc"), expected: { status: 403, message: /^API key is not allowed to [A-Z]+ \/sandboxes\/abc$/ } },
  { name: "no X-Request-Method, writer", headers: () => bearer(k("writer"), "/sandboxes/abc"), expected: { status: 403, message: /^API key is not allowed to [A-Z]+ \/sandboxes\/abc$/ } },
  { name: "no X-Request-Method, GET-only role", headers: () => bearer(k("getOnly"), "/sandboxes/abc"), expected: { status: 403, message: /^API key is not allowed to [A-Z]+ \/sandboxes\/abc$/ } },
  { name: "empty X-Request-Method, reader", headers: () => bearer(k("reader"), "/sandboxes/abc", ""), expected: { status: 403, message: /^API key is not allowed to [A-Z]+ \/sandboxes\/abc$/ } },
  // Org and namespace crossing (X-Request-Org, X-Request-Namespace).
  { name: "X-Request-Org equal to the key's", headers: () => [...bearer(k("reader"), "/sandboxes/abc", "GET"), ["X-Request-Org", "acme"]], expected: { allow: "reader" } },
  { name: "X-Request-Org of another org, even for admin", headers: () => [...bearer(k("admin"), "/sandboxes/abc", "GET"), ["X-Request-Org", "globex"]], expected: { status: 403, message: forbidden("GET", "/sandboxes/abc") } },
  { name: "X-Request-Org that is not a name", headers: () => [...bearer(k("admin"), "/sandboxes/abc", "GET"), ["X-Request-Org", "acme/../globex"]], expected: { status: 403, message: "invalid org" } },
  { name: "namespace-scoped key in its namespace", headers: () => [...bearer(k("alpha"), "/sandboxes/abc", "GET"), ["X-Request-Namespace", "team-alpha"]], expected: { allow: "alpha" } },
  { name: "namespace-scoped key, no namespace header", headers: () => bearer(k("alpha"), "/sandboxes/abc", "GET"), expected: { allow: "alpha" } },
  { name: "namespace-scoped key in another namespace", headers: () => [...bearer(k("alpha"), "/sandboxes/abc", "GET"), ["X-Request-Namespace", "team-beta"]], expected: { status: 403, message: forbidden("GET", "/sandboxes/abc") } },
  { name: "namespace-scoped key asking for every namespace", headers: () => [...bearer(k("alpha"), "/sandboxes/abc", "GET"), ["X-Request-Namespace", "*"]], expected: { status: 403, message: "invalid namespace" } },
  // A duplicated header never allows, whatever the copies say.
  { name: "Authorization twice, same admin key", headers: () => [["Authorization", `Bearer ${k("admin")}`], ["Authorization", `Bearer ${k("admin")}`], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: INVALID } },
  { name: "Authorization twice, reader then admin", headers: () => [["Authorization", `Bearer ${k("reader")}`], ["Authorization", `Bearer ${k("admin")}`], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "DELETE"]], expected: { status: 401, message: INVALID } },
  { name: "X-API-Key twice", headers: () => [["X-API-Key", k("admin")], ["x-api-key", k("admin")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: INVALID } },
  { name: "X-Request-Path twice", headers: () => [["Authorization", `Bearer ${k("reader")}`], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Path", "/templates/t1"], ["X-Request-Method", "GET"]], expected: { status: 403, message: /forbidden character/ } },
  { name: "X-Request-Method twice", headers: () => [["Authorization", `Bearer ${k("writer")}`], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"], ["X-Request-Method", "DELETE"]], expected: { status: 403, message: /^unknown HTTP method/ } },
  { name: "X-Request-Org twice", headers: () => [...bearer(k("reader"), "/sandboxes/abc", "GET"), ["X-Request-Org", "acme"], ["X-Request-Org", "globex"]], expected: { status: 403, message: "invalid org" } },
];

/** The default policy's roles: sandboxes are for writers, shared things (templates, volumes) for platform keys only. */
const ROLE_ROWS: Row[] = [
  { name: "writer opens the terminal (a GET, but a shell)", headers: () => bearer(k("writer"), "/sandboxes/abc/terminal/ws", "GET"), expected: { allow: "writer" } },
  { name: "reader may not open the terminal", headers: () => bearer(k("reader"), "/sandboxes/abc/terminal/ws", "GET"), expected: { status: 403, message: forbidden("GET", "/sandboxes/abc/terminal/ws") } },
  { name: "writer forks a sandbox", headers: () => apiKey(k("writer"), "/sandboxes/abc/fork", "POST"), expected: { allow: "writer" } },
  { name: "writer may not create a template", headers: () => bearer(k("writer"), "/templates", "POST"), expected: { status: 403, message: forbidden("POST", "/templates") } },
  { name: "admin may not delete a template (every org shares it)", headers: () => bearer(k("admin"), "/templates/t1", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/templates/t1") } },
  { name: "admin may not delete a volume", headers: () => bearer(k("admin"), "/volumes/v1", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/volumes/v1") } },
  { name: "admin on a path no route serves", headers: () => bearer(k("admin"), "/anything/at/all", "GET"), expected: { status: 403, message: forbidden("GET", "/anything/at/all") } },
  { name: "platform deletes a template", headers: () => bearer(k("platform"), "/templates/t1", "DELETE"), expected: { allow: "platform" } },
  { name: "platform writes volume content", headers: () => apiKey(k("platform"), "/volumecontent/v1/file", "PUT"), expected: { allow: "platform" } },
  { name: "platform may not kill a sandbox", headers: () => bearer(k("platform"), "/sandboxes/abc", "DELETE"), expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  // Cube serves every route under /cubeapi/v1 too; the same rules decide (policies/routes.yaml).
  { name: "writer opens the terminal under /cubeapi/v1", headers: () => bearer(k("writer"), "/cubeapi/v1/sandboxes/abc/terminal/ws", "GET"), expected: { allow: "writer" } },
  { name: "reader may not open the terminal under /cubeapi/v1", headers: () => bearer(k("reader"), "/cubeapi/v1/sandboxes/abc/terminal/ws", "GET"), expected: { status: 403, message: /^API key is not allowed to GET (\/cubeapi\/v1)?\/sandboxes\/abc\/terminal\/ws$/ } },
  { name: "admin may not delete a template under /cubeapi/v1", headers: () => bearer(k("admin"), "/cubeapi/v1/templates/t1", "DELETE"), expected: { status: 403, message: /^API key is not allowed to DELETE (\/cubeapi\/v1)?\/templates\/t1$/ } },
  { name: "platform deletes a template under /cubeapi/v1", headers: () => bearer(k("platform"), "/cubeapi/v1/templates/t1", "DELETE"), expected: { allow: "platform" } },
];

/** Cube's order: Authorization: Bearer wins over X-API-Key, with no fallback when it is wrong. */
const CUBE_PRIORITY: Row[] = [
  { name: "Bearer admin + X-API-Key reader → admin", headers: () => [["Authorization", `Bearer ${k("admin")}`], ["X-API-Key", k("reader")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "DELETE"]], expected: { allow: "admin" } },
  { name: "Bearer reader + X-API-Key admin → reader", headers: () => [["Authorization", `Bearer ${k("reader")}`], ["X-API-Key", k("admin")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "DELETE"]], expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "a wrong Bearer does not fall back to a good X-API-Key", headers: () => [["Authorization", `Bearer ${UNKNOWN_KEY}`], ["X-API-Key", k("admin")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: INVALID } },
  { name: "a revoked Bearer does not fall back to a good X-API-Key", headers: () => [["Authorization", `Bearer ${k("revoked")}`], ["X-API-Key", k("admin")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: "API key has been revoked" } },
  { name: "Authorization: Basic is skipped for X-API-Key", headers: () => [["Authorization", "Basic dXNlcjpwYXNz"], ["X-API-Key", k("reader")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { allow: "reader" } },
];

/** --credential-priority x-api-key,authorization (SandBase's order). */
const FLIPPED_PRIORITY: Row[] = [
  { name: "Bearer admin + X-API-Key reader → reader", headers: () => [["Authorization", `Bearer ${k("admin")}`], ["X-API-Key", k("reader")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "DELETE"]], expected: { status: 403, message: forbidden("DELETE", "/sandboxes/abc") } },
  { name: "Bearer reader + X-API-Key admin → admin", headers: () => [["Authorization", `Bearer ${k("reader")}`], ["X-API-Key", k("admin")], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "DELETE"]], expected: { allow: "admin" } },
  { name: "a wrong X-API-Key does not fall back to a good Bearer", headers: () => [["Authorization", `Bearer ${k("admin")}`], ["X-API-Key", UNKNOWN_KEY], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]], expected: { status: 401, message: INVALID } },
  { name: "Bearer alone still works", headers: () => bearer(k("writer"), "/sandboxes/abc", "DELETE"), expected: { allow: "writer" } },
];

const TARGETS: [string, () => string][] = [
  ["keygate serve /verify", () => server!.url],
  ["keygate shim → serve over gRPC", () => shim!.url],
];

describe.each(TARGETS)("%s", (_, url) => {
  describe("the reason table", () => {
    it.each(REASONS)("$name", async ({ headers, expected }) => {
      expectDecision(await cubeRequest(url(), headers()), expected);
    });
  });

  describe("bypass attempts and request tricks", () => {
    it.each(SECURITY)("$name", async ({ headers, expected }) => {
      expectDecision(await cubeRequest(url(), headers()), expected);
    });
  });

  describe("roles: sandboxes for writers, shared things for platform keys", () => {
    it.each(ROLE_ROWS)("$name", async ({ headers, expected }) => {
      expectDecision(await cubeRequest(url(), headers()), expected);
    });
  });

  describe("credential priority, Cube's order by default", () => {
    it.each(CUBE_PRIORITY)("$name", async ({ headers, expected }) => {
      expectDecision(await cubeRequest(url(), headers()), expected);
    });
  });

  it("accepts Cube's request with or without Content-Length: 0, and nginx's GET", async () => {
    const headers = bearer(k("reader"), "/sandboxes/abc", "GET");
    expectDecision(await cubeRequest(url(), headers), { allow: "reader" });
    expectDecision(await cubeRequest(url(), [...headers, ["Content-Length", "0"]]), { allow: "reader" });
    expectDecision(await cubeRequest(url(), headers, { method: "GET" }), { allow: "reader" });
  });

  it("X-User-ID and X-User-Name as Cube keeps them: visible ASCII, the name percent-encoded where it must be", async () => {
    const response = await cubeRequest(url(), apiKey(k("named"), "/sandboxes/abc", "GET"));
    expectDecision(response, { allow: "named" });
    expect(response.headers["x-user-name"]).toBe("%20Zo%C3%AB's 50%25 %E2%98%83 key");
    expect(decodeURIComponent(response.headers["x-user-name"]!)).toBe(NAMED);
    // The same through an ordinary HTTP client (undici): one of each, nothing split off.
    const fetched = await fetch(`${url()}/verify`, { method: "POST", headers: { "X-API-Key": k("named"), "X-Request-Path": "/sandboxes/abc", "X-Request-Method": "GET" } });
    expect(fetched.status).toBe(200);
    expect([...fetched.headers.keys()].filter((h) => h.startsWith("x-user") || h === "x-auth-user").sort()).toEqual(["x-auth-user", "x-user-id", "x-user-name"]);
    expect([fetched.headers.get("x-user-id"), decodeURIComponent(fetched.headers.get("x-user-name")!)]).toEqual([keys.named.id, NAMED]);
  });

  it("never allows through another method on the callback", async () => {
    for (const method of ["PUT", "DELETE", "PATCH"]) {
      const response = await cubeRequest(url(), bearer(k("admin"), "/sandboxes/abc", "GET"), { method });
      expect(response.status).not.toBe(200);
      expect(response.headers["x-auth-user"]).toBeUndefined();
    }
  });
});

describe("keygate shim --credential-priority x-api-key,authorization", () => {
  it.each(FLIPPED_PRIORITY)("$name", async ({ headers, expected }) => {
    expectDecision(await cubeRequest(shimFlipped!.url, headers()), expected);
  });
});

describe("usage", () => {
  it("decisions through the shim show in `keys get --json`, read through the running server", async () => {
    const cli = { cwd: data.dir, env };
    const used = await createKey(["--org", "acme", "--role", "reader", "--name", "usage"], cli);
    for (let i = 0; i < 3; i++) expect((await cubeRequest(shim!.url, bearer(used.key, "/sandboxes", "GET"))).headers["x-auth-user"]).toBe(used.id);
    for (let i = 0; i < 2; i++) expect((await cubeRequest(shim!.url, bearer(used.key, "/sandboxes", "POST"))).status).toBe(403);
    // The server merges the counts it has not written yet.
    const got = await runCli(["keys", "get", used.id, "--json", "--server", server!.url], { ...cli, env: { ...env, KEYGATE_API_KEY: keys.admin.key } });
    expect(got.code, got.stderr).toBe(0);
    const shown = JSON.parse(got.stdout) as { usage: { day: string; allowed: number; denied: number }[]; requests_allowed_7d: number; requests_denied_7d: number };
    expect(shown.usage).toEqual([{ day: new Date().toISOString().slice(0, 10), allowed: 3, denied: 2 }]);
    expect([shown.requests_allowed_7d, shown.requests_denied_7d]).toEqual([3, 2]);
  });
});

describe("when the keygate behind the shim is stopped", () => {
  beforeAll(async () => {
    expect(await server!.stop()).toBe(0);
  });

  it.each<[string, () => RawHeaders]>([
    ["an admin key, every method", () => bearer(k("admin"), "/sandboxes/abc")],
    ["an admin key", () => bearer(k("admin"), "/sandboxes/abc", "DELETE")],
    ["a reader key", () => apiKey(k("reader"), "/sandboxes/abc", "GET")],
    ["an unknown key", () => bearer(UNKNOWN_KEY, "/sandboxes/abc", "GET")],
  ])("%s → 503 JSON, never 200", async (_, headers) => {
    for (const target of [shim!, shimFlipped!]) {
      expectDecision(await cubeRequest(target.url, headers()), { status: 503, message: /unavailable.*denied/ });
    }
  });

  describe("keygate serve --credential-priority x-api-key,authorization (same data, restarted)", () => {
    beforeAll(async () => {
      flippedServer = await startServerProcess(["--credential-priority", "x-api-key,authorization"], { cwd: data.dir, env });
    });

    it.each(FLIPPED_PRIORITY)("$name", async ({ headers, expected }) => {
      expectDecision(await cubeRequest(flippedServer!.url, headers()), expected);
    });

    it("the shim answers again once the upstream is back", async () => {
      // The shims still point at the old port: they keep failing closed.
      expectDecision(await cubeRequest(shim!.url, bearer(k("admin"), "/sandboxes/abc", "GET")), { status: 503, message: /unavailable/ });
      const again = await startShimProcess(flippedServer!.url, [], { cwd: data.dir, env });
      try {
        expectDecision(await cubeRequest(again.url, bearer(k("admin"), "/sandboxes/abc", "GET")), { allow: "admin" });
      } finally {
        expect(await again.stop()).toBe(0);
      }
    });
  });
});
