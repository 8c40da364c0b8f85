import { createHash } from "node:crypto";
import { sql } from "kysely";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createAuditLog, type AuditLog } from "../../src/core/manage/audit-log.js";
import type { AuditEvent } from "../../src/core/audit/audit-event.js";
import { listAuditEvents } from "../../src/core/audit/audit.repository.js";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "../support/database.js";
import { asKey, createCore, createKey, HOUR, LOCAL, unwrap, type Core } from "./test-core.js";

/** The audit log: one row per change, in the change's transaction; one per refused attempt; never a secret. */

let database: TestDatabase;
let core: Core;
let audit: AuditLog;
const plaintexts: string[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
  core = await createCore(database.store.db);
  audit = createAuditLog({ db: core.db, policy: () => core.policy, now: core.clock.now, recorder: core.auditRecorder });
});

afterAll(async () => {
  await core?.close();
  await database?.dispose();
});

beforeEach(async () => {
  await core.db.deleteFrom("audit_log").execute();
});

async function rows(): Promise<AuditEvent[]> {
  await core.auditRecorder.flush();
  return listAuditEvents(core.db, {}, 1000);
}

async function only(): Promise<AuditEvent> {
  const all = await rows();
  expect(all).toHaveLength(1);
  return all[0]!;
}

async function made(org = "acme", roles = ["writer"]) {
  const created = await createKey(core, { org, roles, name: `k-${org}` });
  plaintexts.push(created.plaintext);
  await core.db.deleteFrom("audit_log").execute();
  return created;
}

describe(`every change writes exactly one row, on ${testDatabaseKind}`, () => {
  it("create", async () => {
    const { key, plaintext } = await createKey(core, { org: "acme", roles: ["reader"], name: "ci", rateLimit: "10/1s" });
    plaintexts.push(plaintext);
    expect(await only()).toMatchObject({
      actor: "local",
      action: "create",
      target: key.id,
      org: "acme",
      outcome: "ok",
      detail: { name: "ci", org: "acme", namespace: "*", roles: ["reader"], expires_at: null, rate_limit: "10/1s", max_sandboxes: null },
    });
  });

  it("update: field names and new values", async () => {
    const { key } = await made();
    unwrap(await core.keys.update(LOCAL, { id: key.id, name: "renamed", roles: ["reader"], expiry: { kind: "in", duration: "1d" } }));
    const row = await only();
    expect(row).toMatchObject({ actor: "local", action: "update", target: key.id, org: "acme", outcome: "ok" });
    expect(row.detail).toEqual({ changed: { name: "renamed", roles: ["reader"], expires_at: new Date(core.clock.now().getTime() + 24 * HOUR).toISOString() } });
  });

  it("revoke and enable", async () => {
    const { key } = await made();
    unwrap(await core.keys.revoke(LOCAL, key.id));
    expect(await only()).toMatchObject({ action: "revoke", target: key.id, org: "acme", outcome: "ok" });
    await core.db.deleteFrom("audit_log").execute();
    unwrap(await core.keys.update(LOCAL, { id: key.id, enabled: true }));
    expect(await only()).toMatchObject({ action: "enable", target: key.id, org: "acme", outcome: "ok", detail: { changed: { enabled: true } } });
  });

  it("rotate: the old and the new key, and the grace", async () => {
    const { key } = await made();
    const rotated = unwrap(await core.keys.rotate(LOCAL, key.id, "1h"));
    plaintexts.push(rotated.plaintext);
    expect(await only()).toMatchObject({ action: "rotate", target: key.id, newTarget: rotated.key.id, org: "acme", outcome: "ok", detail: { grace: "1h" } });
  });

  it("delete", async () => {
    const { key } = await made();
    unwrap(await core.keys.delete(LOCAL, key.id));
    expect(await only()).toMatchObject({ action: "delete", target: key.id, org: "acme", outcome: "ok" });
  });

  it("reset-all: the count", async () => {
    await made("resetorg");
    await made("resetorg");
    const count = unwrap(await core.keys.resetAll(LOCAL, "resetorg"));
    expect(count).toBe(2);
    expect(await only()).toMatchObject({ action: "reset_all", target: null, org: "resetorg", outcome: "ok", detail: { count: 2 } });
  });

  it("a key caller is the actor, and its org is recorded", async () => {
    const admin = await made("acme", ["admin"]);
    const { key, plaintext } = unwrap(await core.keys.create(asKey(admin.key), { name: "by admin", roles: ["reader"] }));
    plaintexts.push(plaintext);
    expect(await only()).toMatchObject({ actor: admin.key.id, action: "create", target: key.id, org: "acme", outcome: "ok" });
  });

  it("a successful read writes nothing", async () => {
    const { key } = await made();
    unwrap(await core.keys.get(LOCAL, key.id));
    unwrap(await core.keys.list(LOCAL, {}));
    expect(await rows()).toEqual([]);
  });
});

describe(`refused attempts are recorded, on ${testDatabaseKind}`, () => {
  it("policy: a writer key may not create keys", async () => {
    const writer = await made();
    const result = await core.keys.create(asKey(writer.key), { name: "nope" });
    expect(result.ok).toBe(false);
    expect(await only()).toMatchObject({ actor: writer.key.id, action: "create", target: null, org: "acme", outcome: "denied: permission_denied: API key is not allowed to POST keys" });
  });

  it("escalation: an admin key may not grant a role it lacks", async () => {
    const admin = await made("acme", ["admin"]);
    const result = await core.keys.create(asKey(admin.key), { roles: ["superuser"] });
    expect(result.ok).toBe(false);
    expect((await only()).outcome).toMatch(/^denied: permission_denied: a key may not grant roles it does not hold: superuser$/);
  });

  it("not found: another org's key is invisible, and the attempt is in the caller's org", async () => {
    const admin = await made("acme", ["admin"]);
    const other = await made("globex");
    expect((await core.keys.revoke(asKey(admin.key), other.key.id)).ok).toBe(false);
    expect(await only()).toMatchObject({ actor: admin.key.id, action: "revoke", target: other.key.id, org: "acme", outcome: `denied: not_found: key ${other.key.id} not found` });
    expect(unwrap(await core.keys.get(LOCAL, other.key.id)).enabled).toBe(true);
  });

  it("invalid: a bad grace, and a refused read", async () => {
    const { key } = await made();
    expect((await core.keys.rotate(LOCAL, key.id, "soon")).ok).toBe(false);
    expect((await core.keys.get(LOCAL, "not-an-id")).ok).toBe(false);
    const [get, rotate] = await rows();
    expect(rotate).toMatchObject({ actor: "local", action: "rotate", target: key.id, outcome: expect.stringMatching(/^invalid: grace: /) });
    expect(get).toMatchObject({ actor: "local", action: "get", target: "not-an-id", outcome: expect.stringMatching(/^invalid: invalid key id/) });
  });
});

describe(`the change and its row are atomic, on ${testDatabaseKind}`, () => {
  async function withAuditBroken(run: () => Promise<void>): Promise<void> {
    await sql`alter table audit_log rename to audit_log_away`.execute(core.db);
    try {
      await run();
    } finally {
      await sql`alter table audit_log_away rename to audit_log`.execute(core.db);
    }
  }

  it("no row, no change: create, update, revoke, rotate, delete, reset-all all roll back", async () => {
    const { key } = await made("atomic");
    const before = await core.db.selectFrom("api_keys").selectAll().orderBy("id").execute();
    await withAuditBroken(async () => {
      await expect(core.keys.create(LOCAL, { org: "atomic", name: "never" })).rejects.toThrow();
      await expect(core.keys.update(LOCAL, { id: key.id, name: "never" })).rejects.toThrow();
      await expect(core.keys.revoke(LOCAL, key.id)).rejects.toThrow();
      await expect(core.keys.rotate(LOCAL, key.id, "0s")).rejects.toThrow();
      await expect(core.keys.delete(LOCAL, key.id)).rejects.toThrow();
      await expect(core.keys.resetAll(LOCAL, "")).rejects.toThrow();
    });
    expect(await core.db.selectFrom("api_keys").selectAll().orderBy("id").execute()).toEqual(before);
    expect(await rows()).toEqual([]);
  });
});

describe(`reading the audit log, on ${testDatabaseKind}`, () => {
  it("newest first, filtered by org, key and time, paged", async () => {
    const a = await made("read-a");
    core.clock.advance(HOUR);
    unwrap(await core.keys.update(LOCAL, { id: a.key.id, name: "a2" }));
    core.clock.advance(HOUR);
    const b = unwrap(await core.keys.create(LOCAL, { org: "read-b" }));
    plaintexts.push(b.plaintext);
    const all = unwrap(await audit.list(LOCAL, {}));
    expect(all.events.map((e) => e.action)).toEqual(["create", "update"]);
    expect(unwrap(await audit.list(LOCAL, { org: "read-a" })).events.map((e) => e.target)).toEqual([a.key.id]);
    expect(unwrap(await audit.list(LOCAL, { keyId: b.key.id })).events).toHaveLength(1);
    expect(unwrap(await audit.list(LOCAL, { since: new Date(core.clock.now().getTime() - HOUR / 2) })).events.map((e) => e.org)).toEqual(["read-b"]);
    const first = unwrap(await audit.list(LOCAL, { pageSize: 1 }));
    expect(first.events.map((e) => e.action)).toEqual(["create"]);
    const second = unwrap(await audit.list(LOCAL, { pageSize: 1, pageToken: first.nextPageToken }));
    expect(second).toMatchObject({ events: [{ action: "update" }], nextPageToken: "" });
  });

  it("a key sees only its own org, needs the policy, and its refusals are recorded", async () => {
    const admin = await made("iso-a", ["admin"]);
    const writer = await made("iso-a", ["writer"]);
    await made("iso-b");
    plaintexts.push(unwrap(await core.keys.create(LOCAL, { org: "iso-b" })).plaintext);
    const mine = unwrap(await audit.list(asKey(admin.key), {}));
    expect(mine.events.every((e) => e.org === "iso-a")).toBe(true);
    expect(await audit.list(asKey(admin.key), { org: "iso-b" })).toMatchObject({ ok: false, code: "permission_denied" });
    expect(await audit.list(asKey(writer.key), {})).toMatchObject({ ok: false, code: "permission_denied", message: "API key is not allowed to GET audit" });
    const refused = (await rows()).filter((e) => e.action === "audit");
    expect(refused.map((e) => [e.actor, e.org])).toEqual([
      [writer.key.id, "iso-a"],
      [admin.key.id, "iso-a"],
    ]);
  });
});

describe(`no secret in any row, on ${testDatabaseKind}`, () => {
  it("no plaintext key and no hash anywhere in the audit log", async () => {
    // Run every action once more so the table holds one of each.
    const admin = await made("scan", ["admin"]);
    const created = unwrap(await core.keys.create(asKey(admin.key), { roles: ["reader"] }));
    plaintexts.push(created.plaintext);
    unwrap(await core.keys.update(asKey(admin.key), { id: created.key.id, name: "x", rateLimit: "5/1s" }));
    const rotated = unwrap(await core.keys.rotate(asKey(admin.key), created.key.id, "0s"));
    plaintexts.push(rotated.plaintext);
    unwrap(await core.keys.revoke(asKey(admin.key), rotated.key.id));
    unwrap(await core.keys.delete(asKey(admin.key), rotated.key.id));
    unwrap(await core.keys.resetAll(LOCAL, "scan"));
    await core.keys.create(asKey(admin.key), { roles: ["root"] });
    const dump = JSON.stringify(await core.db.selectFrom("audit_log").selectAll().execute());
    expect(dump.length).toBeGreaterThan(500);
    const hashes = (await core.db.selectFrom("api_keys").select("key_hash").execute()).map((r) => r.key_hash);
    for (const plaintext of plaintexts) {
      expect(dump).not.toContain(plaintext);
      expect(dump).not.toContain(createHash("sha256").update(plaintext).digest("hex"));
    }
    for (const hash of hashes) expect(dump).not.toContain(hash);
    expect(dump).not.toMatch(/sk-sb-/);
  });
});
