import { describe, expect, it } from "vitest";
import type { CreatedKey } from "../../src/core/manage/key-manager.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { check, createKey, HOUR, LOCAL, unwrap, type Core, useCoreDatabase } from "./test-core.js";

/**
 * Reset-all by the local operator (microsandbox `--reset-key`): every
 * existing key in scope stops working at once, whether this process has it
 * cached or not. Runs in its own database: resetting every org is global.
 */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

async function reasonFor(key: CreatedKey): Promise<string> {
  return (await check(core, key.plaintext, "GET", "/sandboxes")).reason;
}

describe(`reset-all on ${testDatabaseKind}`, () => {
  it("one org: its keys stop working at once, cached or not; other orgs' keys keep working", async () => {
    const cached = await createKey(core, { org: "reset-one", roles: ["admin"] });
    const cold = await createKey(core, { org: "reset-one", namespace: "team-alpha" });
    const alreadyRevoked = await createKey(core, { org: "reset-one" });
    const revokedAt = unwrap(await core.keys.revoke(LOCAL, alreadyRevoked.key.id)).revokedAt;
    const elsewhere = await createKey(core, { org: "reset-other" });
    expect(await reasonFor(cached)).toBe("allowed");
    expect(await reasonFor(elsewhere)).toBe("allowed");

    core.clock.advance(HOUR);
    expect(unwrap(await core.keys.resetAll(LOCAL, "reset-one"))).toBe(2);

    expect(await check(core, cached.plaintext, "GET", "/sandboxes")).toMatchObject({ allowed: false, reason: "revoked", message: "API key has been revoked" });
    expect(await reasonFor(cold)).toBe("revoked");
    expect(await reasonFor(elsewhere)).toBe("allowed");
    // A key revoked before keeps its own revocation time.
    expect(unwrap(await core.keys.get(LOCAL, alreadyRevoked.key.id)).revokedAt).toEqual(revokedAt);
    expect(unwrap(await core.keys.get(LOCAL, cold.key.id)).revokedAt).toEqual(core.clock.now());
    expect(unwrap(await core.keys.list(LOCAL, { org: "reset-one", enabled: true })).keys).toEqual([]);
  });

  it("a key created after a reset works", async () => {
    unwrap(await core.keys.resetAll(LOCAL, "reset-one"));
    const fresh = await createKey(core, { org: "reset-one" });
    expect(await reasonFor(fresh)).toBe("allowed");
  });

  it("every org: every existing key stops working at once, and says how many", async () => {
    const keys = [await createKey(core, { org: "reset-x" }), await createKey(core, { org: "reset-y", roles: ["admin"] }), await createKey(core, {})];
    for (const key of keys.slice(0, 2)) expect(await reasonFor(key)).toBe("allowed"); // two cached, one cold
    const enabledBefore = unwrap(await core.keys.list(LOCAL, { enabled: true, pageSize: 1000 })).keys.length;
    expect(enabledBefore).toBeGreaterThanOrEqual(3);

    expect(unwrap(await core.keys.resetAll(LOCAL, ""))).toBe(enabledBefore);

    for (const key of keys) expect(await reasonFor(key)).toBe("revoked");
    expect(unwrap(await core.keys.list(LOCAL, { enabled: true, pageSize: 1000 })).keys).toEqual([]);
    expect(unwrap(await core.keys.resetAll(LOCAL, ""))).toBe(0);
  });
});
