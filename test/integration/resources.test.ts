import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { ManageResult, Principal } from "../../src/core/manage/access.js";
import { createResourceManager, type ResourceManager } from "../../src/core/manage/resource-manager.js";
import type { ResourceLedger } from "../../src/core/resources/resource-ledger.js";
import { listAuditEvents } from "../../src/core/audit/audit.repository.js";
import type { AuditEvent } from "../../src/core/audit/audit-event.js";
import { testDatabaseKind } from "../support/database.js";
import { asKey, createKey, LOCAL, unwrap, useCoreDatabase, type Core } from "./test-core.js";

/**
 * ResourceService's rules in the core: a key claims, sees, lists and
 * releases only its own org's resources (its namespace's, when scoped); a
 * platform key (org "*") and the local operator see all; out of scope is
 * "not found", as missing is; no escalation; every change and refusal in the
 * audit log. Cube's sandbox.deleted (releaseFromEvent) is idempotent.
 */

let core: Core;
let ledger: ResourceLedger;
let resources: ResourceManager;
const who = {} as Record<"acme" | "acmeAlpha" | "acmeReader" | "globex" | "platform", Principal>;

useCoreDatabase((c) => {
  core = c;
});

beforeAll(async () => {
  ledger = core.resources;
  resources = createResourceManager({ ledger, db: core.db, policy: () => core.policy, now: core.clock.now, recorder: core.auditRecorder });
  const make = async (org: string, roles: string[], namespace = "*") => asKey((await createKey(core, { org, roles, namespace })).key);
  who.acme = await make("acme", ["admin"]);
  who.acmeAlpha = await make("acme", ["admin"], "team-alpha");
  who.acmeReader = await make("acme", ["reader"]);
  who.globex = await make("globex", ["admin"]);
  who.platform = await make("*", ["admin"]);
});

// Refusals are written in the background: each test starts with the earlier ones written,
// so a row it reads is one it caused.
beforeEach(() => core.auditRecorder.flush());

function refused<T>(result: ManageResult<T>): string {
  if (result.ok) return expect.fail(`expected a refusal, got ${JSON.stringify(result.value)}`);
  return `${result.code}: ${result.message}`;
}

async function lastAudit(): Promise<AuditEvent> {
  await core.auditRecorder.flush();
  const [event] = await listAuditEvents(core.db, {}, 1);
  return event!;
}

const keyId = (p: Principal) => (p.kind === "key" ? p.key.id : "local");

describe(`ResourceService rules, on ${testDatabaseKind}`, () => {
  it("a key claims for its own org and namespace; a retry answers the same entry; the claim is audited", async () => {
    const first = unwrap(await resources.claim(who.acme, { id: "sb-acme-1" }));
    expect(first.created).toBe(true);
    // A key of every namespace claims into "default": a resource lives in one namespace.
    expect(first.resource).toMatchObject({ kind: "sandboxes", id: "sb-acme-1", org: "acme", namespace: "default", keyId: keyId(who.acme), releasedAt: null });
    expect(await lastAudit()).toMatchObject({ actor: keyId(who.acme), action: "resource.claim", target: "sandboxes/sb-acme-1", org: "acme", outcome: "ok" });
    const again = unwrap(await resources.claim(who.acme, { id: "sb-acme-1" }));
    expect(again).toEqual({ resource: first.resource, created: false });
    const alpha = unwrap(await resources.claim(who.acmeAlpha, { id: "sb-alpha-1" }));
    expect(alpha.resource).toMatchObject({ org: "acme", namespace: "team-alpha" });
  });

  it("another org's resource is not found, exactly as a missing one; a claim of it says only that it is taken", async () => {
    unwrap(await resources.claim(who.globex, { id: "sb-globex-1" }));
    const other = refused(await resources.get(who.acme, undefined, "sb-globex-1"));
    const missing = refused(await resources.get(who.acme, undefined, "sb-nowhere"));
    expect(other).toBe("not_found: sandboxes sb-globex-1 not found");
    expect(missing).toBe("not_found: sandboxes sb-nowhere not found");
    expect(refused(await resources.release(who.acme, undefined, "sb-globex-1"))).toBe("not_found: sandboxes sb-globex-1 not found");
    expect(refused(await resources.claim(who.acme, { id: "sb-globex-1" }))).toBe("already_exists: sandboxes sb-globex-1 is already claimed");
    expect(await ledger.owner({ kind: "sandboxes", id: "sb-globex-1" })).toMatchObject({ org: "globex" });
    // A namespace-scoped key does not see its org's other namespaces either.
    expect(refused(await resources.get(who.acmeAlpha, "sandboxes", "sb-acme-1"))).toMatch(/^not_found/);
  });

  it.each([
    ["another org", () => resources.claim(who.acme, { id: "sb-x1", org: "globex" }), 'permission_denied: a key may not claim resources for another org ("globex")'],
    ["a namespace outside its own", () => resources.claim(who.acmeAlpha, { id: "sb-x2", namespace: "team-beta" }), 'permission_denied: a key scoped to namespace "team-alpha" may not claim into namespace "team-beta"'],
    ["every namespace", () => resources.claim(who.acmeAlpha, { id: "sb-x3", namespace: "*" }), 'invalid_argument: invalid namespace "*": 1-64 characters: letters, digits, and . _ : - (not first) (a resource lives in one namespace)'],
    ["without the policy's grant (reader)", () => resources.claim(who.acmeReader, { id: "sb-x4" }), "permission_denied: API key is not allowed to POST resources"],
    ["another org's list", () => resources.list(who.acme, { org: "globex" }), "permission_denied: a key may list only its own org's resources"],
  ] as [string, () => Promise<ManageResult<unknown>>, string][])("escalation is refused and audited: %s", async (_, attempt, message) => {
    expect(refused(await attempt())).toBe(message);
    expect((await lastAudit()).outcome).toBe(message.startsWith("invalid_argument: ") ? `invalid: ${message.slice(18)}` : `denied: ${message}`);
    expect(await ledger.get({ kind: "sandboxes", id: "sb-x1" })).toBeNull();
  });

  it("bad ids and kinds are refused as invalid and audited", async () => {
    expect(refused(await resources.claim(who.acme, { id: "" }))).toBe("invalid_argument: a resource id is required");
    expect(refused(await resources.claim(who.acme, { id: "a/b" }))).toBe('invalid_argument: invalid resource id "a/b"');
    expect(refused(await resources.get(who.acme, "Sand Boxes", "sb-1"))).toBe('invalid_argument: invalid resource kind "Sand Boxes"');
    expect((await lastAudit()).outcome).toBe('invalid: invalid resource kind "Sand Boxes"');
  });

  it("a platform key and the operator claim for any org (naming it) and see every org", async () => {
    expect(refused(await resources.claim(who.platform, { id: "sb-p" }))).toMatch(/^invalid_argument: an org is required/);
    const forGlobex = unwrap(await resources.claim(who.platform, { id: "sb-platform-globex", org: "globex", namespace: "team-g" }));
    expect(forGlobex.resource).toMatchObject({ org: "globex", namespace: "team-g", keyId: keyId(who.platform) });
    expect(unwrap(await resources.get(who.platform, undefined, "sb-acme-1")).org).toBe("acme");
    expect(unwrap(await resources.get(LOCAL, undefined, "sb-globex-1")).org).toBe("globex");
    const all = unwrap(await resources.list(LOCAL, { pageSize: 100 })).resources.map((r) => r.id);
    expect(all).toEqual(expect.arrayContaining(["sb-acme-1", "sb-alpha-1", "sb-globex-1", "sb-platform-globex"]));
  });

  it("list: own org only, scoped namespace only, paged", async () => {
    for (let i = 0; i < 5; i++) unwrap(await resources.claim(who.acme, { id: `sb-page-${i}` }));
    const acme = unwrap(await resources.list(who.acme, { pageSize: 1000 })).resources;
    expect(new Set(acme.map((r) => r.org))).toEqual(new Set(["acme"]));
    expect(acme.map((r) => r.id)).toContain("sb-alpha-1");
    const alpha = unwrap(await resources.list(who.acmeAlpha, {})).resources;
    expect(alpha.map((r) => r.id)).toEqual(["sb-alpha-1"]);
    const seen: string[] = [];
    let token = "";
    do {
      const page = unwrap(await resources.list(who.acme, { pageSize: 2, pageToken: token }));
      expect(page.resources.length).toBeLessThanOrEqual(2);
      seen.push(...page.resources.map((r) => r.id));
      token = page.nextPageToken;
    } while (token !== "");
    expect(seen.sort()).toEqual(acme.map((r) => r.id).sort());
  });

  it("release: once (audited), then idempotent; released entries listed only when asked", async () => {
    unwrap(await resources.claim(who.acme, { id: "sb-gone" }));
    const first = unwrap(await resources.release(who.acme, undefined, "sb-gone"));
    expect(first.released).toBe(true);
    expect(first.resource.releasedAt).not.toBeNull();
    expect(await lastAudit()).toMatchObject({ action: "resource.release", target: "sandboxes/sb-gone", org: "acme", outcome: "ok" });
    expect(unwrap(await resources.release(who.acme, undefined, "sb-gone")).released).toBe(false);
    expect(await ledger.owner({ kind: "sandboxes", id: "sb-gone" })).toBeNull();
    const live = unwrap(await resources.list(who.acme, { pageSize: 1000 })).resources.map((r) => r.id);
    const withReleased = unwrap(await resources.list(who.acme, { pageSize: 1000, includeReleased: true })).resources.map((r) => r.id);
    expect(live).not.toContain("sb-gone");
    expect(withReleased).toContain("sb-gone");
  });

  it("releaseFromEvent (Cube's sandbox.deleted): releases once, audited with the event id; duplicates, unknown ids and stale events change nothing", async () => {
    unwrap(await resources.claim(who.globex, { id: "sb-hook" }));
    const before = await ledger.countLive("sandboxes", { org: "globex" });
    const event = { source: "cube-webhook", eventId: "d-1", event: "sandbox.deleted", at: core.clock.now() };
    expect((await resources.releaseFromEvent({ kind: "sandboxes", id: "sb-hook" }, event)).outcome).toBe("released");
    expect(await ledger.countLive("sandboxes", { org: "globex" })).toBe(before - 1);
    expect(await lastAudit()).toMatchObject({ actor: "cube-webhook", action: "resource.release", target: "sandboxes/sb-hook", org: "globex", detail: expect.objectContaining({ event_id: "d-1" }) });
    expect((await resources.releaseFromEvent({ kind: "sandboxes", id: "sb-hook" }, event)).outcome).toBe("already_released");
    expect((await resources.releaseFromEvent({ kind: "sandboxes", id: "sb-never" }, event)).outcome).toBe("unknown");
    unwrap(await resources.claim(who.globex, { id: "sb-later" }));
    // Within the clocks' tolerance an earlier date is not stale (claimed and deleted within seconds).
    unwrap(await resources.claim(who.globex, { id: "sb-quick" }));
    expect((await resources.releaseFromEvent({ kind: "sandboxes", id: "sb-quick" }, { ...event, at: new Date(core.clock.now().getTime() - 30_000) })).outcome).toBe("released");
    const stale = await resources.releaseFromEvent({ kind: "sandboxes", id: "sb-later" }, { ...event, at: new Date(core.clock.now().getTime() - 10 * 60_000) });
    expect(stale.outcome).toBe("stale");
    expect(await ledger.owner({ kind: "sandboxes", id: "sb-later" })).not.toBeNull();
  });
});
