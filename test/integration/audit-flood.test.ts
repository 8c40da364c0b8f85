import type { Kysely, KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from "kysely";
import { beforeEach, describe, expect, it } from "vitest";
import type { AuditEvent, NewAuditEvent } from "../../src/core/audit/audit-event.js";
import { createAuditRecorder } from "../../src/core/audit/audit-recorder.js";
import { insertAuditEvents, listAuditEvents } from "../../src/core/audit/audit.repository.js";
import { createAuditPruner } from "../../src/core/audit/audit-retention.js";
import type { Database } from "../../src/core/db/schema.js";
import { DEFAULT_KEY_PREFIX } from "../../src/core/keys/key-format.js";
import { createAuditLog } from "../../src/core/manage/audit-log.js";
import { createKeyManager } from "../../src/core/manage/key-manager.js";
import { createResourceManager } from "../../src/core/manage/resource-manager.js";
import { testDatabaseKind } from "../support/database.js";
import { asKey, createKey, DAY, LOCAL, unwrap, useCoreDatabase, type Core } from "./test-core.js";

/**
 * Issue 14, item 2 (audit flooding) and item 6 (a namespace-scoped key read
 * its whole org's audit log). Each test reproduces the attack: a valid key
 * sending oversized fields, the same refusal thousands of times, many
 * different refusals, with the database slow; a scoped reader.
 */

let core: Core;
useCoreDatabase((c) => {
  core = c;
});

const HUGE = "x".repeat(30_000);
const HUGE_ID = `key_${"A".repeat(30_000)}`;

async function rows(): Promise<AuditEvent[]> {
  await core.auditRecorder.flush();
  return listAuditEvents(core.db, {}, 10_000);
}

beforeEach(async () => {
  await core.auditRecorder.flush();
  await core.db.deleteFrom("audit_log").execute();
});

function auditLog() {
  return createAuditLog({ db: core.db, policy: () => core.policy, now: core.clock.now, recorder: core.auditRecorder });
}

function resourceManager() {
  return createResourceManager({ ledger: core.resources, db: core.db, policy: () => core.policy, now: core.clock.now, recorder: core.auditRecorder });
}

describe(`oversized fields are refused before anything is recorded, on ${testDatabaseKind}`, () => {
  it("a reader's 30 KB list, rotate, id and audit-filter fields: invalid_argument, and every row is short", async () => {
    const reader = asKey((await createKey(core, { org: "flood", roles: ["reader"] })).key);
    const admin = asKey((await createKey(core, { org: "flood", roles: ["admin"] })).key);
    const { key } = await createKey(core, { org: "flood" });
    await core.auditRecorder.flush();
    await core.db.deleteFrom("audit_log").execute();
    const attempts = [
      ["list org", await core.keys.list(reader, { org: HUGE })],
      ["list namespace", await core.keys.list(reader, { namespace: HUGE })],
      ["rotate grace", await core.keys.rotate(admin, key.id, HUGE)],
      ["get id", await core.keys.get(reader, HUGE_ID)],
      ["revoke id", await core.keys.revoke(reader, HUGE_ID)],
      ["update id", await core.keys.update(reader, { id: HUGE_ID, name: "n" })],
      ["delete id", await core.keys.delete(reader, HUGE_ID)],
      ["reset-all org", await core.keys.resetAll(admin, HUGE)],
      ["audit org", await auditLog().list(admin, { org: HUGE })],
      ["audit namespace", await auditLog().list(admin, { namespace: HUGE })],
      ["audit key_id", await auditLog().list(admin, { keyId: HUGE })],
      ["resource list org", await resourceManager().list(admin, { org: HUGE })],
      ["resource list key_id", await resourceManager().list(admin, { keyId: HUGE })],
      ["resource claim kind", await resourceManager().claim(admin, { kind: HUGE, id: "sb-1" })],
      ["resource claim namespace", await resourceManager().claim(admin, { id: "sb-1", namespace: HUGE })],
      ["resource get id", await resourceManager().get(admin, undefined, HUGE)],
    ] as const;
    for (const [what, result] of attempts) {
      expect(result, what).toMatchObject({ ok: false, code: "invalid_argument" });
      if (!result.ok) expect(result.message.length, what).toBeLessThan(200);
    }
    const written = await rows();
    expect(written).toHaveLength(attempts.length);
    for (const row of written) {
      expect(JSON.stringify(row).length, `${row.action}: ${row.outcome}`).toBeLessThan(1_000);
      expect(row.outcome).toMatch(/^invalid: /);
    }
  });

  it("the belt: a row built with 30 KB fields is stored short and marked", async () => {
    await insertAuditEvents(core.db, [
      { at: core.clock.now(), actor: HUGE, action: "list", target: HUGE, newTarget: null, org: HUGE, namespace: HUGE, outcome: HUGE, detail: { org: HUGE, roles: Array(100).fill(HUGE) } },
    ]);
    const [row] = await rows();
    expect(JSON.stringify(row).length).toBeLessThan(8_000);
    expect(row!.target).toBe(`${"x".repeat(128)}…(+${30_000 - 128} bytes)`);
    expect((row!.detail.roles as string[]).at(-1)).toBe("…(+68 more)");
  });
});

describe(`repeated refusals are collapsed, on ${testDatabaseKind}`, () => {
  it("2,000 identical refused lists from a reader: one row at once, one `repeated: 1999` when the window closes", async () => {
    const reader = asKey((await createKey(core, { org: "repeat", roles: ["reader"] })).key);
    await rows();
    await core.db.deleteFrom("audit_log").execute();
    for (let i = 0; i < 2_000; i++) {
      expect(await core.keys.list(reader, { org: "other" })).toMatchObject({ ok: false, code: "permission_denied" });
    }
    const first = await rows();
    expect(first).toHaveLength(1);
    expect(first[0]).toMatchObject({ actor: reader.kind === "key" ? reader.key.id : "", action: "list", outcome: "denied: permission_denied: API key is not allowed to GET keys" });
    core.clock.advance(60_000);
    const closed = await rows();
    expect(closed).toHaveLength(2);
    expect(closed[0]!.detail).toMatchObject({ repeated: 1999 });
    expect(core.auditRecorder.stats().groups).toBe(0);
  });

  it("many different refusals: at most maxGroups tracked, then 1 in K written and the rest counted", async () => {
    const dropped: { dropped: number; sampledOut: number }[] = [];
    const recorder = createAuditRecorder({ db: core.db, now: core.clock.now, flushEveryMs: 0, maxGroups: 10, sampleEvery: 5, onDropped: (c) => dropped.push(c) });
    for (let i = 0; i < 100; i++) recorder.refused(refusal(`key_${String(i).padStart(20, "0")}`));
    expect(recorder.stats()).toMatchObject({ groups: 10, sampledOut: 72 });
    await recorder.flush();
    const written = await rows();
    expect(written).toHaveLength(10 + 18);
    expect(written.filter((r) => r.detail.sampled === "1 in 5")).toHaveLength(18);
    expect(dropped).toEqual([{ dropped: 0, sampledOut: 72 }]);
    await recorder.stop();
  });

  it("the queue is bounded: past it rows are dropped and counted, never held", async () => {
    const dropped: { dropped: number; sampledOut: number }[] = [];
    const recorder = createAuditRecorder({ db: core.db, now: core.clock.now, flushEveryMs: 0, maxQueue: 5, onDropped: (c) => dropped.push(c) });
    for (let i = 0; i < 20; i++) recorder.refused(refusal(`key_${String(i).padStart(20, "0")}`));
    expect(recorder.stats()).toMatchObject({ queued: 5, dropped: 15 });
    await recorder.stop();
    expect(await rows()).toHaveLength(5);
    expect(dropped).toEqual([{ dropped: 15, sampledOut: 0 }]);
  });

  it("a refusal is answered while the audit write is stuck; the row follows once the database answers", async () => {
    const gate = gateAuditInserts(core.db);
    const recorder = createAuditRecorder({ db: gate.db, now: core.clock.now, flushEveryMs: 0 });
    const keys = createKeyManager({ db: gate.db, policy: () => core.policy, cache: core.cache, keyPrefix: DEFAULT_KEY_PREFIX, now: core.clock.now, recorder });
    const reader = asKey((await createKey(core, { org: "stuck", roles: ["reader"] })).key);
    const call = keys.list(reader, { org: "other" }).then(() => "answered");
    const flushing = recorder.flush();
    expect(await Promise.race([call, nextMacrotask().then(() => "waiting")])).toBe("answered");
    gate.open();
    await flushing;
    await recorder.stop();
    expect((await rows()).filter((r) => r.action === "list")).toHaveLength(1);
  });
});

describe(`a namespace-scoped key reads only its namespace's audit rows, on ${testDatabaseKind}`, () => {
  it("rows about keys in namespace b are invisible to a key of namespace a, and asking for b is refused", async () => {
    const scoped = asKey((await createKey(core, { org: "nsorg", namespace: "a", roles: ["admin"] })).key);
    const whole = asKey((await createKey(core, { org: "nsorg", roles: ["admin"] })).key);
    const inA = await createKey(core, { org: "nsorg", namespace: "a" });
    const inB = await createKey(core, { org: "nsorg", namespace: "b" });
    unwrap(await core.keys.revoke(LOCAL, inB.key.id));
    unwrap(await core.keys.revoke(LOCAL, inA.key.id));
    const audit = auditLog();
    const seen = unwrap(await audit.list(scoped, {})).events;
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.every((e) => e.namespace === "a")).toBe(true);
    expect(seen.some((e) => e.target === inB.key.id)).toBe(false);
    expect(seen.filter((e) => e.target === inA.key.id).map((e) => e.action)).toEqual(["revoke", "create"]);
    expect(unwrap(await audit.list(scoped, { keyId: inB.key.id })).events).toEqual([]);
    expect(await audit.list(scoped, { namespace: "b" })).toMatchObject({ ok: false, code: "permission_denied", message: 'a key scoped to namespace "a" may read only that namespace\'s audit events' });
    // A key of every namespace sees both, and may narrow to one.
    const all = unwrap(await audit.list(whole, {})).events;
    expect(all.some((e) => e.target === inB.key.id)).toBe(true);
    expect(unwrap(await audit.list(whole, { namespace: "b" })).events.map((e) => [e.action, e.target])).toEqual([
      ["revoke", inB.key.id],
      ["create", inB.key.id],
    ]);
  });

  it("a scoped key's own refusals are rows of its namespace; resource rows carry theirs", async () => {
    const scoped = asKey((await createKey(core, { org: "nsorg2", namespace: "a", roles: ["writer"] })).key);
    expect((await core.keys.list(scoped, {})).ok).toBe(false);
    unwrap(await resourceManager().claim(LOCAL, { id: "sb-ns-b", org: "nsorg2", namespace: "b" }));
    const written = await rows();
    const refused = written.find((r) => r.action === "list");
    const claim = written.find((r) => r.action === "resource.claim");
    expect(refused).toMatchObject({ action: "list", namespace: "a" });
    expect(claim).toMatchObject({ action: "resource.claim", namespace: "b" });
  });
});

describe(`audit retention, on ${testDatabaseKind}`, () => {
  it("rows older than the retention go, in small batches with a pause between; newer ones stay", async () => {
    const now = core.clock.now().getTime();
    await insertAuditEvents(core.db, [
      ...Array.from({ length: 7 }, (_, i) => refusal(`key_${String(i).padStart(20, "0")}`, new Date(now - 100 * DAY - i))),
      refusal("key_recent0000000000000", new Date(now - 89 * DAY)),
    ]);
    let pauses = 0;
    const pruned: number[] = [];
    const pruner = createAuditPruner({
      db: core.db,
      retentionMs: 90 * DAY,
      now: core.clock.now,
      batchSize: 3,
      pause: async () => void pauses++,
      onPruned: (count) => pruned.push(count),
    });
    expect(await pruner.pruneNow()).toBe(7);
    expect(pauses).toBe(2);
    expect(pruned).toEqual([7]);
    expect((await rows()).map((r) => r.target)).toEqual(["key_recent0000000000000"]);
    // A day later that row is past the retention too.
    core.clock.advance(DAY + 1);
    expect(await pruner.pruneNow()).toBe(1);
  });

  it("off keeps everything; start prunes at once and stop ends it", async () => {
    await insertAuditEvents(core.db, [refusal("key_old00000000000000000", new Date(core.clock.now().getTime() - 1000 * DAY))]);
    const off = createAuditPruner({ db: core.db, retentionMs: null, now: core.clock.now });
    expect(await off.pruneNow()).toBe(0);
    expect(await rows()).toHaveLength(1);
    let done!: () => void;
    const pruned = new Promise<void>((resolve) => (done = resolve));
    const on = createAuditPruner({ db: core.db, retentionMs: 90 * DAY, now: core.clock.now, onPruned: () => done() });
    on.start();
    await pruned;
    await on.stop();
    expect(await rows()).toEqual([]);
  });
});

function refusal(target: string, at: Date = core.clock.now()): NewAuditEvent {
  return { at, actor: "key_attacker0000000000", action: "get", target, newTarget: null, org: "flood", namespace: null, outcome: `denied: not_found: key ${target} not found`, detail: {} };
}

const nextMacrotask = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Inserts into audit_log run, but their answers wait until `open()`: a database stuck behind a flood. */
function gateAuditInserts(db: Kysely<Database>) {
  let release!: () => void;
  const opened = new Promise<void>((resolve) => (release = resolve));
  const gate = { open: () => release(), db };
  const audited = new WeakSet<object>();
  const plugin: KyselyPlugin = {
    transformQuery({ node, queryId }: PluginTransformQueryArgs): RootOperationNode {
      if (node.kind === "InsertQueryNode" && JSON.stringify(node.into).includes('"audit_log"')) audited.add(queryId);
      return node;
    },
    async transformResult({ result, queryId }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
      if (audited.has(queryId)) await opened;
      return result;
    },
  };
  gate.db = db.withPlugin(plugin);
  return gate;
}
