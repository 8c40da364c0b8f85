import { createHash } from "node:crypto";
import { sql } from "kysely";
import { describe, expect, it } from "vitest";
import { createUsageRecorder } from "../../src/core/keys/usage-recorder.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { asKey, check, countStatements, createCore, createKey, DAY, HOUR, LOCAL, unwrap, type Core, useCoreDatabase, createOutage } from "./test-core.js";

/** Key lifecycle, the happy paths: what an operator or an admin key does day to day. */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

const KEY_SHAPE = /^sk-sb-[0-9A-Za-z]{42}$/;

async function allowed(plaintext: string, method = "GET", path = "/sandboxes"): Promise<boolean> {
  return (await check(core, plaintext, method, path)).allowed;
}

async function reason(plaintext: string, method = "GET", path = "/sandboxes"): Promise<string> {
  return (await check(core, plaintext, method, path)).reason;
}

describe(`create on ${testDatabaseKind}`, () => {
  it("returns the plaintext once, in the documented format, and the key works at once", async () => {
    const { key, plaintext } = await createKey(core, { name: "ci deploy", org: "acme", namespace: "team-alpha", roles: ["writer"], expiry: { kind: "in", duration: "7d" } });
    expect(plaintext).toMatch(KEY_SHAPE);
    expect(key).toMatchObject({
      name: "ci deploy",
      org: "acme",
      namespace: "team-alpha",
      roles: ["writer"],
      enabled: true,
      displayPrefix: plaintext.slice(0, 10),
      createdAt: core.clock.now(),
      expiresAt: new Date(core.clock.now().getTime() + 7 * DAY),
      revokedAt: null,
      lastUsedAt: null,
      rotatedFrom: null,
      createdBy: "local",
    });
    expect(key.id).toMatch(/^key_[0-9A-Za-z]{20}$/);
    expect(await check(core, plaintext, "POST", "/sandboxes")).toMatchObject({ allowed: true, reason: "allowed", key: { id: key.id, org: "acme" } });

    // Never again: get and list show the record, not the secret.
    const got = unwrap(await core.keys.get(LOCAL, key.id));
    const listed = unwrap(await core.keys.list(LOCAL, { org: "acme" }));
    expect(JSON.stringify(got)).not.toContain(plaintext.slice(10));
    expect(JSON.stringify(listed)).not.toContain(plaintext.slice(10));
    expect(listed.keys.map((k) => k.id)).toContain(key.id);
  });

  it("stores only the SHA-256 of the key: no column of api_keys holds the plaintext or its secret part", async () => {
    const { key, plaintext } = await createKey(core, { name: "hash-only", org: "hash-org" });
    const secret = plaintext.slice(10); // everything after the display prefix
    const rows = await sql<Record<string, unknown>>`select * from api_keys`.execute(core.db);
    expect(rows.rows.length).toBeGreaterThan(0);
    for (const row of rows.rows) {
      for (const [column, value] of Object.entries(row)) {
        const text = value instanceof Date ? value.toISOString() : typeof value === "string" ? value : JSON.stringify(value);
        expect(text ?? "", `api_keys.${column}`).not.toContain(secret);
      }
    }
    const mine = rows.rows.find((row) => row.id === key.id)!;
    expect(mine.key_hash).toBe(createHash("sha256").update(plaintext).digest("hex"));
    expect(mine.display_prefix).toBe(plaintext.slice(0, 10));
  });

  it("uses documented defaults: org default, every namespace, writer, no expiry", async () => {
    const { key, plaintext } = await createKey(core, {});
    expect(key).toMatchObject({ org: "default", namespace: "*", roles: ["writer"], expiresAt: null, name: "" });
    expect(await allowed(plaintext, "POST", "/sandboxes")).toBe(true);
    core.clock.advance(3650 * DAY);
    expect(await allowed(plaintext, "POST", "/sandboxes")).toBe(true);
  });

  it("gives every key a different secret and id", async () => {
    const made = await Promise.all(Array.from({ length: 10 }, () => createKey(core, { org: "many" })));
    expect(new Set(made.map((m) => m.plaintext)).size).toBe(10);
    expect(new Set(made.map((m) => m.key.id)).size).toBe(10);
  });

  it.each([
    ["30s", 30_000],
    ["15m", 15 * 60_000],
    ["24h", 24 * HOUR],
    ["7d", 7 * DAY],
    ["2w", 14 * DAY],
    ["3mo", 90 * DAY],
    ["1y", 365 * DAY],
  ])("expiry %s means %i ms from now, and the key expires exactly then", async (duration, ms) => {
    const { key, plaintext } = await createKey(core, { org: "durations", expiry: { kind: "in", duration } });
    const created = core.clock.now().getTime();
    expect(key.expiresAt).toEqual(new Date(created + ms));
    core.clock.advance(ms - 1);
    expect(await reason(plaintext)).toBe("allowed");
    core.clock.advance(1);
    expect(await check(core, plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "expired", message: "API key has expired" });
  });

  it("accepts an absolute expiry time", async () => {
    const at = new Date(core.clock.now().getTime() + 5 * DAY);
    const { key } = await createKey(core, { org: "durations", expiry: { kind: "at", at } });
    expect(key.expiresAt).toEqual(at);
  });
});

describe("get and list", () => {
  it("get returns the key's record", async () => {
    const { key } = await createKey(core, { name: "fetch me", org: "get-org", roles: ["reader"] });
    expect(unwrap(await core.keys.get(LOCAL, key.id))).toEqual({ ...key, usage: { days: [], allowed7d: 0, denied7d: 0 } });
  });

  it("pages through every key in creation order with page tokens, no key twice or missed", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 7; i++) {
      // Two keys share each creation time, so paging must also order by id.
      if (i % 2 === 0) core.clock.advance(1_000);
      ids.push((await createKey(core, { name: `page-${i}`, org: "paging" })).key.id);
    }
    const seen: string[] = [];
    const sizes: number[] = [];
    let pageToken = "";
    do {
      const page = unwrap(await core.keys.list(LOCAL, { org: "paging", pageSize: 3, pageToken }));
      sizes.push(page.keys.length);
      seen.push(...page.keys.map((k) => k.id));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    expect(sizes).toEqual([3, 3, 1]);
    expect(new Set(seen).size).toBe(7);
    expect([...seen].sort()).toEqual([...ids].sort());
    const created = await Promise.all(seen.map(async (id) => unwrap(await core.keys.get(LOCAL, id)).createdAt.getTime()));
    expect(created).toEqual([...created].sort((a, b) => a - b));
  });

  it("a page exactly filled has no next page token", async () => {
    for (let i = 0; i < 4; i++) await createKey(core, { org: "exact-page" });
    const first = unwrap(await core.keys.list(LOCAL, { org: "exact-page", pageSize: 2 }));
    const second = unwrap(await core.keys.list(LOCAL, { org: "exact-page", pageSize: 2, pageToken: first.nextPageToken }));
    expect(first.keys).toHaveLength(2);
    expect(second.keys).toHaveLength(2);
    expect(second.nextPageToken).toBe("");
  });

  it("filters by org, namespace and enabled", async () => {
    const made = async (org: string, namespace: string) => {
      core.clock.advance(1_000); // distinct creation times: listing order is creation order
      return createKey(core, { org, namespace });
    };
    const a1 = await made("filter-a", "team-alpha");
    const a2 = await made("filter-a", "team-beta");
    const a3 = await made("filter-a", "team-alpha");
    const b1 = await made("filter-b", "team-alpha");
    unwrap(await core.keys.revoke(LOCAL, a3.key.id));

    const ids = async (input: Parameters<Core["keys"]["list"]>[1]) => unwrap(await core.keys.list(LOCAL, input)).keys.map((k) => k.id);
    expect(await ids({ org: "filter-a" })).toEqual([a1.key.id, a2.key.id, a3.key.id]);
    expect(await ids({ org: "filter-a", namespace: "team-alpha" })).toEqual([a1.key.id, a3.key.id]);
    expect(await ids({ org: "filter-a", enabled: true })).toEqual([a1.key.id, a2.key.id]);
    expect(await ids({ org: "filter-a", enabled: false })).toEqual([a3.key.id]);
    expect(await ids({ org: "filter-b" })).toEqual([b1.key.id]);
    const everywhere = await ids({ namespace: "team-alpha", pageSize: 1000 });
    expect(everywhere).toEqual(expect.arrayContaining([a1.key.id, a3.key.id, b1.key.id]));
    expect(everywhere).not.toContain(a2.key.id);
  });
});

describe("update", () => {
  it("renames a key", async () => {
    const { key } = await createKey(core, { name: "old name", org: "upd" });
    const updated = unwrap(await core.keys.update(LOCAL, { id: key.id, name: "new name" }));
    expect(updated.name).toBe("new name");
    expect(unwrap(await core.keys.get(LOCAL, key.id)).name).toBe("new name");
  });

  it("disabling a key revokes it at once even while it is cached, and enabling restores it", async () => {
    const { key, plaintext } = await createKey(core, { org: "upd" });
    expect(await allowed(plaintext)).toBe(true); // now cached
    const disabled = unwrap(await core.keys.update(LOCAL, { id: key.id, enabled: false }));
    expect(disabled).toMatchObject({ enabled: false, revokedAt: core.clock.now() });
    expect(await check(core, plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "revoked", message: "API key has been revoked" });
    const enabled = unwrap(await core.keys.update(LOCAL, { id: key.id, enabled: true }));
    expect(enabled).toMatchObject({ enabled: true, revokedAt: null });
    expect(await allowed(plaintext)).toBe(true);
  });

  it("sets, moves and removes an expiry, effective at once", async () => {
    const { key, plaintext } = await createKey(core, { org: "upd" });
    expect(await allowed(plaintext)).toBe(true);
    const withExpiry = unwrap(await core.keys.update(LOCAL, { id: key.id, expiry: { kind: "in", duration: "1h" } }));
    expect(withExpiry.expiresAt).toEqual(new Date(core.clock.now().getTime() + HOUR));
    core.clock.advance(2 * HOUR);
    expect(await reason(plaintext)).toBe("expired");
    const extended = unwrap(await core.keys.update(LOCAL, { id: key.id, expiry: { kind: "in", duration: "1d" } }));
    expect(extended.expiresAt).toEqual(new Date(core.clock.now().getTime() + DAY));
    expect(await reason(plaintext)).toBe("allowed");
    const forever = unwrap(await core.keys.update(LOCAL, { id: key.id, expiry: { kind: "never" } }));
    expect(forever.expiresAt).toBeNull();
    core.clock.advance(400 * DAY);
    expect(await reason(plaintext)).toBe("allowed");
  });

  it("changes roles, and decisions follow at once", async () => {
    const { key, plaintext } = await createKey(core, { org: "upd", roles: ["writer"] });
    expect(await allowed(plaintext, "DELETE", "/sandboxes/sbx-1")).toBe(true);
    const updated = unwrap(await core.keys.update(LOCAL, { id: key.id, roles: ["reader"] }));
    expect(updated.roles).toEqual(["reader"]);
    expect(await check(core, plaintext, "DELETE", "/sandboxes/sbx-1")).toMatchObject({
      allowed: false,
      reason: "forbidden",
      message: "API key is not allowed to DELETE /sandboxes/sbx-1",
    });
    expect(await allowed(plaintext, "GET", "/sandboxes/sbx-1")).toBe(true);
  });

  it("leaves fields it was not given alone", async () => {
    const { key } = await createKey(core, { name: "keep", org: "upd", namespace: "team-alpha", roles: ["reader", "writer"], expiry: { kind: "in", duration: "2w" } });
    core.clock.advance(1_000);
    const updated = unwrap(await core.keys.update(LOCAL, { id: key.id, name: "renamed" }));
    expect(updated).toMatchObject({ name: "renamed", namespace: "team-alpha", roles: ["reader", "writer"], expiresAt: key.expiresAt, enabled: true });
    expect(updated.updatedAt).toEqual(core.clock.now());
    expect(updated.createdAt).toEqual(key.createdAt);
  });
});

describe("revoke", () => {
  it("a cached key stops working at once, with the revoked message", async () => {
    const { key, plaintext } = await createKey(core, { org: "rev" });
    expect(await allowed(plaintext)).toBe(true);
    const revoked = unwrap(await core.keys.revoke(LOCAL, key.id));
    expect(revoked).toMatchObject({ enabled: false, revokedAt: core.clock.now() });
    const decision = await check(core, plaintext, "GET", "/sandboxes");
    expect(decision).toMatchObject({ allowed: false, reason: "revoked", message: "API key has been revoked", key: { id: key.id } });
  });

  it("revoking twice keeps the first revocation time", async () => {
    const { key } = await createKey(core, { org: "rev" });
    const first = unwrap(await core.keys.revoke(LOCAL, key.id));
    core.clock.advance(HOUR);
    const second = unwrap(await core.keys.revoke(LOCAL, key.id));
    expect(second.revokedAt).toEqual(first.revokedAt);
  });
});

describe("rotate", () => {
  it("without grace: the new key works at once and the old keeps working until revoked", async () => {
    const old = await createKey(core, { name: "svc", org: "rot", namespace: "team-alpha", roles: ["writer"], expiry: { kind: "in", duration: "30d" } });
    expect(await allowed(old.plaintext)).toBe(true);
    const rotated = unwrap(await core.keys.rotate(LOCAL, old.key.id, ""));
    expect(rotated.plaintext).toMatch(KEY_SHAPE);
    expect(rotated.plaintext).not.toBe(old.plaintext);
    expect(rotated.key).toMatchObject({ name: "svc", org: "rot", namespace: "team-alpha", roles: ["writer"], expiresAt: old.key.expiresAt, rotatedFrom: old.key.id, enabled: true });
    expect(rotated.key.id).not.toBe(old.key.id);
    expect(await allowed(rotated.plaintext)).toBe(true);
    core.clock.advance(7 * DAY);
    expect(await allowed(old.plaintext)).toBe(true);
    unwrap(await core.keys.revoke(LOCAL, old.key.id));
    expect(await reason(old.plaintext)).toBe("revoked");
    expect(await allowed(rotated.plaintext)).toBe(true);
  });

  it('with grace "1h": the old key works until the clock passes 1h, then has expired', async () => {
    const old = await createKey(core, { org: "rot" });
    expect(await allowed(old.plaintext)).toBe(true);
    const rotated = unwrap(await core.keys.rotate(LOCAL, old.key.id, "1h"));
    expect(await allowed(rotated.plaintext)).toBe(true);
    expect(unwrap(await core.keys.get(LOCAL, old.key.id)).expiresAt).toEqual(new Date(core.clock.now().getTime() + HOUR));
    core.clock.advance(HOUR - 1);
    expect(await allowed(old.plaintext)).toBe(true);
    core.clock.advance(1);
    expect(await check(core, old.plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "expired", message: "API key has expired" });
    expect(await allowed(rotated.plaintext)).toBe(true);
    // The new key does not inherit the grace period.
    expect(rotated.key.expiresAt).toBeNull();
  });

  it("a grace period never lengthens the old key's life", async () => {
    const old = await createKey(core, { org: "rot", expiry: { kind: "in", duration: "30m" } });
    unwrap(await core.keys.rotate(LOCAL, old.key.id, "1d"));
    expect(unwrap(await core.keys.get(LOCAL, old.key.id)).expiresAt).toEqual(old.key.expiresAt);
    core.clock.advance(31 * 60_000);
    expect(await reason(old.plaintext)).toBe("expired");
  });

  it('with grace "0s": the old key is revoked at once, even while cached', async () => {
    const old = await createKey(core, { org: "rot" });
    expect(await allowed(old.plaintext)).toBe(true);
    const rotated = unwrap(await core.keys.rotate(LOCAL, old.key.id, "0s"));
    expect(await check(core, old.plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "revoked", message: "API key has been revoked" });
    expect(await allowed(rotated.plaintext)).toBe(true);
  });

  it("rotating a rotated key ends only the key it rotates", async () => {
    const old = await createKey(core, { org: "rot" });
    const rotated = unwrap(await core.keys.rotate(LOCAL, old.key.id, ""));
    const again = unwrap(await core.keys.rotate(LOCAL, rotated.key.id, "0s"));
    expect(again.key.rotatedFrom).toBe(rotated.key.id);
    expect(await allowed(again.plaintext)).toBe(true);
    expect(await reason(rotated.plaintext)).toBe("revoked");
    expect(await allowed(old.plaintext)).toBe(true);
  });

  it("a revoked key is not rotated: no enabled successor, a clear refusal, nothing created", async () => {
    const old = await createKey(core, { org: "rot-revoked" });
    unwrap(await core.keys.revoke(LOCAL, old.key.id));
    const refused = await core.keys.rotate(LOCAL, old.key.id, "");
    expect(refused).toEqual({ ok: false, code: "invalid_argument", message: `key ${old.key.id} is revoked: a revoked key cannot be rotated (enable it with update first, or create a new key)` });
    const listed = unwrap(await core.keys.list(LOCAL, { org: "rot-revoked", pageSize: 10 }));
    expect(listed.keys.map((k) => k.id)).toEqual([old.key.id]);
  });
});

describe("delete", () => {
  it("a deleted key is an invalid key at once, even while cached, and is gone from get", async () => {
    const { key, plaintext } = await createKey(core, { org: "del" });
    expect(await allowed(plaintext)).toBe(true);
    expect(unwrap(await core.keys.delete(LOCAL, key.id))).toBe(key.id);
    expect(await check(core, plaintext, "GET", "/sandboxes")).toEqual({ allowed: false, reason: "invalid_key", message: "invalid API key", matchedRule: "" });
    expect(await core.keys.get(LOCAL, key.id)).toMatchObject({ ok: false, code: "not_found" });
    expect(unwrap(await core.keys.list(LOCAL, { org: "del" })).keys.map((k) => k.id)).not.toContain(key.id);
  });
});

describe("last used", () => {
  it("is noted in memory per decision and written in one batch by the usage recorder", async () => {
    const counted = countStatements(core.db);
    const counting = await createCore(counted.db, { clock: core.clock });
    try {
      const a = await createKey(counting, { org: "usage" });
      const b = await createKey(counting, { org: "usage" });
      counted.statements.length = 0;

      for (let i = 0; i < 20; i++) {
        expect((await check(counting, a.plaintext, "GET", "/sandboxes")).allowed).toBe(true);
        expect((await check(counting, b.plaintext, "GET", "/sandboxes")).allowed).toBe(true);
        if (i === 9) counting.clock.advance(30_000); // within the key cache's TTL
      }
      const lastUse = counting.clock.now();
      // Two cold lookups, no writes.
      expect([...counted.statements]).toEqual(["SelectQueryNode", "SelectQueryNode"]);
      const stored = async (id: string) =>
        (await counting.db.selectFrom("api_keys").select("last_used_at").where("id", "=", id).executeTakeFirstOrThrow()).last_used_at;
      expect(await stored(a.key.id)).toBeNull();
      // Before the flush, get and list already show the time noted in memory.
      expect(unwrap(await counting.keys.get(LOCAL, a.key.id)).lastUsedAt).toEqual(lastUse);

      counted.statements.length = 0;
      await counting.usage.flush();
      expect(counted.statements).toHaveLength(1);
      expect(await stored(a.key.id)).toEqual(lastUse);
      expect(await stored(b.key.id)).toEqual(lastUse);
      expect(unwrap(await counting.keys.get(LOCAL, b.key.id)).lastUsedAt).toEqual(lastUse);

      // Nothing noted since: a flush writes nothing.
      counted.statements.length = 0;
      await counting.usage.flush();
      expect(counted.statements).toEqual([]);
    } finally {
      await counting.close();
    }
  });

  it("a failed flush keeps the times and writes them on the next one", async () => {
    const { key, plaintext } = await createKey(core, { org: "usage" });
    const outage = createOutage();
    const errors: unknown[] = [];
    const recorder = createUsageRecorder(core.db.withPlugin(outage.plugin), HOUR, (error) => errors.push(error));
    try {
      const at = core.clock.now();
      recorder.touch(key.id, at);
      await recorder.flush();
      expect(errors).toHaveLength(1);
      expect(recorder.pending(key.id)).toEqual(at);
      outage.down = false;
      await recorder.flush();
      expect(recorder.pending(key.id)).toBeUndefined();
      expect(unwrap(await core.keys.get(LOCAL, key.id)).lastUsedAt).toEqual(at);
      expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(true);
    } finally {
      await recorder.stop();
    }
  });

  it("a denied decision does not count as a use", async () => {
    const { key, plaintext } = await createKey(core, { org: "usage", roles: ["reader"] });
    expect((await check(core, plaintext, "DELETE", "/sandboxes/x")).allowed).toBe(false);
    await core.usage.flush();
    expect(unwrap(await core.keys.get(LOCAL, key.id)).lastUsedAt).toBeNull();
  });

  it("never moves backwards when an older time is flushed later", async () => {
    const { key, plaintext } = await createKey(core, { org: "usage" });
    expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(true);
    const newer = core.clock.now();
    await core.usage.flush();
    core.usage.touch(key.id, new Date(newer.getTime() - DAY));
    await core.usage.flush();
    expect(unwrap(await core.keys.get(LOCAL, key.id)).lastUsedAt).toEqual(newer);
  });

  it("a key principal's own usage shows for admins listing its org", async () => {
    const admin = await createKey(core, { org: "usage-admin", roles: ["admin"] });
    expect((await check(core, admin.plaintext, "GET", "/sandboxes")).allowed).toBe(true);
    await core.usage.flush();
    const page = unwrap(await core.keys.list(asKey(admin.key), {}));
    expect(page.keys.find((k) => k.id === admin.key.id)?.lastUsedAt).toEqual(core.clock.now());
  });
});
