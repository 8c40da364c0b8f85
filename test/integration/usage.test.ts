import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createKeyUsageReader } from "../../src/core/manage/key-usage.js";
import { createUsageRecorder } from "../../src/core/keys/usage-recorder.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { check, countStatements, createCore, createKey, DAY, HOUR, LOCAL, unwrap, type Core, useCoreDatabase, createOutage } from "./test-core.js";

/**
 * Per-key usage: every decision about a known key is counted per UTC day in
 * memory and written in the usage recorder's batch, one statement per flush.
 */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

async function stored(keyId: string): Promise<{ day: string; allowed: number; denied: number }[]> {
  const rows = await core.db
    .selectFrom("key_usage")
    .select([sql<string>`to_char(day, 'YYYY-MM-DD')`.as("day"), "allowed", "denied"])
    .where("key_id", "=", keyId)
    .orderBy("day")
    .execute();
  return rows.map((r) => ({ day: r.day, allowed: Number(r.allowed), denied: Number(r.denied) }));
}

const today = (at: Date) => at.toISOString().slice(0, 10);

describe(`usage counts on ${testDatabaseKind}`, () => {
  it("counts allowed and denied decisions in memory and writes them in one statement per flush", async () => {
    const counted = countStatements(core.db);
    const counting = await createCore(counted.db, { clock: core.clock });
    try {
      const a = await createKey(counting, { org: "usage", roles: ["writer"] });
      const b = await createKey(counting, { org: "usage", roles: ["reader"] });
      counted.statements.length = 0;
      for (let i = 0; i < 5; i++) expect((await check(counting, a.plaintext, "GET", "/sandboxes")).allowed).toBe(true);
      for (let i = 0; i < 3; i++) expect((await check(counting, a.plaintext, "DELETE", "/sandboxes/abc/network")).reason).toBe("forbidden");
      expect((await check(counting, a.plaintext, "GET", "/sandboxes", { org: "globex" })).reason).toBe("forbidden");
      for (let i = 0; i < 2; i++) expect((await check(counting, b.plaintext, "DELETE", "/templates/x")).reason).toBe("forbidden");
      // Not a key's: no credential, or one that is no key.
      expect((await check(counting, "", "GET", "/sandboxes")).reason).toBe("missing_credential");
      expect((await check(counting, `${a.plaintext.slice(0, -4)}zzzz`, "GET", "/sandboxes")).reason).toBe("invalid_key");

      // Lookups only: no write before the flush.
      expect(counted.statements.every((kind) => kind === "SelectQueryNode")).toBe(true);
      expect(await stored(a.key.id)).toEqual([]);

      counted.statements.length = 0;
      await counting.usage.flush();
      expect(counted.statements).toHaveLength(1);
      const day = today(counting.clock.now());
      expect(await stored(a.key.id)).toEqual([{ day, allowed: 5, denied: 4 }]);
      expect(await stored(b.key.id)).toEqual([{ day, allowed: 0, denied: 2 }]);

      // The next flush adds to the day's row.
      await check(counting, a.plaintext, "GET", "/sandboxes");
      await check(counting, a.plaintext, "POST", "/templates/x/builds/y/status");
      counted.statements.length = 0;
      await counting.usage.flush();
      expect(counted.statements).toHaveLength(1);
      expect(await stored(a.key.id)).toEqual([{ day, allowed: 6, denied: 5 }]);

      // Nothing noted since: nothing written.
      counted.statements.length = 0;
      await counting.usage.flush();
      expect(counted.statements).toEqual([]);
    } finally {
      await counting.close();
    }
  });

  it("counts revoked, expired and rate-limited keys as denied", async () => {
    const revoked = await createKey(core, { org: "usage" });
    unwrap(await core.keys.revoke(LOCAL, revoked.key.id));
    const expiring = await createKey(core, { org: "usage", expiry: { kind: "in", duration: "1h" } });
    const limited = await createKey(core, { org: "usage", rateLimit: "1/1h" });
    expect((await check(core, revoked.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
    expect((await check(core, limited.plaintext, "GET", "/sandboxes")).allowed).toBe(true);
    expect((await check(core, limited.plaintext, "GET", "/sandboxes")).reason).toBe("rate_limited");
    const before = today(core.clock.now());
    core.clock.advance(2 * HOUR);
    expect((await check(core, expiring.plaintext, "GET", "/sandboxes")).reason).toBe("expired");
    await core.usage.flush();
    const day = today(core.clock.now());
    expect(await stored(revoked.key.id)).toEqual([{ day: before, allowed: 0, denied: 1 }]);
    expect(await stored(limited.key.id)).toEqual([{ day: before, allowed: 1, denied: 1 }]);
    expect(await stored(expiring.key.id)).toEqual([{ day, allowed: 0, denied: 1 }]);
  });

  it("keeps one row per UTC day", async () => {
    const { key, plaintext } = await createKey(core, { org: "usage" });
    core.clock.set(new Date("2031-04-10T23:59:00.000Z"));
    await check(core, plaintext, "GET", "/sandboxes");
    await check(core, plaintext, "DELETE", "/sandboxes/abc/network");
    core.clock.set(new Date("2031-04-11T00:01:00.000Z"));
    await check(core, plaintext, "GET", "/sandboxes");
    await check(core, plaintext, "GET", "/sandboxes");
    await core.usage.flush();
    expect(await stored(key.id)).toEqual([
      { day: "2031-04-10", allowed: 1, denied: 1 },
      { day: "2031-04-11", allowed: 2, denied: 0 },
    ]);
  });

  it("a failed flush keeps the counts, and the next one writes them with the newer ones", async () => {
    const { key } = await createKey(core, { org: "usage" });
    const outage = createOutage();
    const errors: unknown[] = [];
    const recorder = createUsageRecorder(core.db.withPlugin(outage.plugin), HOUR, (error) => errors.push(error));
    try {
      const at = core.clock.now();
      recorder.touch(key.id, at);
      recorder.touch(key.id, at);
      recorder.countDenied(key.id, at);
      await recorder.flush();
      expect(errors).toHaveLength(1);
      expect(recorder.pendingCounts(key.id)?.get(today(at))).toEqual({ allowed: 2, denied: 1 });
      recorder.touch(key.id, at);
      outage.down = false;
      await recorder.flush();
      expect(await stored(key.id)).toEqual([{ day: today(at), allowed: 3, denied: 1 }]);
      expect(recorder.pendingCounts(key.id)).toBeUndefined();
    } finally {
      outage.down = false;
      await recorder.stop();
    }
  });

  it("writes a large flush in chunks; a chunk that fails is kept with those after it, nothing counted twice", async () => {
    const keys = await Promise.all(Array.from({ length: 7 }, () => createKey(core, { org: "usage" })));
    let statements = 0;
    const outage = createOutage();
    outage.down = false;
    // The third statement fails (after two chunks of two keys were written).
    const failing = {
      transformQuery: (args: Parameters<typeof outage.plugin.transformQuery>[0]) => {
        statements++;
        if (statements === 3) throw new Error("the database is down");
        return outage.plugin.transformQuery(args);
      },
      transformResult: outage.plugin.transformResult,
    };
    const errors: unknown[] = [];
    const recorder = createUsageRecorder(core.db.withPlugin(failing), HOUR, (error) => errors.push(error), 2);
    try {
      const at = core.clock.now();
      for (const { key } of keys) recorder.touch(key.id, at);
      await recorder.flush();
      expect(statements).toBe(3);
      expect(errors).toHaveLength(1);
      const written = await Promise.all(keys.map(({ key }) => stored(key.id)));
      expect(written.map((rows) => rows.length)).toEqual([1, 1, 1, 1, 0, 0, 0]);
      expect(keys.map(({ key }) => recorder.pendingCounts(key.id)?.get(today(at))?.allowed)).toEqual([undefined, undefined, undefined, undefined, 1, 1, 1]);
      await recorder.flush();
      for (const { key } of keys) expect(await stored(key.id)).toEqual([{ day: today(at), allowed: 1, denied: 0 }]);
      expect(errors).toHaveLength(1);
    } finally {
      await recorder.stop();
    }
  });

  it("drops the counts of a key deleted before the flush, and writes the others", async () => {
    const gone = await createKey(core, { org: "usage" });
    const kept = await createKey(core, { org: "usage" });
    await check(core, gone.plaintext, "GET", "/sandboxes");
    await check(core, kept.plaintext, "GET", "/sandboxes");
    unwrap(await core.keys.delete(LOCAL, gone.key.id));
    await core.usage.flush();
    expect(core.errors).toEqual([]);
    expect(await stored(kept.key.id)).toEqual([{ day: today(core.clock.now()), allowed: 1, denied: 0 }]);
    expect(await stored(gone.key.id)).toEqual([]);
  });

  it("deleting a key deletes its usage", async () => {
    const { key, plaintext } = await createKey(core, { org: "usage" });
    await check(core, plaintext, "GET", "/sandboxes");
    await core.usage.flush();
    expect(await stored(key.id)).toHaveLength(1);
    unwrap(await core.keys.delete(LOCAL, key.id));
    expect(await stored(key.id)).toEqual([]);
  });
});

describe(`usage in get and list on ${testDatabaseKind}`, () => {
  it("get shows the last 30 days per day and list the 7-day totals, counts not yet flushed included", async () => {
    core.clock.set(new Date("2031-05-20T12:00:00.000Z"));
    const { key, plaintext } = await createKey(core, { org: "usage-read" });
    const decide = async (allowed: number, denied: number) => {
      for (let i = 0; i < allowed; i++) await check(core, plaintext, "GET", "/sandboxes");
      for (let i = 0; i < denied; i++) await check(core, plaintext, "DELETE", "/sandboxes/abc/network");
    };
    await decide(4, 0); // 05-20: 40 days before the last day, outside both windows
    core.clock.advance(25 * DAY); // 06-14: inside 30 days, outside 7
    await decide(2, 1);
    core.clock.advance(12 * DAY); // 06-26: inside 7 days
    await decide(1, 1);
    await core.usage.flush();
    core.clock.advance(3 * DAY); // 06-29: today, not flushed
    await decide(3, 2);

    const got = unwrap(await core.keys.get(LOCAL, key.id));
    expect(got.usage).toEqual({
      days: [
        { day: "2031-06-14", allowed: 2, denied: 1 },
        { day: "2031-06-26", allowed: 1, denied: 1 },
        { day: "2031-06-29", allowed: 3, denied: 2 },
      ],
      allowed7d: 4,
      denied7d: 3,
    });
    const page = unwrap(await core.keys.list(LOCAL, { org: "usage-read" }));
    expect(page.keys.map((k) => k.usage)).toEqual([{ days: [], allowed7d: 4, denied7d: 3 }]);

    // Flushed or not, the same numbers.
    await core.usage.flush();
    expect(unwrap(await core.keys.get(LOCAL, key.id)).usage).toEqual(got.usage);
  });

  it("a key never used shows no days and zero totals", async () => {
    const { key } = await createKey(core, { org: "usage-idle" });
    expect(unwrap(await core.keys.get(LOCAL, key.id)).usage).toEqual({ days: [], allowed7d: 0, denied7d: 0 });
    const reader = createKeyUsageReader({ db: core.db, now: core.clock.now, pendingCounts: () => undefined });
    expect(await reader.withTotals([])).toEqual([]);
  });
});
