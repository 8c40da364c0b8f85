import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { asKey, createCore, createKey, LOCAL, unwrap, type Core } from "./test-core.js";

/**
 * A key's live-sandbox limit (`keygen --max-sandboxes N`, enforced by the
 * proxy from the ownership ledger) as ManageKey keeps it: stored, changed,
 * carried by a rotation, and never raised or dropped by a key that has one
 * (no escalation). The proxy's 429 is test/e2e/proxy.test.ts.
 */

let database: TestDatabase;
let core: Core;

beforeAll(async () => {
  database = await createTestDatabase();
  core = await createCore(database.store.db);
});

afterAll(async () => {
  await core?.close();
  await database?.dispose();
});

describe("max_sandboxes on a key", () => {
  it("is stored, read back by the lookup, changed, removed, and carried by a rotation", async () => {
    const made = await createKey(core, { org: "acme", roles: ["writer"], maxSandboxes: 3 });
    expect(made.key.maxSandboxes).toBe(3);
    expect(await core.lookupKey(made.plaintext)).toMatchObject({ status: "ok", key: { maxSandboxes: 3 } });
    expect(unwrap(await core.keys.update(LOCAL, { id: made.key.id, maxSandboxes: 0 })).maxSandboxes).toBe(0);
    const rotated = unwrap(await core.keys.rotate(LOCAL, made.key.id, ""));
    expect(rotated.key.maxSandboxes).toBe(0);
    expect(unwrap(await core.keys.update(LOCAL, { id: made.key.id, maxSandboxes: null })).maxSandboxes).toBeNull();
    expect((await createKey(core, { org: "acme" })).key.maxSandboxes).toBeNull();
  });

  it.each([-1, 1.5, 2_000_000_000])("refuses %s", async (value) => {
    expect(await core.keys.create(LOCAL, { org: "acme", maxSandboxes: value })).toMatchObject({ ok: false, code: "invalid_argument" });
  });
});

describe("a key with a limit may not grant more", () => {
  let limitedAdmin: Awaited<ReturnType<typeof createKey>>;

  beforeAll(async () => {
    limitedAdmin = await createKey(core, { org: "acme", roles: ["admin"], maxSandboxes: 5 });
  });

  it("gives new keys its own limit by default, or a lower one", async () => {
    expect(unwrap(await core.keys.create(asKey(limitedAdmin.key), { roles: ["writer"] })).key.maxSandboxes).toBe(5);
    expect(unwrap(await core.keys.create(asKey(limitedAdmin.key), { roles: ["writer"], maxSandboxes: 2 })).key.maxSandboxes).toBe(2);
  });

  it("cannot create a key with a higher limit, nor raise or remove one", async () => {
    const higher = await core.keys.create(asKey(limitedAdmin.key), { roles: ["writer"], maxSandboxes: 6 });
    expect(higher).toMatchObject({ ok: false, code: "permission_denied", message: "a key may not grant a live sandbox limit higher than its own (6 > 5)" });
    const child = unwrap(await core.keys.create(asKey(limitedAdmin.key), { roles: ["writer"], maxSandboxes: 1 }));
    expect(await core.keys.update(asKey(limitedAdmin.key), { id: child.key.id, maxSandboxes: 50 })).toMatchObject({ ok: false, code: "permission_denied" });
    expect(await core.keys.update(asKey(limitedAdmin.key), { id: child.key.id, maxSandboxes: null })).toMatchObject({
      ok: false,
      message: "a key with a live sandbox limit (5) may not grant a key without one",
    });
  });

  it("a key without a limit grants any", async () => {
    const free = await createKey(core, { org: "acme", roles: ["admin"] });
    expect(unwrap(await core.keys.create(asKey(free.key), { roles: ["writer"], maxSandboxes: 1000 })).key.maxSandboxes).toBe(1000);
  });
});
