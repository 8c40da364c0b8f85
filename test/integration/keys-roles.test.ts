import { describe, expect, it } from "vitest";
import type { ManageResult } from "../../src/core/manage/access.js";
import { testDatabaseKind } from "../support/database.js";
import { asKey, check, createKey, LOCAL, unwrap, type Core, useCoreDatabase } from "./test-core.js";

/**
 * Issue 15, item 2: `keygen --role Admin` made a key denied everything. A
 * role given to a new or updated key must be one the policy names
 * (case-sensitive), for the operator and key callers alike; allowUnknownRoles
 * is the deliberate way past it.
 */

let core: Core;
useCoreDatabase((c) => {
  core = c;
});

function refused<T>(result: ManageResult<T>): { code: string; message: string } {
  if (result.ok) return expect.fail(`expected a refusal, got ${JSON.stringify(result.value)}`);
  return { code: result.code, message: result.message };
}

async function countIn(org: string): Promise<number> {
  return unwrap(await core.keys.list(LOCAL, { org, pageSize: 1000 })).keys.length;
}

const KNOWS = "(the policy knows: admin, platform, reader, writer)";

describe(`roles the policy does not know, on ${testDatabaseKind}`, () => {
  it.each([
    ["Admin", `unknown role "Admin" ${KNOWS}; did you mean "admin"?`],
    ["READER", `unknown role "READER" ${KNOWS}; did you mean "reader"?`],
    ["writter", `unknown role "writter" ${KNOWS}; did you mean "writer"?`],
    ["nosuchrole", `unknown role "nosuchrole" ${KNOWS}.`],
  ])("create with role %j is refused, creating no key", async (role, message) => {
    const before = await countIn("roles");
    const { code, message: got } = refused(await core.keys.create(LOCAL, { org: "roles", roles: ["reader", role] }));
    expect(code).toBe("invalid_argument");
    expect(got).toBe(`${message} Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to create it anyway`);
    expect(await countIn("roles")).toBe(before);
  });

  it("create with allowUnknownRoles makes the key as asked (denied what the policy does not grant)", async () => {
    const { key, plaintext } = await createKey(core, { org: "roles", roles: ["Admin"], allowUnknownRoles: true });
    expect(key.roles).toEqual(["Admin"]);
    expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(false);
    const row = await core.db.selectFrom("audit_log").select("detail").where("action", "=", "create").where("target", "=", key.id).executeTakeFirstOrThrow();
    expect(row.detail).toMatchObject({ roles: ["Admin"], allow_unknown_roles: true });
  });

  it("create without roles still takes the default, and known roles pass", async () => {
    expect((await createKey(core, { org: "roles" })).key.roles).toEqual(["writer"]);
    expect((await createKey(core, { org: "roles", roles: ["admin", "platform"] })).key.roles).toEqual(["admin", "platform"]);
  });

  it("update to an unknown role is refused and changes nothing; allowUnknownRoles lets it through", async () => {
    const { key, plaintext } = await createKey(core, { org: "roles", roles: ["reader"] });
    const { code, message } = refused(await core.keys.update(LOCAL, { id: key.id, name: "renamed", roles: ["Writer"] }));
    expect(code).toBe("invalid_argument");
    expect(message).toBe(`unknown role "Writer" ${KNOWS}; did you mean "writer"? Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to set it anyway`);
    expect(unwrap(await core.keys.get(LOCAL, key.id))).toMatchObject({ name: "", roles: ["reader"] });
    expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(true);

    expect(unwrap(await core.keys.update(LOCAL, { id: key.id, roles: ["Writer"], allowUnknownRoles: true })).roles).toEqual(["Writer"]);
  });

  it("an update that does not touch roles is not checked, even for a key holding an unknown one", async () => {
    const { key } = await createKey(core, { org: "roles", roles: ["legacy"], allowUnknownRoles: true });
    expect(unwrap(await core.keys.update(LOCAL, { id: key.id, name: "kept" })).roles).toEqual(["legacy"]);
  });

  it("a key caller is checked too, and is shown only its own roles", async () => {
    const caller = await createKey(core, { org: "roles-key", roles: ["admin", "legacy"], allowUnknownRoles: true });
    const { code, message } = refused(await core.keys.create(asKey(caller.key), { roles: ["legacy"] }));
    expect(code).toBe("invalid_argument");
    expect(message).toBe(`unknown role "legacy" (of this key's roles, the policy knows: admin). Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to create it anyway`);
    expect(unwrap(await core.keys.create(asKey(caller.key), { roles: ["legacy"], allowUnknownRoles: true })).key.roles).toEqual(["legacy"]);
    // A role it does not hold stays a permission refusal, whatever the flag.
    expect(refused(await core.keys.create(asKey(caller.key), { roles: ["auditor"], allowUnknownRoles: true })).code).toBe("permission_denied");
  });
});
