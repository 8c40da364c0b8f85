import { cp } from "node:fs/promises";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { runCli, type CliResult } from "../support/keygate-process.js";

/**
 * Issue 15, item 2, as an operator meets it: `keygen --role Admin` made a
 * key denied everything and exited 0. Now the CLI refuses (exit 1, a failed
 * operation) naming the roles the policy knows and the one meant;
 * --allow-unknown-role is the deliberate way through, on keygen and keys update.
 */

let data: TestDataDir;
let env: Record<string, string>;

const cli = (args: string[]): Promise<CliResult> => runCli(args, { cwd: data.dir, env });

beforeAll(async () => {
  data = await createTestDataDir();
  // A copy: a policy author editing policies/ meanwhile changes nothing here.
  const policyDir = join(data.dir, "policies");
  await cp(resolve(import.meta.dirname, "../../policies"), policyDir, { recursive: true });
  env = { ...data.env, KEYGATE_POLICY_DIR: policyDir };
});

afterAll(async () => {
  await data?.dispose();
});

const KNOWS = "(the policy knows: admin, platform, reader, writer)";

describe(`keygen and keys update with a role the policy does not know, on ${testDatabaseKind}`, () => {
  it("keygen --role Admin exits 1 with did-you-mean and makes no key; --allow-unknown-role makes it", async () => {
    const refused = await cli(["keygen", "--org", "acme", "--role", "Admin"]);
    expect(refused.code).toBe(1);
    expect(refused.stdout).toBe("");
    // The last line: a first open of the data dir may note something before it.
    expect(refused.stderr.trimEnd().split("\n").at(-1)).toBe(
      `keygate: unknown role "Admin" ${KNOWS}; did you mean "admin"? Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to create it anyway (invalid_argument)`,
    );
    const none = await cli(["keys", "list", "--json", "--org", "acme"]);
    expect(none.code).toBe(0);
    expect(none.stdout).not.toContain("Admin");

    const made = await cli(["keygen", "--json", "--org", "acme", "--role", "Admin", "--allow-unknown-role"]);
    expect(made.code, made.stderr).toBe(0);
    expect(JSON.parse(made.stdout)).toMatchObject({ org: "acme", roles: ["Admin"] });
  });

  it("keys update --role writter is refused, changing nothing; --allow-unknown-role sets it", async () => {
    const created = await cli(["keygen", "--json", "--org", "acme", "--role", "reader"]);
    expect(created.code, created.stderr).toBe(0);
    const { id } = JSON.parse(created.stdout) as { id: string };

    const refused = await cli(["keys", "update", id, "--role", "writter"]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(`unknown role "writter" ${KNOWS}; did you mean "writer"?`);
    expect(JSON.parse((await cli(["keys", "get", "--json", id])).stdout)).toMatchObject({ roles: ["reader"] });

    const updated = await cli(["keys", "update", "--json", id, "--role", "writter", "--allow-unknown-role"]);
    expect(updated.code, updated.stderr).toBe(0);
    expect(JSON.parse(updated.stdout)).toMatchObject({ roles: ["writter"] });
  });
});
