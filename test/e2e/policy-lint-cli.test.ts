import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { REPO, runCli, type CliResult } from "../support/keygate-process.js";

/**
 * `keygate policy lint` through the compiled CLI (bin/keygate.js), as a policy
 * author or a CI job runs it: on the shipped policy, on a policy broken in
 * every way lint knows, and on a clean one. It reads files only, so it needs
 * no data dir or database.
 */

const BROKEN = resolve(REPO, "test/fixtures/lint-broken");
const CLEAN = resolve(REPO, "test/fixtures/lint-clean");

const lint = (args: string[], env: Record<string, string> = {}): Promise<CliResult> => runCli(["policy", "lint", ...args], { cwd: REPO, env });

/** "policy.csv:N" of `rule` in the broken fixture, found by its text; `nth` for a rule written twice there. */
function at(rule: string, nth = 0): string {
  const lines = readFileSync(join(BROKEN, "policy.csv"), "utf8").split(/\r?\n/);
  const found = lines.flatMap((line, i) => (line.trim() === rule ? [`policy.csv:${i + 1}`] : []));
  if (found[nth] === undefined) throw new Error(`rule not found (${nth}) in ${BROKEN}: ${rule}`);
  return found[nth];
}

describe("keygate policy lint", () => {
  it("passes the shipped policies/ with no errors (exit 0)", async () => {
    const result = await lint(["policies"]);
    expect(result.code, result.stdout + result.stderr).toBe(0);
    // Not even a warning: admin has no catch-all "/*" any more.
    expect(result.stdout.trimEnd()).toBe("no problems");
  });

  it("fails a broken policy (exit 1), naming file:line for every problem, sorted", async () => {
    const result = await lint([BROKEN]);
    expect(result.code, result.stdout + result.stderr).toBe(1);
    const lines = result.stdout.trimEnd().split("\n");
    const expected: [string, string][] = [
      [`${at("p, reader, *, *, /sandboxes")}: error: `, 'a "p" line has 5 fields, this one has 4'],
      [`${at("p, reader, *, *, /sandboxes/:, ^GET$")}: error: `, 'a ":" parameter needs a name'],
      [`${at("p, reader, *, *, /sandboxes/:id, ^(GET|HEAD$")}: error: `, 'unmatched "(" or ")"'],
      [`${at("x, reader, writer, *")}: error: `, 'expected a "p" or "g" line'],
      [`${at("p, reader, *, *, /sandboxes, ^GET$")}: warning: `, `shadowed by ${at("p, reader, *, *, /sandboxes, ^(GET|HEAD)$")}`],
      [`${at("p, reader, *, *, /sandboxes, ^(GET|HEAD)$", 1)}: warning: `, `duplicate of ${at("p, reader, *, *, /sandboxes, ^(GET|HEAD)$")}`],
      [`${at("p, bad role, *, *, /templates, ^GET$")}: error: `, 'role "bad role" is not a valid name'],
      [`${at("p, reader, acme corp, *, /templates, ^GET$")}: error: `, 'org "acme corp"'],
      [`${at("p, reader, *, *, /volumes, ^FETCH$")}: error: `, 'method pattern "^FETCH$" matches none'],
      [`${at("p, reader, *, *, /volumes/:id, ^(GET|PURGE)$")}: warning: `, 'names "PURGE"'],
      [`${at("p, reader, *, *, /snapshots, P")}: warning: `, "it also matches POST, PUT, PATCH, OPTIONS"],
      [`${at("p, reader, *, *, /sandboxes*, ^GET$")}: warning: `, "regular-expression quantifier"],
      [`${at("p, reader, *, *, sandboxes/:id, ^GET$")}: warning: `, 'has no leading "/"'],
      [`${at("g, auditor, ghost, *")}: warning: `, 'role "ghost" grants nothing'],
      [`${at("g, reader, writer, *")}: error: `, `role cycle in every org: "writer" → "reader" → "writer" (${at("g, writer, reader, *")}, ${at("g, reader, writer, *")})`],
    ];
    expect(lines.length, result.stdout).toBe(expected.length + 1);
    expected.forEach(([prefix, fragment], i) => {
      expect(lines[i]).toMatch(/^policy\.csv:\d+: (error|warning): /);
      expect(lines[i]!.startsWith(prefix), `line ${i}: ${lines[i]}`).toBe(true);
      expect(lines[i]).toContain(fragment);
    });
    const numbers = lines.slice(0, -1).map((line) => Number(/^policy\.csv:(\d+):/.exec(line)![1]));
    expect(numbers).toEqual([...numbers].sort((a, b) => a - b));
    expect(lines.at(-1)).toBe("8 errors, 7 warnings");
  });

  it("prints an array of {where, severity, message} with --json", async () => {
    const result = await lint(["--json", BROKEN]);
    expect(result.code).toBe(1);
    const diagnostics = JSON.parse(result.stdout) as { where: string; severity: string; message: string }[];
    expect(diagnostics).toHaveLength(15);
    for (const d of diagnostics) expect(Object.keys(d)).toEqual(["where", "severity", "message"]);
    expect(diagnostics).toContainEqual({ where: at("p, reader, *, *, /volumes, ^FETCH$"), severity: "error", message: expect.stringContaining("the rule never applies") });
  });

  it('says "no problems" on a clean policy (exit 0), and prints [] with --json', async () => {
    const text = await lint([CLEAN]);
    expect([text.code, text.stdout]).toEqual([0, "no problems\n"]);
    const json = await lint([CLEAN, "--json"]);
    expect([json.code, JSON.parse(json.stdout)]).toEqual([0, []]);
  });

  it.each([
    ["KEYGATE_POLICY_DIR", [], { KEYGATE_POLICY_DIR: BROKEN }, 1],
    ["--policy-dir", ["--policy-dir", CLEAN], { KEYGATE_POLICY_DIR: BROKEN }, 0],
    ["DIR over --policy-dir", [CLEAN, "--policy-dir", BROKEN], {}, 0],
  ] as [string, string[], Record<string, string>, number][])("lints the directory named by %s", async (_name, args, env, code) => {
    expect((await lint(args, env)).code).toBe(code);
  });

  it("fails on a directory that does not exist (exit 1)", async () => {
    const result = await lint(["test/fixtures/lint-no-such-dir"]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^error: policy directory .*lint-no-such-dir does not exist/m);
    expect(result.stdout).toMatch(/^1 error, 0 warnings$/m);
  });

  it("refuses two directories as a usage error (exit 2)", async () => {
    const result = await lint([CLEAN, BROKEN]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("policy lint takes at most one directory");
  });
});
