import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Reason } from "../../src/core/authorize/decision.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import type { Policy } from "../../src/core/policy/policy.js";
import type { PolicyRequest } from "../../src/core/policy/policy-request.js";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "../support/database.js";
import { check, createCore, createKey, HOUR, LOCAL, realPolicy, ruleLine, unwrap, type Core } from "./test-core.js";

/**
 * Authorize against the real default policy and a real key store: one row
 * per line of SPEC's reason table, and the request-shape rules from its
 * security section.
 */

const ALIASES = ["admin", "writer", "reader", "platform", "alphaWriter", "revoked", "expired"] as const;
type Alias = (typeof ALIASES)[number];

let database: TestDatabase;
let core: Core;
let devCore: Core;
const plaintext = {} as Record<Alias, string>;
const ids = {} as Record<Alias, string>;
/** Every policy question the core asked, newest last. */
const decided: PolicyRequest[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  const real = await realPolicy();
  const recording: Policy = { ...real, decide: (request) => (decided.push(request), real.decide(request)) };
  core = await createCore(database.store.db, { policy: recording });
  devCore = await createCore(database.store.db, { dev: true, clock: core.clock });

  const made = {
    admin: await createKey(core, { name: "admin", org: "acme", roles: ["admin"] }),
    writer: await createKey(core, { name: "writer", org: "acme", roles: ["writer"] }),
    reader: await createKey(core, { name: "reader", org: "acme", roles: ["reader"] }),
    platform: await createKey(core, { name: "platform", org: "acme", roles: ["platform"] }),
    alphaWriter: await createKey(core, { name: "alpha", org: "acme", namespace: "team-alpha", roles: ["writer"] }),
    revoked: await createKey(core, { name: "revoked", org: "acme", roles: ["admin"] }),
    expired: await createKey(core, { name: "expired", org: "acme", roles: ["admin"], expiry: { kind: "in", duration: "1h" } }),
  };
  for (const alias of ALIASES) {
    plaintext[alias] = made[alias].plaintext;
    ids[alias] = made[alias].key.id;
  }
  unwrap(await core.keys.revoke(LOCAL, ids.revoked));
  core.clock.advance(2 * HOUR);
});

afterAll(async () => {
  await devCore?.close();
  await core?.close();
  await database?.dispose();
});

type Credential = Alias | { raw: string } | ((keys: Record<Alias, string>) => string);

interface Row {
  credential: Credential;
  method: string;
  path: string;
  namespace?: string;
  org?: string;
  allowed: boolean;
  reason: Reason;
  message?: string;
  /** The exact policy line, e.g. "p, reader, *, *, /sandboxes, ^(GET|HEAD)$". */
  rule?: string;
  /** The key the decision names (absent when no key was identified). */
  key?: Alias;
  /** The namespace the policy was asked about. */
  decidedIn?: string;
}

function credentialOf(credential: Credential): string {
  if (typeof credential === "string") return plaintext[credential];
  if (typeof credential === "function") return credential(plaintext);
  return credential.raw;
}

const forbidden = (method: string, path: string) => `API key is not allowed to ${method} ${path}`;
const READER_SANDBOXES = "p, reader, *, *, /sandboxes, ^(GET|HEAD)$";
const PLATFORM_TEMPLATE = "p, platform, *, *, /templates/:id, ^(POST|DELETE|PATCH)$";

const TABLE: [string, Row][] = [
  // --- missing credential
  ["no credential", { credential: { raw: "" }, method: "GET", path: "/sandboxes", allowed: false, reason: "missing_credential", message: "missing API key in Authorization header" }],

  // --- invalid key: unknown, malformed, wrong prefix or checksum
  ["a malformed key", { credential: { raw: "not-a-key" }, method: "GET", path: "/sandboxes", allowed: false, reason: "invalid_key", message: "invalid API key" }],
  ["a key still wearing its Bearer prefix", { credential: (k) => `Bearer ${k.writer}`, method: "GET", path: "/sandboxes", allowed: false, reason: "invalid_key", message: "invalid API key" }],
  ["a real key with another prefix", { credential: (k) => `pk-sb-${k.writer.slice(6)}`, method: "GET", path: "/sandboxes", allowed: false, reason: "invalid_key", message: "invalid API key" }],
  ["a real key with one character changed (checksum)", { credential: (k) => k.writer.slice(0, 10) + (k.writer[10] === "A" ? "B" : "A") + k.writer.slice(11), method: "GET", path: "/sandboxes", allowed: false, reason: "invalid_key", message: "invalid API key" }],
  ["an unknown well-formed key", { credential: () => generateKey(), method: "GET", path: "/sandboxes", allowed: false, reason: "invalid_key", message: "invalid API key" }],
  ["a 10,000-character credential", { credential: { raw: "sk-sb-" + "a".repeat(10_000) }, method: "GET", path: "/sandboxes", allowed: false, reason: "invalid_key", message: "invalid API key" }],

  // --- key state
  ["a revoked key", { credential: "revoked", method: "GET", path: "/sandboxes", allowed: false, reason: "revoked", message: "API key has been revoked", key: "revoked" }],
  ["an expired key (the clock passed its expiry)", { credential: "expired", method: "GET", path: "/sandboxes", allowed: false, reason: "expired", message: "API key has expired", key: "expired" }],

  // --- org hint
  ["the wrong org hint", { credential: "writer", method: "GET", path: "/sandboxes", org: "globex", allowed: false, reason: "forbidden", message: forbidden("GET", "/sandboxes"), key: "writer" }],
  ["the right org hint", { credential: "writer", method: "GET", path: "/sandboxes", org: "acme", allowed: true, reason: "allowed", rule: READER_SANDBOXES, key: "writer" }],
  ["an admin with the wrong org hint", { credential: "admin", method: "GET", path: "/sandboxes", org: "globex", allowed: false, reason: "forbidden", message: forbidden("GET", "/sandboxes"), key: "admin" }],

  // --- namespaces
  ["a team-alpha key asked about team-beta", { credential: "alphaWriter", method: "POST", path: "/sandboxes", namespace: "team-beta", allowed: false, reason: "forbidden", message: forbidden("POST", "/sandboxes"), key: "alphaWriter" }],
  ["a team-alpha key asked with no namespace (its own is used)", { credential: "alphaWriter", method: "POST", path: "/sandboxes", allowed: true, reason: "allowed", rule: "p, writer, *, *, /sandboxes, ^POST$", key: "alphaWriter", decidedIn: "team-alpha" }],
  ["a team-alpha key asked about team-alpha", { credential: "alphaWriter", method: "POST", path: "/sandboxes", namespace: "team-alpha", allowed: true, reason: "allowed", rule: "p, writer, *, *, /sandboxes, ^POST$", decidedIn: "team-alpha" }],
  ["an all-namespaces key asked about team-beta", { credential: "writer", method: "POST", path: "/sandboxes", namespace: "team-beta", allowed: true, reason: "allowed", decidedIn: "team-beta" }],
  ['a request for namespace "*"', { credential: "admin", method: "GET", path: "/sandboxes", namespace: "*", allowed: false, reason: "bad_request", message: "invalid namespace" }],

  // --- the policy
  ["a reader deleting a template", { credential: "reader", method: "DELETE", path: "/templates/x", allowed: false, reason: "forbidden", message: "API key is not allowed to DELETE /templates/x", key: "reader" }],
  ["a writer deleting a template (shared by every org)", { credential: "writer", method: "DELETE", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("DELETE", "/templates/x"), key: "writer" }],
  ["an admin deleting a template (shared by every org)", { credential: "admin", method: "DELETE", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("DELETE", "/templates/x"), key: "admin" }],
  ["a platform key deleting a template", { credential: "platform", method: "DELETE", path: "/templates/x", allowed: true, reason: "allowed", rule: PLATFORM_TEMPLATE, key: "platform" }],
  ["a platform key killing a sandbox", { credential: "platform", method: "DELETE", path: "/sandboxes/s1", allowed: false, reason: "forbidden", message: forbidden("DELETE", "/sandboxes/s1"), key: "platform" }],
  ["a reader listing sandboxes", { credential: "reader", method: "GET", path: "/sandboxes", allowed: true, reason: "allowed", rule: READER_SANDBOXES, key: "reader" }],
  ["a writer reading a build status (inherited from reader)", { credential: "writer", method: "GET", path: "/templates/t1/builds/b1/status", allowed: true, reason: "allowed", rule: "p, reader, *, *, /templates/:id/builds/:buildID/status, ^(GET|HEAD)$" }],
  ["an admin on a path no route serves (no catch-all)", { credential: "admin", method: "PUT", path: "/anything/else", allowed: false, reason: "forbidden", message: forbidden("PUT", "/anything/else"), key: "admin" }],
  ["an admin pausing a sandbox (inherited from writer)", { credential: "admin", method: "POST", path: "/sandboxes/s1/pause", allowed: true, reason: "allowed", rule: "p, writer, *, *, /sandboxes/:id/pause, ^POST$", key: "admin" }],
  ["HEAD where only POST is allowed (HEAD is not implicitly GET)", { credential: "writer", method: "HEAD", path: "/sandboxes/s1/timeout", allowed: false, reason: "forbidden", message: forbidden("HEAD", "/sandboxes/s1/timeout") }],
  ["a writer on an unlisted path", { credential: "writer", method: "GET", path: "/admin/users", allowed: false, reason: "forbidden", message: forbidden("GET", "/admin/users") }],

  // --- bad requests (even for an admin key)
  ['a ".." segment', { credential: "admin", method: "GET", path: "/sandboxes/../keys", allowed: false, reason: "bad_request", message: 'path contains a ".." segment' }],
  ['an encoded ".." segment', { credential: "admin", method: "GET", path: "/sandboxes/%2e%2e/keys", allowed: false, reason: "bad_request", message: 'path contains a ".." segment' }],
  ["an encoded slash", { credential: "admin", method: "GET", path: "/templates/a%2Fb", allowed: false, reason: "bad_request", message: "path contains an encoded / or \\" }],
  ["an encoded backslash", { credential: "admin", method: "GET", path: "/templates/a%5cb", allowed: false, reason: "bad_request", message: "path contains an encoded / or \\" }],
  ["double encoding", { credential: "admin", method: "GET", path: "/templates/%252e%252e", allowed: false, reason: "bad_request", message: "path is percent-encoded twice" }],
  ["a ; path parameter", { credential: "admin", method: "GET", path: "/templates;a=b/x", allowed: false, reason: "bad_request" }],
  ["an encoded NUL", { credential: "admin", method: "GET", path: "/templates/a%00b", allowed: false, reason: "bad_request", message: "path contains a forbidden encoded character" }],
  ["a relative path", { credential: "admin", method: "GET", path: "templates", allowed: false, reason: "bad_request", message: 'path must start with "/"' }],
  ["an empty path", { credential: "admin", method: "GET", path: "", allowed: false, reason: "bad_request", message: "missing path" }],
  ["an unknown method", { credential: "admin", method: "TRACE", path: "/sandboxes", allowed: false, reason: "bad_request", message: 'unknown HTTP method "TRACE"' }],
  ["a made-up method", { credential: "admin", method: "BREW", path: "/sandboxes", allowed: false, reason: "bad_request", message: 'unknown HTTP method "BREW"' }],
  ["a method that only Unicode case mapping makes POST", { credential: "admin", method: "poſt", path: "/sandboxes", allowed: false, reason: "bad_request" }],
  ["an invalid org hint", { credential: "admin", method: "GET", path: "/sandboxes", org: "acme corp", allowed: false, reason: "bad_request", message: "invalid org" }],

  // --- paths are matched normalized, never with their query string
  ["a query string", { credential: "reader", method: "GET", path: "/sandboxes?next=/admin/../keys", allowed: true, reason: "allowed", rule: READER_SANDBOXES }],
  ["a query string cannot add a path", { credential: "reader", method: "GET", path: "/admin?/sandboxes", allowed: false, reason: "forbidden", message: forbidden("GET", "/admin") }],
  ["repeated and trailing slashes", { credential: "writer", method: "POST", path: "//sandboxes/", allowed: true, reason: "allowed", rule: "p, writer, *, *, /sandboxes, ^POST$" }],

  // --- no method (older Cube): every method must be allowed
  ["no method, admin (no default role has every method)", { credential: "admin", method: "", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("POST", "/templates/x") }],
  ["no method, platform", { credential: "platform", method: "", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("PUT", "/templates/x") }],
  ["no method, writer", { credential: "writer", method: "", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("POST", "/templates/x") }],
  ["no method, reader", { credential: "reader", method: "", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("POST", "/templates/x") }],

  // --- methods are case-insensitive
  ['"delete" for a platform key', { credential: "platform", method: "delete", path: "/templates/x", allowed: true, reason: "allowed", rule: PLATFORM_TEMPLATE }],
  ['"Post" for a writer', { credential: "writer", method: "Post", path: "/sandboxes", allowed: true, reason: "allowed" }],
  ['"delete" for a reader', { credential: "reader", method: "delete", path: "/templates/x", allowed: false, reason: "forbidden", message: forbidden("DELETE", "/templates/x") }],
];

describe(`Authorize on ${testDatabaseKind}`, () => {
  it.each(TABLE)("%s", async (_, row) => {
    const before = decided.length;
    const decision = await check(core, credentialOf(row.credential), row.method, row.path, { namespace: row.namespace ?? "", org: row.org ?? "" });

    expect(decision.allowed).toBe(row.allowed);
    expect(decision.reason).toBe(row.reason);
    if (row.message !== undefined) expect(decision.message).toBe(row.message);
    if (row.allowed) {
      expect(decision.message).toBe("");
      expect(decision.matchedRule).toMatch(/^policy\.csv:\d+$/);
      if (row.rule) expect(decision.matchedRule).toBe(ruleLine(row.rule));
    } else {
      expect(decision.matchedRule).toBe("");
      expect(decision.message).not.toBe("");
    }
    if (row.key) expect(decision.key).toEqual({ id: ids[row.key], name: row.key === "alphaWriter" ? "alpha" : row.key, org: "acme", namespace: row.key === "alphaWriter" ? "team-alpha" : "*", roles: expect.any(Array) });
    if (["missing_credential", "invalid_key", "bad_request"].includes(row.reason)) expect(decision.key).toBeUndefined();
    if (row.decidedIn) {
      const asked = decided.slice(before);
      expect(asked.length).toBeGreaterThan(0);
      expect(asked.every((request) => request.namespace === row.decidedIn)).toBe(true);
    }
    // A decision never carries a secret.
    const shown = JSON.stringify(decision);
    for (const alias of ALIASES) expect(shown).not.toContain(plaintext[alias].slice(10));
  });

  it("a request the shape rules refuse never reaches the key store or the policy", async () => {
    const before = decided.length;
    const decision = await check(core, plaintext.admin, "GET", "/sandboxes/../keys");
    expect(decision.reason).toBe("bad_request");
    expect(decided.length).toBe(before);
  });
});

describe("dev mode", () => {
  it.each<[string, string, string, string]>([
    ["no credential", "", "GET", "/sandboxes"],
    ["a made-up key", "not-a-key", "DELETE", "/templates/x"],
    ["an unknown method and a traversal", "whatever", "TRACE", "/sandboxes/../keys"],
  ])("allows %s, and says it is dev mode", async (_, credential, method, path) => {
    const decision = await check(devCore, credential, method, path);
    expect(decision).toMatchObject({ allowed: true, reason: "allowed", message: "dev mode: every request is allowed" });
  });

  it("allows revoked and expired keys", async () => {
    expect((await check(devCore, plaintext.revoked, "POST", "/sandboxes")).allowed).toBe(true);
    expect((await check(devCore, plaintext.expired, "POST", "/sandboxes")).allowed).toBe(true);
    // The same keys, same store, outside dev mode:
    expect((await check(core, plaintext.revoked, "POST", "/sandboxes")).reason).toBe("revoked");
  });
});
