import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MESSAGES } from "../../src/core/authorize/decision.js";
import type { RateLimiter } from "../../src/core/ratelimit/rate-limiter.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { asKey, check, createCore, createKey, LOCAL, unwrap, type Core } from "./test-core.js";

/**
 * Per-key rate limits (SandBase: "Each API key has its own rate limit
 * allocation. Rate limits are not shared across keys"). rate-limiter-flexible
 * keeps real time, so windows here are an hour long and the tests count
 * `remaining` instead of waiting for a window to pass.
 */

let database: TestDatabase;
let core: Core;
let defaulted: Core;

beforeAll(async () => {
  database = await createTestDatabase();
  core = await createCore(database.store.db);
  defaulted = await createCore(database.store.db, { clock: core.clock, defaultRateLimit: { points: 2, windowSeconds: 3600 } });
});

afterAll(async () => {
  await defaulted?.close();
  await core?.close();
  await database?.dispose();
});

const get = (c: Core, key: string) => check(c, key, "GET", "/sandboxes");

describe("a key's own limit", () => {
  it("allows N requests in the window, then denies with rate_limited and the status", async () => {
    const made = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "3/1h" });
    expect(made.key.rateLimit).toEqual({ points: 3, windowSeconds: 3600 });
    for (const remaining of [2, 1, 0]) {
      const decision = await get(core, made.plaintext);
      expect(decision).toMatchObject({ allowed: true, reason: "allowed", rateLimit: { limit: 3, remaining } });
      expect(decision.rateLimit!.resetSeconds).toBeGreaterThan(3590);
      expect(decision.rateLimit!.resetSeconds).toBeLessThanOrEqual(3600);
    }
    const denied = await get(core, made.plaintext);
    expect(denied).toMatchObject({ allowed: false, reason: "rate_limited", message: MESSAGES.rate_limited, key: { id: made.key.id }, rateLimit: { limit: 3, remaining: 0 } });
    expect(denied.message).toBe("rate limit exceeded");
    expect(denied.rateLimit!.resetSeconds).toBeGreaterThan(3590);
  });

  it("only requests the policy allows cost a point", async () => {
    const made = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "2/1h" });
    for (let i = 0; i < 5; i++) expect(await check(core, made.plaintext, "DELETE", "/sandboxes/x")).toMatchObject({ reason: "forbidden" });
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 1 } });
  });

  it("two keys never share a budget, even with the same limit", async () => {
    const a = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "2/1h" });
    const b = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "2/1h" });
    await get(core, a.plaintext);
    await get(core, a.plaintext);
    expect(await get(core, a.plaintext)).toMatchObject({ reason: "rate_limited" });
    expect(await get(core, b.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 2, remaining: 1 } });
    expect(await get(core, b.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 0 } });
  });

  it("a rotated key carries the limit over and shares its predecessor's budget (rate-limit-budgets.test.ts)", async () => {
    const old = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "2/1h" });
    expect(await get(core, old.plaintext)).toMatchObject({ allowed: true });
    const rotated = unwrap(await core.keys.rotate(LOCAL, old.key.id, ""));
    expect(rotated.key.rateLimit).toEqual({ points: 2, windowSeconds: 3600 });
    expect(await get(core, rotated.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 2, remaining: 0 } });
    expect(await get(core, rotated.plaintext)).toMatchObject({ reason: "rate_limited" });
  });
});

describe("keys without a limit", () => {
  it("are unlimited when the server has no default, and decisions carry no status", async () => {
    const made = await createKey(core, { org: "acme", roles: ["reader"] });
    expect(made.key.rateLimit).toBeNull();
    for (let i = 0; i < 50; i++) {
      const decision = await get(core, made.plaintext);
      expect(decision.allowed).toBe(true);
      expect(decision.rateLimit).toBeUndefined();
    }
  });

  it("get the server default when there is one; a key's own limit wins over it", async () => {
    const plain = await createKey(defaulted, { org: "acme", roles: ["reader"] });
    const own = await createKey(defaulted, { org: "acme", roles: ["reader"], rateLimit: "5/1h" });
    expect(await get(defaulted, plain.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 2, remaining: 1 } });
    expect(await get(defaulted, plain.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 2, remaining: 0 } });
    expect(await get(defaulted, plain.plaintext)).toMatchObject({ reason: "rate_limited", rateLimit: { limit: 2 } });
    expect(await get(defaulted, own.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 5, remaining: 4 } });
  });
});

describe("changing a limit", () => {
  it("takes effect at once: lowered, raised and removed", async () => {
    const made = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "100/1h" });
    for (let i = 0; i < 3; i++) await get(core, made.plaintext);
    expect(await get(core, made.plaintext)).toMatchObject({ rateLimit: { limit: 100, remaining: 96 } });

    const lowered = unwrap(await core.keys.update(LOCAL, { id: made.key.id, rateLimit: "2/1m" }));
    expect(lowered.rateLimit).toEqual({ points: 2, windowSeconds: 60 });
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 2, remaining: 1 } });
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 2, remaining: 0 } });
    expect(await get(core, made.plaintext)).toMatchObject({ reason: "rate_limited" });

    unwrap(await core.keys.update(LOCAL, { id: made.key.id, rateLimit: "10/1m" }));
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 10, remaining: 9 } });

    const removed = unwrap(await core.keys.update(LOCAL, { id: made.key.id, rateLimit: null }));
    expect(removed.rateLimit).toBeNull();
    const free = await get(core, made.plaintext);
    expect(free.allowed).toBe(true);
    expect(free.rateLimit).toBeUndefined();
    expect(unwrap(await core.keys.get(LOCAL, made.key.id)).rateLimit).toBeNull();
  });

  it.each(["0/1s", "100", "10/0s", "5/1fortnight", "5/30d"])("refuses %j, naming it", async (text) => {
    const made = await createKey(core, { org: "acme", roles: ["reader"] });
    const update = await core.keys.update(LOCAL, { id: made.key.id, rateLimit: text });
    expect(update).toMatchObject({ ok: false, code: "invalid_argument" });
    expect(!update.ok && update.message).toContain(`invalid rate limit "${text}"`);
    const created = await core.keys.create(LOCAL, { org: "acme", rateLimit: text });
    expect(created).toMatchObject({ ok: false, code: "invalid_argument" });
  });
});

describe("no escalation: a limited key caller", () => {
  let limitedAdmin: Awaited<ReturnType<typeof createKey>>;
  let freeAdmin: Awaited<ReturnType<typeof createKey>>;

  beforeAll(async () => {
    limitedAdmin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "10/1m" });
    freeAdmin = await createKey(core, { org: "acme", roles: ["admin"] });
  });

  it("gives new keys its own limit by default", async () => {
    const child = unwrap(await core.keys.create(asKey(limitedAdmin.key), { roles: ["reader"] }));
    expect(child.key.rateLimit).toEqual({ points: 10, windowSeconds: 60 });
  });

  it.each([
    ["100/1s", /higher than its own/],
    ["11/1m", /higher than its own/],
    ["601/1h", /higher than its own/],
    ["1/1s", /higher than its own/],
  ])("cannot create a key with %s", async (text, why) => {
    const result = await core.keys.create(asKey(limitedAdmin.key), { roles: ["reader"], rateLimit: text });
    expect(result).toMatchObject({ ok: false, code: "permission_denied" });
    expect(!result.ok && result.message).toMatch(why);
  });

  it.each(["10/1m", "600/1h", "1/6s", "1/1d"])("may create a key with %s (no more requests per second)", async (text) => {
    unwrap(await core.keys.create(asKey(limitedAdmin.key), { roles: ["reader"], rateLimit: text }));
  });

  it("cannot update a key to no limit or a higher rate; may lower it", async () => {
    const child = unwrap(await core.keys.create(asKey(limitedAdmin.key), { roles: ["reader"], rateLimit: "5/1m" }));
    const removed = await core.keys.update(asKey(limitedAdmin.key), { id: child.key.id, rateLimit: null });
    expect(removed).toMatchObject({ ok: false, code: "permission_denied" });
    expect(!removed.ok && removed.message).toMatch(/may not grant a key without one/);
    expect(await core.keys.update(asKey(limitedAdmin.key), { id: child.key.id, rateLimit: "20/1m" })).toMatchObject({ ok: false, code: "permission_denied" });
    expect(unwrap(await core.keys.update(asKey(limitedAdmin.key), { id: child.key.id, rateLimit: "1/1m" })).rateLimit).toEqual({ points: 1, windowSeconds: 60 });
  });

  it("cannot manage an unlimited key at all (it would act on more power than it holds)", async () => {
    const free = await createKey(core, { org: "acme", roles: ["reader"] });
    expect(await core.keys.update(asKey(limitedAdmin.key), { id: free.key.id, name: "x" })).toMatchObject({ ok: false, code: "permission_denied" });
    expect(await core.keys.rotate(asKey(limitedAdmin.key), free.key.id, "")).toMatchObject({ ok: false, code: "permission_denied" });
  });

  it("an unlimited key caller may grant any limit or none", async () => {
    unwrap(await core.keys.create(asKey(freeAdmin.key), { roles: ["reader"], rateLimit: "1000000/1s" }));
    const child = unwrap(await core.keys.create(asKey(freeAdmin.key), { roles: ["reader"] }));
    expect(child.key.rateLimit).toBeNull();
  });
});

describe("a limiter that fails", () => {
  it("denies as unavailable (fail closed), never allows", async () => {
    const broken: RateLimiter = {
      consume: () => Promise.reject(new Error("limiter exploded")),
      consumeAll: () => Promise.reject(new Error("limiter exploded")),
      peek: () => Promise.reject(new Error("limiter exploded")),
      health: async () => ({ backend: "memory", shared: false, unreachableSince: null, lastError: null }),
      close: async () => {},
    };
    const failing = await createCore(database.store.db, { rateLimiter: broken });
    try {
      const made = await createKey(failing, { org: "acme", roles: ["reader"], rateLimit: "5/1h" });
      expect(await get(failing, made.plaintext)).toMatchObject({ allowed: false, reason: "unavailable" });
      expect(failing.errors).toHaveLength(1);
    } finally {
      await failing.close();
    }
  });
});
