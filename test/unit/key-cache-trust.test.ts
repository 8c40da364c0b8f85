import { Kysely, PostgresAdapter, PostgresIntrospector, PostgresQueryCompiler, type DatabaseConnection, type Driver } from "kysely";
import { describe, expect, it } from "vitest";
import type { ApiKeyRow, Database } from "../../src/core/db/schema.js";
import { createKeyCache, type KeyCache } from "../../src/core/keys/key-cache.js";
import { DEFAULT_KEY_PREFIX, generateKey } from "../../src/core/keys/key-format.js";
import { createKeyLookup, KeyLookupTimeoutError } from "../../src/core/keys/key-lookup.js";
import type { KeyRecord } from "../../src/core/keys/key-record.js";
import { toRecord } from "../../src/core/keys/key.repository.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { listenForKeyChanges } from "../../src/server/key-change-listener.js";

/**
 * The key cache is only as good as its change feed (Postgres LISTEN): while
 * the feed is down a revoke made elsewhere would go unheard, so the cache
 * serves and keeps nothing until the feed is back, and starts empty then.
 * A database that stops answering fails a lookup promptly (the decision is
 * then "unavailable"), rather than holding it.
 */

let clock = 0;
const newCache = () => createKeyCache({ ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 100, now: () => clock });

/** An api_keys row as the database would return it. */
function row(id: string, enabled: boolean): ApiKeyRow {
  const at = new Date(0);
  return {
    id,
    name: id,
    org: "acme",
    namespace: "*",
    roles: ["reader"],
    key_hash: "h",
    display_prefix: "sk-sb-abcd",
    enabled,
    expires_at: null,
    created_at: at,
    updated_at: at,
    revoked_at: enabled ? null : at,
    last_used_at: null,
    rotated_from: null,
    created_by: "local",
    rate_limit_points: null,
    rate_limit_window_seconds: null,
    max_sandboxes: null,
    budget_id: null,
    parent_budgets: [],
  };
}

/** The key record of that row, as the repository makes it. */
const record = (id: string, enabled = true): KeyRecord => toRecord(row(id, enabled));

/** A Kysely whose every query is answered by `answer` (no database), counting queries. */
function fakeDatabase(answer: () => Promise<unknown[]>) {
  const state = { queries: 0 };
  const connection: DatabaseConnection = {
    async executeQuery<R>() {
      state.queries++;
      return { rows: (await answer()) as R[] };
    },
    async *streamQuery() {
      throw new Error("not used");
    },
  };
  const driver: Driver = {
    init: async () => {},
    acquireConnection: async () => connection,
    beginTransaction: async () => {},
    commitTransaction: async () => {},
    rollbackTransaction: async () => {},
    releaseConnection: async () => {},
    destroy: async () => {},
  };
  const db = new Kysely<Database>({
    dialect: {
      createAdapter: () => new PostgresAdapter(),
      createDriver: () => driver,
      createIntrospector: (k) => new PostgresIntrospector(k),
      createQueryCompiler: () => new PostgresQueryCompiler(),
    },
  });
  return { db, state };
}

describe("key cache trust", () => {
  it("a new cache is trusted and serves what it keeps", () => {
    const cache = newCache();
    expect(cache.trusted).toBe(true);
    cache.set("h1", record("k1"));
    expect(cache.get("h1")).toMatchObject({ id: "k1" });
  });

  it("distrusted, it forgets everything, serves nothing and keeps nothing", () => {
    const cache = newCache();
    cache.set("h1", record("k1"));
    cache.set("h2", null);
    cache.distrust();
    expect(cache.trusted).toBe(false);
    expect(cache.size).toBe(0);
    expect(cache.get("h1")).toBeUndefined();
    cache.set("h1", record("k1"));
    cache.set("h3", null, cache.version);
    expect(cache.size).toBe(0);
    expect(cache.get("h1")).toBeUndefined();
  });

  it("trusted again, it starts empty and keeps what is read from then on", () => {
    const cache = newCache();
    cache.distrust();
    cache.trust();
    expect(cache.trusted).toBe(true);
    cache.set("h1", record("k1"), cache.version);
    expect(cache.get("h1")).toMatchObject({ id: "k1" });
  });

  it("an answer read before trust() came back is not kept (it may predate a change nobody heard)", () => {
    const cache = newCache();
    cache.distrust();
    const readAt = cache.version;
    cache.trust();
    cache.set("h1", record("k1"), readAt);
    expect(cache.get("h1")).toBeUndefined();
  });

  it("an answer read before distrust() is not kept either", () => {
    const cache = newCache();
    const readAt = cache.version;
    cache.distrust();
    cache.trust();
    cache.set("h1", record("k1"), readAt);
    expect(cache.size).toBe(0);
  });
});

describe("key lookup with a distrusted cache", () => {
  const key = generateKey();

  it("every lookup asks the database, so a revoke made elsewhere is seen at once", async () => {
    let enabled = true;
    const { db, state } = fakeDatabase(async () => [row("k1", enabled)]);
    const cache = newCache();
    cache.distrust();
    const lookup = createKeyLookup({ db, cache, keyPrefix: DEFAULT_KEY_PREFIX, now: () => new Date(clock) });
    expect(await lookup(key)).toMatchObject({ status: "ok", key: { id: "k1" } });
    expect(await lookup(key)).toMatchObject({ status: "ok" });
    expect(state.queries).toBe(2);
    // Revoked by another process; no notification arrives (the feed is down).
    enabled = false;
    expect(await lookup(key)).toMatchObject({ status: "revoked", key: { id: "k1" } });
    expect(cache.size).toBe(0);
  });

  it("trusted, a warm key is answered from the cache", async () => {
    const { db, state } = fakeDatabase(async () => [row("k1", true)]);
    const cache = newCache();
    const lookup = createKeyLookup({ db, cache, keyPrefix: DEFAULT_KEY_PREFIX, now: () => new Date(clock) });
    await lookup(key);
    await lookup(key);
    expect(state.queries).toBe(1);
  });

  it("the feed dropping while a lookup is in flight: its answer is not kept", async () => {
    let release!: () => void;
    const { db } = fakeDatabase(() => new Promise((resolve) => (release = () => resolve([row("k1", true)]))));
    const cache = newCache();
    const lookup = createKeyLookup({ db, cache, keyPrefix: DEFAULT_KEY_PREFIX, now: () => new Date(clock) });
    const pending = lookup(key);
    await new Promise((resolve) => setImmediate(resolve));
    cache.distrust();
    cache.trust();
    release();
    expect(await pending).toMatchObject({ status: "ok" });
    expect(cache.size).toBe(0);
  });
});

describe("key lookup against a database that stops answering", () => {
  it("fails after the timeout (the decision is then unavailable) and caches nothing", async () => {
    const { db } = fakeDatabase(() => new Promise<never>(() => {}));
    const cache: KeyCache = newCache();
    const lookup = createKeyLookup({ db, cache, keyPrefix: DEFAULT_KEY_PREFIX, now: () => new Date(clock), timeoutMs: 50 });
    const started = performance.now();
    await expect(lookup(generateKey())).rejects.toBeInstanceOf(KeyLookupTimeoutError);
    expect(performance.now() - started).toBeLessThan(2_000);
    expect(cache.size).toBe(0);
  });

  it("a query failing after the timeout is not an unhandled rejection", async () => {
    let fail!: (error: Error) => void;
    const { db } = fakeDatabase(() => new Promise<never>((_, reject) => (fail = reject)));
    const lookup = createKeyLookup({ db, cache: newCache(), keyPrefix: DEFAULT_KEY_PREFIX, now: () => new Date(clock), timeoutMs: 20 });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => void unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      await expect(lookup(generateKey())).rejects.toBeInstanceOf(KeyLookupTimeoutError);
      fail(new Error("connection terminated"));
      await new Promise((resolve) => setTimeout(resolve, 20));
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  });
});

describe("the key change listener", () => {
  it("distrusts the cache until it listens (here: never, the database is unreachable)", async () => {
    const cache = newCache();
    cache.set("h1", record("k1"));
    const lines: string[] = [];
    const log = createLogger("warn", (line) => void lines.push(line));
    const listener = await listenForKeyChanges({ url: "postgres://keygate@127.0.0.1:1/keygate", defaultUser: "keygate", cache, log });
    try {
      expect(cache.trusted).toBe(false);
      expect(cache.get("h1")).toBeUndefined();
      expect(lines.join("")).toContain("key change listener cannot connect");
    } finally {
      await listener.close();
    }
  });
});

describe("key cache memory", () => {
  it("expired entries go as new ones arrive, so keys looked up once do not pile up until the size bound", () => {
    const cache = newCache();
    for (let i = 0; i < 50; i++) cache.set(`old${i}`, record(`old${i}`));
    expect(cache.size).toBe(50);
    clock += 60_001; // every one of them has expired
    for (let i = 0; i < 20; i++) cache.set(`new${i}`, record(`new${i}`));
    // Each insert drops up to 4 expired entries from the front: 50 gone after 13 inserts.
    expect(cache.size).toBe(20);
    expect(cache.get("new0")).toMatchObject({ id: "new0" });
  });
});
