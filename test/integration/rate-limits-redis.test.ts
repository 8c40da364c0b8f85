import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRateLimiter, type HealthLog, type RateLimiter } from "../../src/core/ratelimit/rate-limiter.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { startTestRedis, type TestRedis } from "../support/redis-server.js";
import { asKey, check, createCore, createKey, LOCAL, unwrap, type Core } from "./test-core.js";

/**
 * Shared budgets through Redis, in process: two keygate cores over one
 * database (as two instances would be), each with its own limiter and its
 * own Redis connection. Runs on PGlite too, where two server processes
 * cannot share a data dir. The redis-server is this test's own.
 */

let database: TestDatabase;
let redis: TestRedis;
const cores: Core[] = [];
const limiters: RateLimiter[] = [];

interface LogLine {
  level: "warn" | "info";
  message: string;
}

function recordingLog(): HealthLog & { lines: LogLine[] } {
  const lines: LogLine[] = [];
  return { lines, warn: (message) => void lines.push({ level: "warn", message }), info: (message) => void lines.push({ level: "info", message }) };
}

async function coreWith(limiter: RateLimiter): Promise<Core> {
  limiters.push(limiter);
  // As serve does: wait for the first connection, so counting starts in Redis.
  await limiter.health();
  const core = await createCore(database.store.db, { rateLimiter: limiter });
  cores.push(core);
  return core;
}

const get = (c: Core, key: string) => check(c, key, "GET", "/sandboxes");

beforeAll(async () => {
  database = await createTestDatabase();
  redis = await startTestRedis();
});

afterAll(async () => {
  await Promise.allSettled(cores.map((c) => c.close()));
  await redis?.dispose();
  await database?.dispose();
});

async function waitFor(condition: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > until) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("two instances", () => {
  it("on the same Redis share one key's budget; keys still have budgets of their own", async () => {
    const keyPrefix = `t-${randomBytes(4).toString("hex")}`;
    const one = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix }));
    const two = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix }));
    const made = await createKey(one, { org: "acme", roles: ["reader"], rateLimit: "4/1h" });
    const other = await createKey(one, { org: "acme", roles: ["reader"], rateLimit: "4/1h" });
    expect(await get(one, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 3 } });
    expect(await get(two, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 2 } });
    expect(await get(one, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 1 } });
    expect(await get(two, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 0 } });
    expect(await get(one, made.plaintext)).toMatchObject({ allowed: false, reason: "rate_limited" });
    expect(await get(two, made.plaintext)).toMatchObject({ allowed: false, reason: "rate_limited" });
    expect(await get(two, other.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 3 } });
    expect(await one.rateLimiter.health()).toMatchObject({ backend: "redis", shared: true, unreachableSince: null });
  });

  it("without Redis each keeps its own count", async () => {
    const one = await coreWith(createRateLimiter());
    const two = await coreWith(createRateLimiter());
    const made = await createKey(one, { org: "acme", roles: ["reader"], rateLimit: "2/1h" });
    expect(await get(one, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 1 } });
    expect(await get(two, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 1 } });
    expect(await one.rateLimiter.health()).toMatchObject({ backend: "memory", shared: false });
  });
});

describe("shared budgets (rate-limit-budgets.test.ts) across instances", () => {
  it("a 10/1m admin that used its budget on one instance gets 0 calls through five children on another (was 50)", async () => {
    const keyPrefix = `t-${randomBytes(4).toString("hex")}`;
    const one = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix }));
    const two = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix }));
    const admin = await createKey(one, { org: "acme", roles: ["admin"], rateLimit: "10/1m" });
    for (let i = 0; i < 10; i++) expect(await get(one, admin.plaintext)).toMatchObject({ allowed: true });
    const children = [];
    for (let i = 0; i < 5; i++) children.push(unwrap(await one.keys.create(asKey(admin.key), { roles: ["reader"] })));
    let allowed = 0;
    for (const child of children) for (let i = 0; i < 10; i++) if ((await get(two, child.plaintext)).allowed) allowed++;
    expect(allowed).toBe(0);
  });

  it("a rotated key shares its predecessor's budget; a child over its own limit gives its creator's points back", async () => {
    const keyPrefix = `t-${randomBytes(4).toString("hex")}`;
    const one = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix }));
    const two = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix }));
    const old = await createKey(one, { org: "acme", roles: ["admin"], rateLimit: "5/1h" });
    expect(await get(one, old.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 4 } });
    const rotated = unwrap(await one.keys.rotate(LOCAL, old.key.id, "1h"));
    expect(await get(two, rotated.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 3 } });
    const child = unwrap(await one.keys.create(asKey(rotated.key), { roles: ["reader"], rateLimit: "1/1h" }));
    for (let i = 0; i < 10; i++) await get(two, child.plaintext);
    expect(await get(one, old.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 5, remaining: 1 } });
  });
});

describe("Redis lost and back", () => {
  it("decisions go on with per-instance limits, without waiting; logged once; recovered by itself", async () => {
    const log = recordingLog();
    const keyPrefix = `t-${randomBytes(4).toString("hex")}`;
    const core = await coreWith(createRateLimiter({ redisUrl: redis.url, keyPrefix, log }));
    const made = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "3/1h" });
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 2 } });

    await redis.stop();
    // Per-instance limits from the first request on: the insurance limiter counts afresh.
    const started = performance.now();
    const decisions = [];
    for (let i = 0; i < 4; i++) decisions.push(await get(core, made.plaintext));
    const perDecisionMs = (performance.now() - started) / 4;
    expect(decisions.map((d) => d.reason)).toEqual(["allowed", "allowed", "allowed", "rate_limited"]);
    expect(perDecisionMs).toBeLessThan(60);
    for (let i = 0; i < 20; i++) await get(core, made.plaintext);

    const health = await core.rateLimiter.health();
    expect(health).toMatchObject({ backend: "redis", shared: false });
    expect(health.unreachableSince).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(log.lines.filter((l) => l.level === "warn")).toEqual([{ level: "warn", message: "rate limits: redis unreachable, using per-instance limits" }]);

    await redis.restart();
    await waitFor(async () => (await core.rateLimiter.health()).shared);
    expect(log.lines.at(-1)).toEqual({ level: "info", message: "rate limits: redis reachable again, limits shared" });
    // Redis restarted empty (no persistence): a fresh shared budget.
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 2 } });
    expect(log.lines.filter((l) => l.level === "warn")).toHaveLength(1);
  });

  it("a Redis that is down from the start never blocks a decision", async () => {
    const log = recordingLog();
    const core = await coreWith(createRateLimiter({ redisUrl: "redis://127.0.0.1:1", log }));
    const made = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "1/1h" });
    expect(await get(core, made.plaintext)).toMatchObject({ allowed: true, rateLimit: { remaining: 0 } });
    expect(await get(core, made.plaintext)).toMatchObject({ reason: "rate_limited" });
    expect(await core.rateLimiter.health()).toMatchObject({ shared: false });
    expect(log.lines.filter((l) => l.level === "warn")).toHaveLength(1);
  });
});
