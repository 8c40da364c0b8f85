import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { POLICY_DIR, REPO, runCli, type CliResult } from "../support/keygate-process.js";

/**
 * `keygate policy test` as a policy author runs it: the real CLI on the
 * shipped policy and its tables (this is how policies/tests/ runs in the
 * test command), on a table that fails, on a malformed table and on a
 * broken policy directory. It reads files only: no database, no server.
 */

const FIXTURES = join(REPO, "test/fixtures");
let empty: string;

const policyTest = (args: string[], env: Record<string, string> = {}): Promise<CliResult> => runCli(["policy", "test", ...args], { cwd: REPO, env });

function lines(text: string): string[] {
  return text.trimEnd().split("\n");
}

beforeAll(async () => {
  empty = await mkdtemp(join(tmpdir(), "keygate-policy-test-empty-"));
});

afterAll(async () => {
  await rm(empty, { recursive: true, force: true });
});

describe("keygate policy test", () => {
  it("passes every shipped table on the shipped policy (exit 0)", async () => {
    const result = await policyTest([]);
    expect(result.code, result.stdout + result.stderr).toBe(0);
    const out = lines(result.stdout);
    const summary = out.at(-1)!;
    expect(summary).toMatch(/^\d+ passed, 0 failed$/);
    const rows = out.slice(0, -1);
    expect(rows.length).toBe(Number(summary.split(" ")[0]));
    expect(rows.length).toBeGreaterThan(450);
    expect(rows.every((row) => /^PASS {2}policies\/tests\/[\w-]+\.yaml {2,}\S/.test(row)), rows.find((r) => !r.startsWith("PASS"))).toBe(true);
    for (const file of ["admin", "default-policy", "key-management", "operator", "ownership", "platform", "reader", "writer", "cubeapi-reader", "cubeapi-writer", "cubeapi-platform", "cubeapi-admin", "cubeapi-operator"]) {
      expect(rows.some((row) => row.includes(`policies/tests/${file}.yaml`)), file).toBe(true);
    }
    // File names are padded to the longest one (cubeapi-operator.yaml).
    expect(rows).toContain(`PASS  ${"policies/tests/reader.yaml".padEnd("policies/tests/cubeapi-operator.yaml".length)}  reader GET /sandboxes`);
    expect(result.stderr).toBe("");
  });

  it("--policy-dir (and KEYGATE_POLICY_DIR) picks the policy and its tests/, nested directories included", async () => {
    const dir = join(FIXTURES, "policy-test-get-only");
    for (const result of [await policyTest(["--policy-dir", dir]), await policyTest([], { KEYGATE_POLICY_DIR: dir })]) {
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toContain("PASS  test/fixtures/policy-test-get-only/tests/get-only.yaml           HEAD is not GET\n");
      expect(result.stdout).toContain("test/fixtures/policy-test-get-only/tests/nested/inheritance.yml  auditor inherits reader in acme\n");
      expect(lines(result.stdout).at(-1)).toBe("9 passed, 0 failed");
    }
  });

  it("--json reports every case with what was expected and what was decided", async () => {
    const result = await policyTest(["--json", "policies/tests/key-management.yaml"]);
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as {
      policy: { dir: string; version: string; files: string[] };
      passed: number;
      failed: number;
      results: { file: string; case: string; passed: boolean; expected: { expect: string; rule: string | null }; got: { expect: string; reason: string; matched_rule: string } }[];
    };
    expect(report.policy).toMatchObject({ dir: POLICY_DIR, files: ["policy.csv"] });
    expect(report.failed).toBe(0);
    expect(report.passed).toBe(report.results.length);
    expect(report.results.find((r) => r.case === "admin resets every key")).toMatchObject({
      file: "policies/tests/key-management.yaml",
      passed: true,
      expected: { expect: "allow", rule: "policy.csv:93" },
      got: { expect: "allow", reason: "allowed", matched_rule: "policy.csv:93" },
    });
  });

  it("a failing case: exit 1, a FAIL line with expected and got, the count on the last line", async () => {
    const result = await policyTest(["test/fixtures/policy-test-failing/failing.yaml"]);
    expect(result.code, result.stderr).toBe(1);
    expect(lines(result.stdout)).toEqual([
      "PASS  test/fixtures/policy-test-failing/failing.yaml  reader lists sandboxes",
      'FAIL  test/fixtures/policy-test-failing/failing.yaml  reader deletes a sandbox  — expected allow; got deny, reason forbidden, "API key is not allowed to DELETE /sandboxes/sbx-1", no rule',
      "1 passed, 1 failed",
    ]);

    const json = await policyTest(["--json", "test/fixtures/policy-test-failing"]);
    expect(json.code).toBe(1);
    const report = JSON.parse(json.stdout) as { passed: number; failed: number; results: { passed: boolean; mismatches: string[]; got: { closest_rules?: { rule: string }[] } }[] };
    expect([report.passed, report.failed]).toEqual([1, 1]);
    expect(report.results[1]).toMatchObject({ passed: false, mismatches: ["expected allow, got deny"] });
    expect(report.results[1]!.got.closest_rules?.map((r) => r.rule)).toContain("policy.csv:52");
  });

  it("a malformed table: exit 2, naming file, line and case", async () => {
    const result = await policyTest(["test/fixtures/policy-test-malformed/malformed.yaml"]);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain('test/fixtures/policy-test-malformed/malformed.yaml:8: case 2 "typo in method": unknown key "methdo"');
  });

  it("a broken policy dir: exit 2, naming file:line", async () => {
    const result = await policyTest(["--policy-dir", join(FIXTURES, "policy-test-broken-policy")]);
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(/^keygate: cannot load the policy \(--policy-dir .*policy-test-broken-policy\): policy\.csv:3: a "p" line has 5 fields, this one has 4\n$/);
  });

  it("no tables to run, or a file that does not exist: exit 2", async () => {
    const none = await policyTest(["--policy-dir", empty]);
    expect(none.code).toBe(2);
    expect(none.stderr).toContain(`no decision tables: cannot read ${join(empty, "tests")}`);
    const missing = await policyTest(["policies/tests/nope.yaml"]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain("cannot read policies/tests/nope.yaml");
  });
});
