import { BlockList } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LISTENER_LIMITS, readRuntimeConfig } from "../../src/config/config.js";
import { AUTH_FAIL_MESSAGE } from "../../src/core/authorize/failed-auth-guard.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { createListener, type Listener } from "../../src/http/listener.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { createRequestHandler } from "../../src/server/serve.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { createTestStoreTarget } from "../support/database.js";
import { HOUR, LOCAL, POLICY_DIR, unwrap } from "./test-core.js";

/**
 * Issue 14, item 7: the failed-auth guard decides before any database work,
 * on every entry that takes a credential. Each entry gets its own address
 * (X-Forwarded-For, believed from loopback); after 2 × SOFT invalid keys
 * from it, a further well-formed unknown key is refused and costs no key
 * lookup in the database (keygate_key_lookup_duration_seconds counts every
 * one), while a valid key the cache knows still works from that address.
 * Before the fix, Authorize and the gateways looked the guess up first, and
 * ManageKey, audit and resources had no guard at all.
 */

const SOFT = 3;
const HARD = 2 * SOFT;
const silent = createLogger("error", () => {});
const loopback = new BlockList();
loopback.addSubnet("127.0.0.0", 8);
loopback.addAddress("::1", "ipv6");

let runtime: Runtime;
let drop: () => Promise<void>;
let listener: Listener;
let base: string;
let admin: string;

beforeAll(async () => {
  const read = readRuntimeConfig({ "policy-dir": POLICY_DIR }, { KEYGATE_AUTH_FAIL_LIMIT: `${SOFT}/1h`, KEYGATE_AUTH_GUARD_EXEMPT: "none" }, process.cwd());
  if (!read.ok) throw new Error(read.errors.join("; "));
  const store = await createTestStoreTarget();
  drop = store.drop;
  runtime = await openRuntime({ ...read.config, usageFlushMs: HOUR, metrics: true }, { storeTarget: store.target, sleep: async () => {} });
  admin = unwrap(await runtime.keys.create(LOCAL, { org: "acme", roles: ["admin"], name: "guarded-admin" })).plaintext;
  const handler = createRequestHandler(
    { credentialPriority: ["authorization", "x-api-key"], clientIp: { header: "x-forwarded-for", trusted: loopback }, shimPath: "/verify", directAuthorize: true },
    runtime,
    silent,
  );
  listener = createListener(handler, DEFAULT_LISTENER_LIMITS);
  base = `http://127.0.0.1:${(await listener.listen(0, "127.0.0.1")).port}`;
});

afterAll(async () => {
  await listener?.close(1_000);
  await runtime?.close();
  await drop?.();
});

/** Key lookups that reached the database so far. */
async function databaseLookups(): Promise<number> {
  const text = await runtime.metrics!.render();
  const line = text.split("\n").find((l) => l.startsWith("keygate_key_lookup_duration_seconds_count"));
  return Number(line?.split(" ").pop() ?? 0);
}

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

type Entry = (credential: string, from: string) => Promise<Answer>;

async function send(path: string, from: string, headers: Record<string, string>, body?: object): Promise<Answer> {
  const response = await fetch(base + path, {
    method: "POST",
    headers: { "x-forwarded-for": from, ...(body && { "content-type": "application/json" }), ...headers },
    ...(body && { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: text.startsWith("{") ? (JSON.parse(text) as Record<string, unknown>) : { text } };
}

const rpc =
  (path: string, message: object): Entry =>
  (credential, from) =>
    send(path, from, { authorization: `Bearer ${credential}` }, message);

/** What each entry answers: [invalid key, refused, allowed] as a check on the answer. */
const ENTRIES: [string, Entry, (a: Answer) => string][] = [
  [
    "Authorize (Connect)",
    (credential, from) => send("/keygate.v1.AuthorizeService/Authorize", from, {}, { credential, path: "/sandboxes", method: "GET" }),
    (a) => (a.body.allowed ? "allowed" : a.body.reason === "REASON_RATE_LIMITED" && a.body.message === AUTH_FAIL_MESSAGE ? "refused" : String(a.body.reason)),
  ],
  [
    "Cube callback",
    (credential, from) => send("/verify", from, { authorization: `Bearer ${credential}`, "x-request-path": "/sandboxes", "x-request-method": "GET" }),
    httpAnswer,
  ],
  ["nginx auth_request", (credential, from) => send("/auth/nginx", from, { "x-api-key": credential, "x-original-uri": "/sandboxes", "x-original-method": "GET" }), httpAnswer],
  ["Traefik forwardAuth", (credential, from) => send("/auth/traefik", from, { "x-api-key": credential, "x-forwarded-uri": "/sandboxes", "x-forwarded-method": "GET" }), httpAnswer],
  ["ManageKey", rpc("/keygate.v1.KeyService/ManageKey", { list: {} }), rpcAnswer],
  ["AuditService", rpc("/keygate.v1.AuditService/ListAuditEvents", {}), rpcAnswer],
  ["ResourceService", rpc("/keygate.v1.ResourceService/List", {}), rpcAnswer],
];

function httpAnswer(a: Answer): string {
  if (a.status === 200) return "allowed";
  if (a.status === 429) return "refused";
  return a.status === 401 ? "invalid" : `status ${a.status}`;
}

function rpcAnswer(a: Answer): string {
  if (a.status === 200) return "allowed";
  if (a.body.code === "resource_exhausted" && a.body.message === AUTH_FAIL_MESSAGE) return "refused";
  return a.body.code === "unauthenticated" ? "invalid" : `${String(a.body.code)}: ${String(a.body.message)}`;
}

describe("the failed-auth guard decides before the key lookup, on every entry", () => {
  it.each(ENTRIES.map(([name, entry, outcome], i) => ({ name, entry, outcome, from: `198.51.100.${i + 1}` })))(
    "$name: past the limit, a guess costs no database lookup; a cached valid key still works",
    async ({ entry, outcome, from }) => {
      // The valid key is in the cache (decided once from elsewhere).
      expect(outcome(await entry(admin, "203.0.113.250"))).toBe("allowed");
      const answers: string[] = [];
      for (let i = 0; i < HARD; i++) answers.push(outcome(await entry(generateKey(), from)));
      expect(answers.filter((a) => a !== "invalid" && a !== "REASON_INVALID_KEY")).toEqual([]);
      const before = await databaseLookups();
      expect(outcome(await entry(generateKey(), from))).toBe("refused");
      expect(outcome(await entry(generateKey(), from))).toBe("refused");
      expect(await databaseLookups()).toBe(before);
      expect(outcome(await entry(admin, from))).toBe("allowed");
    },
  );
});
