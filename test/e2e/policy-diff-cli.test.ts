import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { POLICY_DIR, runCli, type CliResult } from "../support/keygate-process.js";
import { policyLine } from "../support/policy-lines.js";

/**
 * `keygate policy diff` as a policy author runs it: the shipped policies/
 * against copies of it, through the real compiled CLI. It reads files only,
 * so no database is involved.
 */

const FIXTURES = resolve(import.meta.dirname, "../fixtures/diff-requests");
const REMOVED = "p, reader, *, *, /templates, ^(GET|HEAD)$";
const ADDED = "p, reader, *, *, /volumes/*, ^GET$";

let work: string;
let identical: string;
let modified: string;
let broken: string;

const cli = (args: string[]): Promise<CliResult> => runCli(["policy", "diff", ...args], { cwd: work });

function exited(result: CliResult, code: number): CliResult {
  expect(result.code, `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(code);
  return result;
}

interface Example {
  roles: string[];
  org: string;
  path: string;
  method: string;
  line?: number;
}
interface Group {
  rule: string;
  text: string;
  count: number;
  examples: Example[];
  more: number;
}
interface DiffJson {
  requests: { source: string; count: number };
  summary: { requests: number; flipped: number; allow_to_deny: number; deny_to_allow: number; rule_changed: number; bad_requests: number };
  allow_to_deny: Group[];
  deny_to_allow: Group[];
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "keygate-policy-diff-"));
  identical = join(work, "identical");
  modified = join(work, "modified");
  broken = join(work, "broken");
  for (const dir of [identical, modified, broken]) await cp(POLICY_DIR, dir, { recursive: true });
  // The edit under review: reader loses /templates, gains everything below /volumes/.
  const csv = await readFile(join(POLICY_DIR, "policy.csv"), "utf8");
  expect(csv.split("\n").filter((line) => line.trim() === REMOVED)).toHaveLength(1);
  await writeFile(join(modified, "policy.csv"), csv.split("\n").filter((line) => line.trim() !== REMOVED).join("\n") + `${ADDED}\n`);
  await writeFile(join(broken, "policy.csv"), `${csv}p, reader, *, /missing-fields\n`);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("keygate policy diff", () => {
  it("an identical copy: nothing flips, exit 0, and it says how many requests were synthesized", async () => {
    const { stdout } = exited(await cli(["--against", identical]), 0);
    expect(stdout).toMatch(/^synthesized (\d+) requests from both policies: \d+ roles × \d+ orgs? × \d+ namespaces? × \d+ paths × 7 methods$/m);
    const synthesized = Number(/^synthesized (\d+) requests/m.exec(stdout)![1]);
    expect(synthesized).toBeGreaterThan(0);
    expect(stdout).toContain(`${synthesized} requests, 0 flipped (0 allow→deny, 0 deny→allow)`);
    expect(stdout).not.toContain("allow→deny, by");
  });

  it("a modified copy: exit 1, allow→deny grouped by the old rule, deny→allow by the new one", async () => {
    const { stdout } = exited(await cli(["--against", POLICY_DIR, "--policy-dir", modified]), 1);
    expect(stdout).toMatch(/^\d+ requests, (\d+) flipped \((\d+) allow→deny, (\d+) deny→allow\)$/m);
    const removedAt = policyLine(REMOVED);
    const lost = new RegExp(`^  ${escape(`${removedAt}  ${REMOVED}`)}  no longer allows: (\\d+) requests$`, "m").exec(stdout);
    expect(lost, stdout).not.toBeNull();
    const gained = new RegExp(`^  ${escape(`${policyLine(ADDED, "policy.csv", modified)}  ${ADDED}`)}  now allows: (\\d+) requests?$`, "m").exec(stdout);
    expect(gained, stdout).not.toBeNull();
    // Examples name roles, org, method and path.
    expect(stdout).toContain("    roles=reader org=other-org  GET /templates\n");
    expect(stdout).toContain("    roles=reader org=other-org  GET /volumes/x1/x2\n");
  });

  it("the same diff the other way round swaps the directions", async () => {
    const { stdout } = exited(await cli(["--against", modified, "--policy-dir", POLICY_DIR]), 1);
    expect(stdout).toMatch(new RegExp(`^  ${escape(`${policyLine(REMOVED)}  ${REMOVED}`)}  now allows: \\d+ requests$`, "m"));
  });

  it("--json: a structured object with groups, examples and counts", async () => {
    const { stdout } = exited(await cli(["--against", POLICY_DIR, "--policy-dir", modified, "--json", "--limit", "1"]), 1);
    const diff = JSON.parse(stdout) as DiffJson;
    expect(diff.requests.source).toBe("synthesized");
    expect(diff.summary.requests).toBe(diff.requests.count);
    expect(diff.summary.flipped).toBe(diff.summary.allow_to_deny + diff.summary.deny_to_allow);
    const lost = diff.allow_to_deny.find((g) => g.rule === policyLine(REMOVED));
    expect(lost).toMatchObject({ text: REMOVED });
    expect(lost!.examples).toHaveLength(1);
    expect(lost!.more).toBe(lost!.count - 1);
    // Every role that held the rule (reader, and writer, platform and admin by inheritance) lost GET and HEAD on /templates.
    expect(lost!.count).toBeGreaterThanOrEqual(8);
    expect(lost!.examples[0]).toMatchObject({ roles: ["admin"], path: "/templates", method: "GET" });
    expect(diff.deny_to_allow.map((g) => g.text)).toEqual([ADDED]);
  });

  it("--requests: replays a request file (both field-name styles) and names its lines", async () => {
    const { stdout } = exited(await cli(["--against", POLICY_DIR, "--policy-dir", modified, "--requests", join(FIXTURES, "requests.jsonl")]), 1);
    expect(stdout).toContain("5 requests, 2 flipped (2 allow→deny, 0 deny→allow)");
    expect(stdout).toContain("    roles=reader org=acme  GET /templates  (line 2)\n");
    expect(stdout).toContain("    roles=writer org=acme  HEAD /templates  (line 3)\n");
    expect(stdout).toContain("1 request refused before the policy");
  });

  it("--requests with a malformed line: exit 2 naming the line", async () => {
    const { stderr, stdout } = exited(await cli(["--against", identical, "--requests", join(FIXTURES, "malformed.jsonl")]), 2);
    expect(stdout).toBe("");
    expect(stderr).toContain("2 malformed lines");
    expect(stderr).toMatch(/line 3: not valid JSON/);
    expect(stderr).toContain('line 4: missing "org" (or "key_org")');
  });

  it.each([
    ["old", () => ["--against", broken], () => `cannot load the old policy (--against ${broken}): policy.csv:`],
    ["new", () => ["--against", identical, "--policy-dir", broken], () => `cannot load the new policy (--policy-dir ${broken}): policy.csv:`],
  ])("a broken %s policy: exit 2 naming the dir and file:line", async (_side, args, message) => {
    const { stderr } = exited(await cli(args()), 2);
    expect(stderr).toContain(message());
    expect(stderr).toMatch(/policy\.csv:\d+: a "p" line has 5 fields, this one has 3/);
  });

  it.each([
    ["no --against", [], "policy diff needs --against OLD_DIR"],
    ["a bad --limit", ["--limit", "many"], '--limit: "many" is not a whole number'],
    ["a missing request file", ["--requests", "nope.jsonl"], "cannot read --requests"],
  ])("%s: exit 2", async (_name, args, message) => {
    const { stderr } = exited(await cli(args.length === 0 ? [] : ["--against", identical, ...args]), 2);
    expect(stderr).toContain(message);
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
