import { describe, expect, it } from "vitest";
import { createKeyCache } from "../../src/core/keys/key-cache.js";
import { DEFAULT_KEY_PREFIX } from "../../src/core/keys/key-format.js";
import { createKeyLookup } from "../../src/core/keys/key-lookup.js";
import type { Policy } from "../../src/core/policy/policy.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { check, createCore, createKey, LOCAL, realPolicy, type Core, useCoreDatabase, createOutage } from "./test-core.js";

/**
 * Fail closed: when a decision cannot be made (the key store is down, the
 * policy cannot be evaluated) the answer is "unavailable", never "allowed",
 * and the failure is reported for the operator's log.
 */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

const UNAVAILABLE = "authorization unavailable: the key store cannot be reached, request denied";

describe(`outages on ${testDatabaseKind}`, () => {
  it("a key lookup that throws denies with reason unavailable and reports the error", async () => {
    const { plaintext } = await createKey(core, { org: "outage", roles: ["admin"] });
    const failure = new Error("connection reset by peer");
    const broken = await createCore(core.db, {
      clock: core.clock,
      lookupKey: async () => {
        throw failure;
      },
    });
    try {
      const decision = await check(broken, plaintext, "GET", "/sandboxes");
      expect(decision).toEqual({ allowed: false, reason: "unavailable", message: UNAVAILABLE, matchedRule: "" });
      expect(broken.errors).toEqual([failure]);
    } finally {
      await broken.close();
    }
  });

  it("a database failure is not cached: the key works again as soon as the store is back", async () => {
    const { plaintext } = await createKey(core, { org: "outage" });
    const outage = createOutage();
    const cache = createKeyCache({ ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 100, now: () => core.clock.now().getTime() });
    const lookupKey = createKeyLookup({ db: core.db.withPlugin(outage.plugin), cache, keyPrefix: DEFAULT_KEY_PREFIX, now: core.clock.now });
    const withFlakyStore = await createCore(core.db, { clock: core.clock, lookupKey });
    try {
      expect(await check(withFlakyStore, plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "unavailable" });
      expect(await check(withFlakyStore, plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "unavailable" });
      expect(withFlakyStore.errors).toHaveLength(2);
      outage.down = false;
      expect(await check(withFlakyStore, plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: true, reason: "allowed" });
    } finally {
      await withFlakyStore.close();
    }
  });

  it("a policy that cannot be evaluated denies with reason unavailable", async () => {
    const { plaintext, key } = await createKey(core, { org: "outage", roles: ["admin"] });
    const real = await realPolicy();
    const broken: Policy = {
      ...real,
      decide: () => {
        throw new Error("enforcer exploded");
      },
    };
    const withBrokenPolicy = await createCore(core.db, { clock: core.clock, policy: broken });
    try {
      const decision = await check(withBrokenPolicy, plaintext, "GET", "/sandboxes");
      expect(decision).toMatchObject({ allowed: false, reason: "unavailable", key: { id: key.id } });
      expect(decision.message).toContain("unavailable");
      expect(withBrokenPolicy.errors).toHaveLength(1);
    } finally {
      await withBrokenPolicy.close();
    }
  });

  // Last: closes the file's store.
  it("with the key store closed, a key is denied as unavailable and management fails rather than succeeds", async () => {
    const { plaintext, key } = await createKey(core, { org: "outage", roles: ["admin"] });
    await database.store.close();

    const decision = await check(core, plaintext, "GET", "/sandboxes");
    expect(decision).toEqual({ allowed: false, reason: "unavailable", message: UNAVAILABLE, matchedRule: "" });
    expect(core.errors.length).toBeGreaterThan(0);
    // What needs no database is still answered exactly.
    expect((await check(core, "", "GET", "/sandboxes")).reason).toBe("missing_credential");
    expect((await check(core, "sk-sb-typo", "GET", "/sandboxes")).reason).toBe("invalid_key");
    await expect(core.keys.get(LOCAL, key.id)).rejects.toThrow();
    await expect(core.keys.create(LOCAL, { org: "outage" })).rejects.toThrow();
  });
});
