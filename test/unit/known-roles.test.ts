import { copyFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkKnownRoles } from "../../src/core/manage/key-input.js";
import { closestName, editDistance, knownRoles } from "../../src/core/policy/known-roles.js";
import { loadPolicy } from "../../src/core/policy/policy.js";

/**
 * The roles a policy knows (every p subject, every role a g line names) and
 * the refusal of any other: a key holding only unknown roles is denied
 * everything, so `keygen --role Admin` must not quietly make one.
 */

const MODEL = resolve(import.meta.dirname, "../../policies/model.conf");
const temps: string[] = [];

afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

async function policyOf(csv: string) {
  const dir = await mkdtemp(join(tmpdir(), "keygate-known-roles-"));
  temps.push(dir);
  await copyFile(MODEL, join(dir, "model.conf"));
  await writeFile(join(dir, "policy.csv"), csv);
  return loadPolicy(dir);
}

const CSV = ["p, reader, *, *, /sandboxes, ^GET$", "p, writer, *, *, /sandboxes, ^POST$", "g, admin, writer, *", "g, ops, platform, acme", ""].join("\n");

describe("knownRoles", () => {
  it("is every p subject and both roles of every g line, case kept", async () => {
    const policy = await policyOf(CSV);
    expect([...knownRoles(policy)].sort()).toEqual(["admin", "ops", "platform", "reader", "writer"]);
  });

  it("is computed once per policy object, and anew for a reloaded one", async () => {
    const policy = await policyOf(CSV);
    expect(knownRoles(policy)).toBe(knownRoles(policy));
    const reloaded = await policyOf(`${CSV}p, auditor, *, *, /audit, ^GET$\n`);
    expect(knownRoles(reloaded).has("auditor")).toBe(true);
    expect(knownRoles(policy).has("auditor")).toBe(false);
  });
});

describe("closestName", () => {
  const roles = ["admin", "platform", "reader", "writer"];
  it.each([
    ["Admin", "admin"],
    ["ADMIN", "admin"],
    ["admn", "admin"],
    ["raeder", "reader"],
    ["plattform", "platform"],
    ["writers", "writer"],
    ["auditor", undefined],
    ["x", undefined],
    ["nosuchrole", undefined],
  ])("%j → %j", (word, expected) => {
    expect(closestName(word, roles)).toBe(expected);
  });

  it.each([
    ["", "", 0],
    ["abc", "", 3],
    ["kitten", "sitting", 3],
    ["reader", "raeder", 1], // an adjacent swap is one edit
  ])("editDistance(%j, %j) = %i", (a, b, d) => {
    expect(editDistance(a, b)).toBe(d);
    expect(editDistance(b, a)).toBe(d);
  });
});

describe("checkKnownRoles", () => {
  const known = new Set(["admin", "platform", "reader", "writer"]);

  it("passes roles the policy knows", () => {
    expect(checkKnownRoles(["reader", "admin"], known, "create")).toEqual({ ok: true, value: undefined });
  });

  it("refuses a role that differs only in case, naming the known roles and the one meant", () => {
    expect(checkKnownRoles(["Admin"], known, "create")).toEqual({
      ok: false,
      code: "invalid_argument",
      message:
        'unknown role "Admin" (the policy knows: admin, platform, reader, writer); did you mean "admin"? Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to create it anyway',
    });
  });

  it("refuses a role nothing is close to, without a guess", () => {
    const result = checkKnownRoles(["reader", "nosuchrole"], known, "set");
    expect(result).toMatchObject({ ok: false, code: "invalid_argument" });
    expect(!result.ok && result.message).toBe(
      'unknown role "nosuchrole" (the policy knows: admin, platform, reader, writer). Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to set it anyway',
    );
  });

  it("names every unknown role at once", () => {
    const result = checkKnownRoles(["Admin", "raeder"], known, "create");
    expect(!result.ok && result.message).toContain('unknown roles "Admin", "raeder" (the policy knows: admin, platform, reader, writer); did you mean "admin" or "reader"?');
  });

  it("shows a key caller only its own roles, never the rest of the policy", () => {
    const result = checkKnownRoles(["Platform"], known, "create", ["reader"]);
    expect(!result.ok && result.message).toBe(
      `unknown role "Platform" (of this key's roles, the policy knows: reader). Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to create it anyway`,
    );
  });

  it("lists at most 20 known roles", () => {
    const many = new Set(Array.from({ length: 25 }, (_, i) => `role${String(i).padStart(2, "0")}`));
    const result = checkKnownRoles(["zzz"], many, "create");
    expect(!result.ok && result.message).toContain("role19, … and 5 more)");
  });
});
