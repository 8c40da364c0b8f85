import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuditService } from "../../gen/keygate/v1/audit_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { ResourceService } from "../../gen/keygate/v1/resource_pb.js";
import { createBudgetConsumer } from "../../src/core/authorize/consume-budgets.js";
import { MAX_PARENT_BUDGETS } from "../../src/core/keys/key-budgets.js";
import { createAuditLog } from "../../src/core/manage/audit-log.js";
import { createResourceManager } from "../../src/core/manage/resource-manager.js";
import { createAuditService } from "../../src/entries/rpc/audit-service.js";
import { createKeyService } from "../../src/entries/rpc/key-service.js";
import { createPrincipalOf } from "../../src/entries/rpc/principal.js";
import { createResourceService } from "../../src/entries/rpc/resource-service.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { asKey, check, createCore, createKey, LOCAL, unwrap, type Core } from "./test-core.js";

/**
 * Shared budgets (issue 14, item 3): a rate-limited key cannot multiply its
 * budget by minting keys. Each test is the attack: before budgets were
 * shared, every child, grandchild and rotation had a fresh budget of its own.
 * Windows are long (1m, 1h) and tests count `remaining`, never wait.
 */

let database: TestDatabase;
let core: Core;
let defaulted: Core;

beforeAll(async () => {
  database = await createTestDatabase();
  core = await createCore(database.store.db);
  defaulted = await createCore(database.store.db, { clock: core.clock, defaultRateLimit: { points: 3, windowSeconds: 3600 } });
});

afterAll(async () => {
  await defaulted?.close();
  await core?.close();
  await database?.dispose();
});

const get = (c: Core, key: string) => check(c, key, "GET", "/sandboxes");

async function allowedOf(c: Core, keys: readonly string[], tries: number): Promise<number> {
  let allowed = 0;
  for (const key of keys) for (let i = 0; i < tries; i++) if ((await get(c, key)).allowed) allowed++;
  return allowed;
}

describe("children share their creator's budget", () => {
  it("a 10/1m admin that used its budget gets 0 more calls through five children made in the same minute (was 50)", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "10/1m" });
    expect(await allowedOf(core, [admin.plaintext], 12)).toBe(10);
    const children = [];
    for (let i = 0; i < 5; i++) children.push(unwrap(await core.keys.create(asKey(admin.key), { roles: ["reader"] })));
    expect(children[0]!.key.parentBudgets).toEqual([{ id: admin.key.id, limit: { points: 10, windowSeconds: 60 } }]);
    expect(await allowedOf(core, children.map((c) => c.plaintext), 10)).toBe(0);
    const denied = await get(core, children[0]!.plaintext);
    expect(denied).toMatchObject({ allowed: false, reason: "rate_limited", message: "rate limit exceeded", rateLimit: { limit: 10, remaining: 0 } });
  });

  it("the admin and its children together get exactly the admin's budget; headers show the tightest", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "10/1h" });
    const child = unwrap(await core.keys.create(asKey(admin.key), { roles: ["reader"], rateLimit: "8/1h" }));
    // The child's own 8 and the admin's 10: after one call 7 and 9 remain; the child is told 7.
    expect(await get(core, child.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 8, remaining: 7 } });
    expect(await allowedOf(core, [admin.plaintext], 5)).toBe(5);
    // The admin's budget has 4 left: it is now the tightest.
    expect(await get(core, child.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 10, remaining: 3 } });
    expect(await allowedOf(core, [child.plaintext, admin.plaintext], 5)).toBe(3);
  });

  it("a grandchild is bounded by its grandparent", async () => {
    const grand = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "5/1h" });
    const parent = unwrap(await core.keys.create(asKey(grand.key), { roles: ["admin"] }));
    const child = unwrap(await core.keys.create(asKey(parent.key), { roles: ["reader"] }));
    expect(child.key.parentBudgets.map((b) => b.id)).toEqual([grand.key.id, parent.key.id]);
    expect(await allowedOf(core, [grand.plaintext], 3)).toBe(3);
    expect(await allowedOf(core, [child.plaintext, parent.plaintext], 5)).toBe(2);
  });

  it("a child over its own limit does not drain its creator's budget (refused calls are given back)", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "5/1h" });
    const child = unwrap(await core.keys.create(asKey(admin.key), { roles: ["reader"], rateLimit: "1/1h" }));
    expect(await allowedOf(core, [child.plaintext], 20)).toBe(1);
    expect(await get(core, admin.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 5, remaining: 3 } });
  });

  it("keys made by the operator or an unlimited key carry no budget above them", async () => {
    const free = await createKey(core, { org: "acme", roles: ["admin"] });
    const child = unwrap(await core.keys.create(asKey(free.key), { roles: ["reader"], rateLimit: "2/1h" }));
    expect(free.key).toMatchObject({ budgetId: free.key.id, parentBudgets: [] });
    expect(child.key).toMatchObject({ budgetId: child.key.id, parentBudgets: [] });
  });

  it("a key held to the server default passes the default on as a shared budget", async () => {
    const admin = await createKey(defaulted, { org: "acme", roles: ["admin"] });
    expect(await allowedOf(defaulted, [admin.plaintext], 3)).toBe(3);
    const child = unwrap(await defaulted.keys.create(asKey(admin.key), { roles: ["reader"] }));
    expect(child.key.parentBudgets).toEqual([{ id: admin.key.id, limit: { points: 3, windowSeconds: 3600 } }]);
    expect(await allowedOf(defaulted, [child.plaintext], 3)).toBe(0);
  });

  it(`chains stop ${MAX_PARENT_BUDGETS} rate-limited keys deep, with a clear message`, async () => {
    let minter = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "1000/1h" });
    for (let depth = 1; depth < MAX_PARENT_BUDGETS; depth++) minter = unwrap(await core.keys.create(asKey(minter.key), { roles: ["admin"] }));
    const last = unwrap(await core.keys.create(asKey(minter.key), { roles: ["admin"] }));
    expect(last.key.parentBudgets).toHaveLength(MAX_PARENT_BUDGETS);
    const refused = await core.keys.create(asKey(last.key), { roles: ["reader"] });
    expect(refused).toMatchObject({ ok: false, code: "permission_denied" });
    expect(!refused.ok && refused.message).toContain(`more than ${MAX_PARENT_BUDGETS} rate-limited keys deep`);
  });
});

describe("rotation", () => {
  it("the new key shares its predecessor's budget during the grace period (was a fresh one)", async () => {
    const old = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "4/1h" });
    expect(await allowedOf(core, [old.plaintext], 3)).toBe(3);
    const rotated = unwrap(await core.keys.rotate(LOCAL, old.key.id, "1h"));
    expect(rotated.key.budgetId).toBe(old.key.id);
    expect(await get(core, rotated.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 4, remaining: 0 } });
    expect(await get(core, rotated.plaintext)).toMatchObject({ reason: "rate_limited" });
    expect(await get(core, old.plaintext)).toMatchObject({ reason: "rate_limited" });
    // And a rotation of the rotation still shares it.
    const again = unwrap(await core.keys.rotate(LOCAL, rotated.key.id, ""));
    expect(again.key.budgetId).toBe(old.key.id);
    expect(await get(core, again.plaintext)).toMatchObject({ reason: "rate_limited" });
  });

  it("keeps the key's ancestors", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "2/1h" });
    const child = unwrap(await core.keys.create(asKey(admin.key), { roles: ["reader"] }));
    const rotated = unwrap(await core.keys.rotate(LOCAL, child.key.id, "1h"));
    expect(rotated.key.parentBudgets).toEqual(child.key.parentBudgets);
    expect(await allowedOf(core, [admin.plaintext, child.plaintext, rotated.plaintext], 2)).toBe(2);
  });

  it("by a limited key binds the new key to the rotator's budget too", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "3/1h" });
    const other = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "3/1h" });
    expect(await allowedOf(core, [admin.plaintext], 3)).toBe(3);
    const taken = unwrap(await core.keys.rotate(asKey(admin.key), other.key.id, "0s"));
    expect(taken.key.parentBudgets).toEqual([{ id: admin.key.id, limit: { points: 3, windowSeconds: 3600 } }]);
    expect(await get(core, taken.plaintext)).toMatchObject({ reason: "rate_limited" });
  });
});

describe("a key's own limit", () => {
  it("cannot be changed by the key itself, or by its rotation (a changed limit is a fresh bucket)", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "10/1m" });
    expect(await allowedOf(core, [admin.plaintext], 10)).toBe(10);
    const lowered = await core.keys.update(asKey(admin.key), { id: admin.key.id, rateLimit: "9/1m" });
    expect(lowered).toMatchObject({ ok: false, code: "permission_denied" });
    expect(!lowered.ok && lowered.message).toContain("may not change the rate limit of a key that shares its budget");
    const rotated = unwrap(await core.keys.rotate(LOCAL, admin.key.id, "1h"));
    expect(await core.keys.update(asKey(admin.key), { id: rotated.key.id, rateLimit: "9/1m" })).toMatchObject({ ok: false, code: "permission_denied" });
    expect(await allowedOf(core, [admin.plaintext, rotated.plaintext], 3)).toBe(0);
    // Anything else about itself it may still change; the operator may change its limit.
    expect(unwrap(await core.keys.update(asKey(admin.key), { id: admin.key.id, name: "renamed", rateLimit: "10/1m" })).name).toBe("renamed");
    unwrap(await core.keys.update(LOCAL, { id: admin.key.id, rateLimit: "9/1m" }));
  });
});

describe("ManageKey, AuditService and ResourceService calls count against the caller's budgets", () => {
  const silent = createLogger("error", () => {});
  function clients(c: Core) {
    const consumeBudgets = createBudgetConsumer(c.rateLimiter, null);
    const principalOf = createPrincipalOf({ lookupKey: c.lookupKey, credentialPriority: ["authorization", "x-api-key"], dev: false, localOperator: false, consumeBudgets });
    const transport = createRouterTransport((router) => {
      router.service(KeyService, createKeyService({ keys: c.keys, principalOf, log: silent }));
      router.service(AuditService, createAuditService({ audit: createAuditLog({ db: c.db, policy: () => c.policy, now: c.clock.now, recorder: c.auditRecorder }), principalOf, log: silent }));
      router.service(ResourceService, createResourceService({ resources: createResourceManager({ ledger: c.resources, db: c.db, policy: () => c.policy, now: c.clock.now, recorder: c.auditRecorder }), principalOf, log: silent }));
    });
    return { keys: createClient(KeyService, transport), audit: createClient(AuditService, transport), resources: createClient(ResourceService, transport) };
  }
  const auth = (key: string) => ({ headers: { authorization: `Bearer ${key}` } });
  async function refusal(call: Promise<unknown>): Promise<ConnectError> {
    const error = await call.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ConnectError);
    return error as ConnectError;
  }

  it.each([
    ["ManageKey list", (c: ReturnType<typeof clients>, key: string) => c.keys.manageKey({ action: { case: "list", value: {} } }, auth(key))],
    ["ListAuditEvents", (c: ReturnType<typeof clients>, key: string) => c.audit.listAuditEvents({}, auth(key))],
    ["Resource List", (c: ReturnType<typeof clients>, key: string) => c.resources.list({}, auth(key))],
  ])("%s: a reader limited to 1/1h is refused with RESOURCE_EXHAUSTED after its first call", async (_, call) => {
    const reader = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "1/1h" });
    const c = clients(core);
    await call(c, reader.plaintext).catch((e: unknown) => {
      // The first call is counted whether or not the policy lets a reader make it.
      if (!(e instanceof ConnectError) || e.code !== Code.PermissionDenied) throw e;
    });
    const error = await refusal(call(c, reader.plaintext));
    expect(error.code).toBe(Code.ResourceExhausted);
    expect(error.rawMessage).toBe("rate limit exceeded");
    expect(Number(error.metadata.get("retry-after"))).toBeGreaterThan(3590);
    // And its decisions share that budget.
    expect(await get(core, reader.plaintext)).toMatchObject({ reason: "rate_limited" });
  });

  it("an admin that used its budget on decisions cannot create children at all", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "10/1m" });
    expect(await allowedOf(core, [admin.plaintext], 10)).toBe(10);
    const error = await refusal(clients(core).keys.manageKey({ action: { case: "create", value: { roles: ["reader"] } } }, auth(admin.plaintext)));
    expect(error.code).toBe(Code.ResourceExhausted);
    expect(unwrap(await core.keys.list(LOCAL, { org: "acme" })).keys.filter((k) => k.createdBy === admin.key.id)).toEqual([]);
  });

  it("a management call by a child takes a point from its creator's budget too", async () => {
    const admin = await createKey(core, { org: "acme", roles: ["admin"], rateLimit: "3/1h" });
    const child = unwrap(await core.keys.create(asKey(admin.key), { roles: ["admin"], rateLimit: "3/1h" }));
    const c = clients(core);
    await c.keys.manageKey({ action: { case: "get", value: { id: child.key.id } } }, auth(child.plaintext));
    await c.keys.manageKey({ action: { case: "get", value: { id: child.key.id } } }, auth(child.plaintext));
    expect(await get(core, admin.plaintext)).toMatchObject({ allowed: true, rateLimit: { limit: 3, remaining: 0 } });
  });

  it("the local operator and dev mode are never limited", async () => {
    const reader = await createKey(core, { org: "acme", roles: ["reader"], rateLimit: "1/1h" });
    expect(await get(core, reader.plaintext)).toMatchObject({ allowed: true });
    const consumeBudgets = createBudgetConsumer(core.rateLimiter, null);
    const context = { requestHeader: new Headers({ authorization: `Bearer ${reader.plaintext}` }) } as Parameters<ReturnType<typeof createPrincipalOf>>[0];
    for (const mode of [{ dev: true, localOperator: false }, { dev: false, localOperator: true }]) {
      const principalOf = createPrincipalOf({ lookupKey: core.lookupKey, credentialPriority: ["authorization"], consumeBudgets, ...mode });
      for (let i = 0; i < 3; i++) expect(await principalOf(context)).toEqual({ kind: "local" });
    }
  });
});
