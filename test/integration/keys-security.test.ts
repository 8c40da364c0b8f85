import { beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_KEY_PREFIX } from "../../src/core/keys/key-format.js";
import { createKeyLookup } from "../../src/core/keys/key-lookup.js";
import type { CreatedKey, CreateKeyInput } from "../../src/core/manage/key-manager.js";
import type { ManageResult, Principal } from "../../src/core/manage/access.js";
import type { KeyRecord } from "../../src/core/keys/key-record.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { asKey, check, createCore, createKey, DAY, HOUR, LOCAL, unwrap, type Core, useCoreDatabase } from "./test-core.js";

/**
 * Key management by key callers: a key sees and manages only its own org
 * (and namespace, when scoped), never mints or updates a key with more power
 * than itself, and the policy keeps readers and writers out entirely.
 */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

function refused<T>(result: ManageResult<T>): { code: string; message: string } {
  if (result.ok) return expect.fail(`expected a refusal, got ${JSON.stringify(result.value)}`);
  return { code: result.code, message: result.message };
}

async function works(key: CreatedKey): Promise<boolean> {
  return (await check(core, key.plaintext, "GET", "/sandboxes")).allowed;
}

async function stored(id: string): Promise<KeyRecord> {
  return unwrap(await core.keys.get(LOCAL, id));
}

async function keysIn(org: string): Promise<number> {
  return unwrap(await core.keys.list(LOCAL, { org, pageSize: 1000 })).keys.length;
}

/** Every management action, as a function of a principal and a target key id. */
const ACTIONS: Record<string, (principal: Principal, id: string) => Promise<ManageResult<unknown>>> = {
  get: (p, id) => core.keys.get(p, id),
  update: (p, id) => core.keys.update(p, { id, name: "taken over" }),
  "update enabled": (p, id) => core.keys.update(p, { id, enabled: false }),
  revoke: (p, id) => core.keys.revoke(p, id),
  rotate: (p, id) => core.keys.rotate(p, id, "0s"),
  delete: (p, id) => core.keys.delete(p, id),
};

describe(`org isolation on ${testDatabaseKind}`, () => {
  let adminA: CreatedKey;
  let targetB: CreatedKey;

  beforeAll(async () => {
    adminA = await createKey(core, { name: "admin a", org: "iso-a", roles: ["admin"] });
    await createKey(core, { name: "writer a", org: "iso-a", roles: ["writer"] });
    await createKey(core, { name: "admin b", org: "iso-b", roles: ["admin"] });
    targetB = await createKey(core, { name: "target b", org: "iso-b", roles: ["writer"] });
  });

  it.each(Object.keys(ACTIONS))("an admin of org A cannot %s a key of org B: it does not exist for it", async (action) => {
    const { code, message } = refused(await ACTIONS[action]!(asKey(adminA.key), targetB.key.id));
    expect(code).toBe("not_found");
    expect(message).toBe(`key ${targetB.key.id} not found`);
    expect(await stored(targetB.key.id)).toMatchObject({ name: "target b", enabled: true });
    expect(await works(targetB)).toBe(true);
    expect(await keysIn("iso-b")).toBe(2);
  });

  it("listing org B is refused, and an unfiltered list shows only org A", async () => {
    expect(refused(await core.keys.list(asKey(adminA.key), { org: "iso-b" }))).toEqual({ code: "permission_denied", message: "a key may list only its own org's keys" });
    const page = unwrap(await core.keys.list(asKey(adminA.key), { pageSize: 1000 }));
    expect(page.keys.map((k) => k.org)).toEqual(["iso-a", "iso-a"]);
    expect(unwrap(await core.keys.list(asKey(adminA.key), { org: "iso-a" })).keys).toHaveLength(2);
  });

  it("creating a key in org B is refused", async () => {
    const { code, message } = refused(await core.keys.create(asKey(adminA.key), { org: "iso-b", roles: ["reader"] }));
    expect(code).toBe("permission_denied");
    expect(message).toContain('another org ("iso-b")');
    expect(await keysIn("iso-b")).toBe(2);
  });

  it("a key created by an org A admin lands in org A and names its creator", async () => {
    const { key } = unwrap(await core.keys.create(asKey(adminA.key), { name: "child" }));
    expect(key).toMatchObject({ org: "iso-a", namespace: "*", roles: ["admin"], createdBy: adminA.key.id });
  });

  it("resetting org B is refused, and org B's keys keep working", async () => {
    expect(refused(await core.keys.resetAll(asKey(adminA.key), "iso-b"))).toEqual({ code: "permission_denied", message: "a key may reset only its own org's keys" });
    expect(await works(targetB)).toBe(true);
  });
});

describe("the policy keeps readers and writers out of key management", () => {
  let victim: CreatedKey;
  const callers: Record<string, CreatedKey> = {};

  beforeAll(async () => {
    callers.reader = await createKey(core, { org: "pol", roles: ["reader"] });
    callers.writer = await createKey(core, { org: "pol", roles: ["writer"] });
    victim = await createKey(core, { org: "pol", roles: ["reader"] });
  });

  const cases = (["reader", "writer"] as const).flatMap((role) => [
    [role, "create", "POST keys"],
    [role, "list", "GET keys"],
    [role, "get", "GET keys/:id"],
    [role, "update", "PATCH keys/:id"],
    [role, "revoke", "POST keys/:id/revoke"],
    [role, "rotate", "POST keys/:id/rotate"],
    [role, "delete", "DELETE keys/:id"],
    [role, "reset-all", "POST keys/reset-all"],
  ]);

  it.each(cases)("a %s key cannot %s", async (role, action, resource) => {
    const principal = asKey(callers[role]!.key);
    const id = victim.key.id;
    const run: Record<string, () => Promise<ManageResult<unknown>>> = {
      create: () => core.keys.create(principal, { roles: ["reader"] }),
      list: () => core.keys.list(principal, {}),
      get: () => core.keys.get(principal, id),
      update: () => core.keys.update(principal, { id, roles: ["reader"] }),
      revoke: () => core.keys.revoke(principal, id),
      rotate: () => core.keys.rotate(principal, id, ""),
      delete: () => core.keys.delete(principal, id),
      "reset-all": () => core.keys.resetAll(principal, ""),
    };
    const before = await keysIn("pol");
    expect(refused(await run[action]!())).toEqual({ code: "permission_denied", message: `API key is not allowed to ${resource.replace(":id", id)}` });
    expect(await keysIn("pol")).toBe(before);
    expect(await works(victim)).toBe(true);
    expect(await works(callers[role]!)).toBe(true);
  });
});

describe("no escalation", () => {
  let admin: CreatedKey;
  let alphaAdmin: CreatedKey;
  let expiringAdmin: CreatedKey;

  beforeAll(async () => {
    admin = await createKey(core, { name: "admin", org: "esc", roles: ["admin"] });
    alphaAdmin = await createKey(core, { name: "alpha admin", org: "esc", namespace: "team-alpha", roles: ["admin"] });
    expiringAdmin = await createKey(core, { name: "expiring admin", org: "esc", roles: ["admin"], expiry: { kind: "in", duration: "1d" } });
  });

  it.each<[string, () => CreatedKey, CreateKeyInput, string]>([
    ["a role it does not hold", () => admin, { roles: ["admin", "auditor"] }, "a key may not grant roles it does not hold: auditor"],
    ["every namespace, when scoped to team-alpha", () => alphaAdmin, { namespace: "*" }, 'a key scoped to namespace "team-alpha" may not act on namespace "*"'],
    ["another namespace, when scoped to team-alpha", () => alphaAdmin, { namespace: "team-beta" }, 'a key scoped to namespace "team-alpha" may not act on namespace "team-beta"'],
    ["no expiry, when it has one", () => expiringAdmin, { expiry: { kind: "never" } }, "a key may not grant an expiry later than its own"],
    ["a later expiry than its own", () => expiringAdmin, { expiry: { kind: "in", duration: "7d" } }, "a key may not grant an expiry later than its own"],
    ["a later absolute expiry than its own", () => expiringAdmin, { expiry: { kind: "at", at: new Date(Date.UTC(2040, 0, 1)) } }, "a key may not grant an expiry later than its own"],
  ])("a key cannot create a key with %s", async (_, caller, input, message) => {
    const before = await keysIn("esc");
    const { code, message: got } = refused(await core.keys.create(asKey(caller().key), { org: "esc", ...input }));
    expect(code).toBe("permission_denied");
    expect(got).toContain(message);
    expect(await keysIn("esc")).toBe(before);
  });

  it("a key may create keys with less or equal power, and defaults never exceed its own", async () => {
    const narrower = unwrap(await core.keys.create(asKey(admin.key), { roles: ["reader"], namespace: "team-beta", expiry: { kind: "in", duration: "1h" } }));
    expect(narrower.key).toMatchObject({ org: "esc", namespace: "team-beta", roles: ["reader"] });
    expect((await check(core, narrower.plaintext, "POST", "/sandboxes")).allowed).toBe(false);

    const scoped = unwrap(await core.keys.create(asKey(alphaAdmin.key), {}));
    expect(scoped.key).toMatchObject({ org: "esc", namespace: "team-alpha", roles: ["admin"] });

    const bounded = unwrap(await core.keys.create(asKey(expiringAdmin.key), {}));
    expect(bounded.key.expiresAt).toEqual(expiringAdmin.key.expiresAt);
    const sooner = unwrap(await core.keys.create(asKey(expiringAdmin.key), { expiry: { kind: "in", duration: "1h" } }));
    expect(sooner.key.expiresAt).toEqual(new Date(core.clock.now().getTime() + HOUR));
  });

  it("a key cannot give itself or another key a role it does not hold", async () => {
    const peer = unwrap(await core.keys.create(asKey(admin.key), { roles: ["writer"] }));
    for (const id of [admin.key.id, peer.key.id]) {
      const { code, message } = refused(await core.keys.update(asKey(admin.key), { id, roles: ["admin", "superuser"] }));
      expect(code).toBe("permission_denied");
      expect(message).toContain("superuser");
    }
    expect((await stored(peer.key.id)).roles).toEqual(["writer"]);
    // Raising a writer to admin, which it holds, is allowed.
    expect(unwrap(await core.keys.update(asKey(admin.key), { id: peer.key.id, roles: ["admin"] })).roles).toEqual(["admin"]);
  });

  it("a key with an expiry cannot lift or extend another key's expiry", async () => {
    const child = unwrap(await core.keys.create(asKey(expiringAdmin.key), { expiry: { kind: "in", duration: "1h" } }));
    for (const expiry of [{ kind: "never" as const }, { kind: "in" as const, duration: "2d" }]) {
      expect(refused(await core.keys.update(asKey(expiringAdmin.key), { id: child.key.id, expiry })).code).toBe("permission_denied");
    }
    expect((await stored(child.key.id)).expiresAt).toEqual(child.key.expiresAt);
    core.clock.advance(2 * HOUR);
    try {
      expect((await check(core, child.plaintext, "GET", "/sandboxes")).reason).toBe("expired");
    } finally {
      core.clock.advance(-2 * HOUR);
    }
  });

  it("a key with an expiry cannot rotate a key that has none (the new key would outlive it)", async () => {
    const forever = await createKey(core, { org: "esc", roles: ["reader"] });
    const before = await keysIn("esc");
    expect(refused(await core.keys.rotate(asKey(expiringAdmin.key), forever.key.id, "")).code).toBe("permission_denied");
    expect(await keysIn("esc")).toBe(before);
    expect(await works(forever)).toBe(true);
  });

  it("a key cannot revoke, rotate, delete or update a key holding a role it lacks", async () => {
    const stronger = await createKey(core, { org: "esc", roles: ["admin", "auditor"], allowUnknownRoles: true });
    for (const action of ["update", "update enabled", "revoke", "rotate", "delete"]) {
      const { code, message } = refused(await ACTIONS[action]!(asKey(admin.key), stronger.key.id));
      expect(code, action).toBe("permission_denied");
      expect(message).toContain("auditor");
    }
    expect(await stored(stronger.key.id)).toMatchObject({ enabled: true, name: "" });
    expect(await works(stronger)).toBe(true);
  });

  it("an expiring key cannot extend its own life through update", async () => {
    expect(refused(await core.keys.update(asKey(expiringAdmin.key), { id: expiringAdmin.key.id, expiry: { kind: "never" } })).code).toBe("permission_denied");
    expect((await stored(expiringAdmin.key.id)).expiresAt).toEqual(expiringAdmin.key.expiresAt);
    core.clock.advance(DAY);
    try {
      expect((await check(core, expiringAdmin.plaintext, "GET", "/sandboxes")).reason).toBe("expired");
    } finally {
      core.clock.advance(-DAY);
    }
  });
});

describe("a namespace-scoped admin", () => {
  let alphaAdmin: CreatedKey;
  let inAlpha: CreatedKey;
  let inBeta: CreatedKey;
  let everywhere: CreatedKey;

  beforeAll(async () => {
    alphaAdmin = await createKey(core, { org: "ns", namespace: "team-alpha", roles: ["admin"] });
    inAlpha = await createKey(core, { org: "ns", namespace: "team-alpha", roles: ["writer"] });
    inBeta = await createKey(core, { org: "ns", namespace: "team-beta", roles: ["writer"] });
    everywhere = await createKey(core, { org: "ns", roles: ["writer"] });
  });

  it("lists only its namespace, and asking for another is refused", async () => {
    const ids = unwrap(await core.keys.list(asKey(alphaAdmin.key), {})).keys.map((k) => k.id);
    expect(ids.sort()).toEqual([alphaAdmin.key.id, inAlpha.key.id].sort());
    expect(refused(await core.keys.list(asKey(alphaAdmin.key), { namespace: "team-beta" })).code).toBe("permission_denied");
  });

  it.each(Object.keys(ACTIONS))("cannot %s keys outside its namespace, including all-namespace keys", async (action) => {
    for (const target of [inBeta, everywhere]) {
      expect(refused(await ACTIONS[action]!(asKey(alphaAdmin.key), target.key.id))).toEqual({ code: "not_found", message: `key ${target.key.id} not found` });
      expect(await works(target)).toBe(true);
    }
  });

  it("manages keys in its namespace", async () => {
    expect(unwrap(await core.keys.update(asKey(alphaAdmin.key), { id: inAlpha.key.id, name: "renamed" })).name).toBe("renamed");
  });
});

describe("reset-all by a key", () => {
  it("revokes only the caller's org", async () => {
    const admin = await createKey(core, { org: "reset-a", roles: ["admin"] });
    const peer = await createKey(core, { org: "reset-a", namespace: "team-beta" });
    const other = await createKey(core, { org: "reset-b", roles: ["admin"] });
    expect(await works(peer)).toBe(true); // cached

    expect(unwrap(await core.keys.resetAll(asKey(admin.key), ""))).toBe(2);
    expect((await check(core, admin.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
    expect((await check(core, peer.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
    expect(await works(other)).toBe(true);
  });

  it("by a namespace-scoped key revokes only its namespace in its org", async () => {
    const alphaAdmin = await createKey(core, { org: "reset-ns", namespace: "team-alpha", roles: ["admin"] });
    const alpha = await createKey(core, { org: "reset-ns", namespace: "team-alpha" });
    const beta = await createKey(core, { org: "reset-ns", namespace: "team-beta" });
    const all = await createKey(core, { org: "reset-ns" });
    const alphaElsewhere = await createKey(core, { org: "reset-ns-2", namespace: "team-alpha" });

    expect(unwrap(await core.keys.resetAll(asKey(alphaAdmin.key), "reset-ns"))).toBe(2);
    expect((await check(core, alpha.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
    expect((await check(core, alphaAdmin.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
    for (const survivor of [beta, all, alphaElsewhere]) expect(await works(survivor)).toBe(true);
  });

  // Issue 14, item 5: single-key actions refuse a key with roles the caller lacks; reset-all did not.
  it("is refused, revoking nothing, when a key in scope holds a role the caller does not hold", async () => {
    const admin = await createKey(core, { org: "reset-roles", roles: ["admin"] });
    const writer = await createKey(core, { org: "reset-roles", roles: ["writer"] });
    const billing = await createKey(core, { org: "reset-roles", roles: ["billing"], allowUnknownRoles: true });
    const owner = await createKey(core, { org: "reset-roles", roles: ["owner", "reader"], allowUnknownRoles: true });
    // A single-key action already refuses such a key.
    expect(refused(await core.keys.revoke(asKey(admin.key), billing.key.id))).toEqual({ code: "permission_denied", message: `key ${billing.key.id} has roles this key does not hold: billing` });

    expect(refused(await core.keys.resetAll(asKey(admin.key), ""))).toEqual({
      code: "permission_denied",
      message: "reset-all would revoke 2 keys with roles this key does not hold: billing, owner; nothing was revoked",
    });
    for (const key of [admin, writer, billing, owner]) expect(unwrap(await core.keys.get(LOCAL, key.key.id)).enabled).toBe(true);
    expect(await works(writer)).toBe(true);

    // Once those keys are gone (or revoked), the caller's reset-all goes through.
    unwrap(await core.keys.revoke(LOCAL, billing.key.id));
    unwrap(await core.keys.delete(LOCAL, owner.key.id));
    expect(unwrap(await core.keys.resetAll(asKey(admin.key), ""))).toBe(2);
    expect((await check(core, writer.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
  });

  it("counts only the caller's scope: a stronger key in another namespace does not block it", async () => {
    const alphaAdmin = await createKey(core, { org: "reset-roles-ns", namespace: "team-alpha", roles: ["admin"] });
    const alpha = await createKey(core, { org: "reset-roles-ns", namespace: "team-alpha" });
    const betaBilling = await createKey(core, { org: "reset-roles-ns", namespace: "team-beta", roles: ["billing"], allowUnknownRoles: true });
    expect(unwrap(await core.keys.resetAll(asKey(alphaAdmin.key), ""))).toBe(2);
    expect((await check(core, alpha.plaintext, "GET", "/sandboxes")).reason).toBe("revoked");
    expect(unwrap(await core.keys.get(LOCAL, betaBilling.key.id)).enabled).toBe(true);
  });

  it("the operator's reset-all is not limited by roles", async () => {
    await createKey(core, { org: "reset-roles-op", roles: ["billing"], allowUnknownRoles: true });
    await createKey(core, { org: "reset-roles-op", roles: ["admin"] });
    expect(unwrap(await core.keys.resetAll(LOCAL, "reset-roles-op"))).toBe(2);
  });
});

/**
 * Wraps a Kysely instance so every query's result is held until `gate`
 * resolves — after the database answered and released its connection.
 */
function holdResults<T extends object>(target: T, gate: () => Promise<void>): T {
  return new Proxy(target, {
    get(object, property) {
      const value: unknown = Reflect.get(object, property, object);
      if (typeof value !== "function") return value;
      if (property === "execute" || property === "executeTakeFirst" || property === "executeTakeFirstOrThrow") {
        return async (...args: unknown[]) => {
          const result: unknown = await value.apply(object, args);
          await gate();
          return result;
        };
      }
      return (...args: unknown[]) => {
        const result: unknown = value.apply(object, args);
        return result !== null && typeof result === "object" && !(result instanceof Promise) ? holdResults(result, gate) : result;
      };
    },
  });
}

describe("revocation racing a decision", () => {
  it.each<[string, (id: string) => Promise<ManageResult<unknown>>, string]>([
    ["revoke", (id) => core.keys.revoke(LOCAL, id), "revoked"],
    ["reset-all", () => core.keys.resetAll(LOCAL, "race"), "revoked"],
    ["delete", (id) => core.keys.delete(LOCAL, id), "invalid_key"],
  ])("a key read just before a %s is not cached as still working", async (_, end, reason) => {
    const { key, plaintext } = await createKey(core, { org: "race" });
    let reached!: () => void;
    const atGate = new Promise<void>((done) => (reached = done));
    let release!: () => void;
    const gate = new Promise<void>((done) => (release = done));
    // A lookup over the shared cache whose database answer arrives late.
    const slowLookup = createKeyLookup({
      db: holdResults(core.db, async () => {
        reached();
        await gate;
      }),
      cache: core.cache,
      keyPrefix: DEFAULT_KEY_PREFIX,
      now: core.clock.now,
    });
    const racing = await createCore(core.db, { clock: core.clock, lookupKey: slowLookup });
    try {
      const inFlight = check(racing, plaintext, "GET", "/sandboxes");
      await atGate; // the database said: enabled
      unwrap(await end(key.id));
      release();
      // That one decision was concurrent with the revocation; it may go either way.
      await inFlight;
      // Every decision after the revocation completed must see it.
      expect(await check(core, plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason });
    } finally {
      release();
      await racing.close();
    }
  });
});
