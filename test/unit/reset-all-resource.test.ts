import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { managementDecision, paramRuleHint, resetAllReach } from "../../src/core/manage/management.js";
import { loadPolicy, type Policy } from "../../src/core/policy/policy.js";
import { decideCase, type DecisionCase } from "../../src/policy-tools/decision-table.js";
import { replayDiff, replayOne } from "../../src/policy-tools/replay-diff.js";

/**
 * Issue 14, item 11: "keys/:id" also matched "keys/reset-all", so a rule
 * granting POST on one key granted revoking every key. A ":param" never
 * grants reset-all now, in ManageKey and in every tool that decides
 * management resources (policy test, policy diff).
 */

const POLICY_DIR = resolve(import.meta.dirname, "../../policies");
const CALLER = { roles: ["custom"], org: "acme", namespace: "*" };
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "keygate-reset-all-"));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** The default policy copied to a temp dir with `extra` lines appended (the live policies/ is never edited). */
async function policyWith(extra: string[], options: { customModel?: boolean } = {}): Promise<Policy> {
  const dir = await mkdtemp(join(root, "policy-"));
  await cp(POLICY_DIR, dir, { recursive: true });
  const csv = await readFile(join(dir, "policy.csv"), "utf8");
  await writeFile(join(dir, "policy.csv"), `${csv}\n${extra.join("\n")}\n`);
  if (options.customModel) {
    // The same meaning, another matcher order: not keygate's standard model, so Casbin decides.
    const model = await readFile(join(dir, "model.conf"), "utf8");
    await writeFile(join(dir, "model.conf"), model.replace(/^m = (.*) && (g\(r\.sub, p\.sub, r\.org\))$/m, "m = $2 && $1"));
  }
  return loadPolicy(dir);
}

const lineOf = (policy: Policy, text: string) => policy.rules.find((rule) => rule.text === text)!.where;

describe("resetAllReach: how a path pattern reaches keys/reset-all", () => {
  it.each([
    ["keys/:id", "param"],
    ["keys/:x", "param"],
    ["keys/reset-:x", "none"], // no "/:", so keyMatch2 reads ":x" as text
    ["keys/:a-all", "param"],
    ["keys/reset-all", "literal"],
    ["keys/*", "literal"],
    ["*", "literal"],
    ["keys/.*", "literal"],
    ["keys/(reset-all|other)", "literal"],
    [":a/:b", "none"], // keyMatch2 leaves a leading ":a" as text
    ["/keys/reset-all", "none"],
    ["/keys/:id", "none"],
    ["/*", "none"],
    ["keys/:id/revoke", "none"],
    ["keys", "none"],
  ] as const)("%s → %s", (pattern, reach) => {
    expect(resetAllReach(pattern)).toBe(reach);
  });
});

describe.each([
  ["keygate's compiled engine", false],
  ["Casbin (a custom model)", true],
])("POST keys/reset-all under %s", (_engine, customModel) => {
  it("the default policy still lets admin reset-all, and refuses writer", async () => {
    const policy = await policyWith([], { customModel });
    expect(policy.info.engine).toBe(customModel ? "casbin" : "compiled");
    expect(managementDecision(policy, { ...CALLER, roles: ["admin"] }, "POST", "keys/reset-all")).toEqual({
      allowed: true,
      rule: lineOf(policy, "p, admin, *, *, keys/reset-all, ^POST$"),
    });
    expect(managementDecision(policy, { ...CALLER, roles: ["writer"] }, "POST", "keys/reset-all").allowed).toBe(false);
  });

  it.each(["POST", ".*", "^(POST|DELETE)$"])("a rule keys/:id with method %s grants POST on one key, never reset-all", async (method) => {
    const line = `p, custom, *, *, keys/:id, ${method}`;
    const policy = await policyWith([line], { customModel });
    expect(managementDecision(policy, CALLER, "POST", "keys/key_abc").allowed).toBe(true);
    const decision = managementDecision(policy, CALLER, "POST", "keys/reset-all");
    expect(decision).toEqual({ allowed: false, rule: "", paramRule: lineOf(policy, line), ...(customModel && { firstRuleOnly: true }) });
  });

  it.each(["keys/*", "*", "keys/reset-all"])("a rule %s still grants it", async (path) => {
    const line = `p, custom, *, *, ${path}, ^POST$`;
    const policy = await policyWith([line], { customModel });
    expect(managementDecision(policy, CALLER, "POST", "keys/reset-all")).toEqual({ allowed: true, rule: lineOf(policy, line) });
  });

  it("an inherited role's keys/:id rule does not grant it either", async () => {
    const policy = await policyWith(["p, base, *, *, keys/:id, ^POST$", "g, custom, base, *"], { customModel });
    expect(managementDecision(policy, CALLER, "POST", "keys/reset-all").allowed).toBe(false);
  });
});

describe("a keys/:id rule before a literal one", () => {
  const lines = ["p, custom, *, *, keys/:id, ^POST$", "p, custom, *, *, keys/reset-all, ^POST$"];

  it("the compiled engine answers with the literal rule", async () => {
    const policy = await policyWith(lines);
    expect(managementDecision(policy, CALLER, "POST", "keys/reset-all")).toEqual({ allowed: true, rule: lineOf(policy, lines[1]!) });
    // Other management decisions are untouched.
    expect(managementDecision(policy, CALLER, "POST", "keys/key_abc")).toEqual({ allowed: true, rule: lineOf(policy, lines[0]!) });
  });

  it("Casbin reports only the first allowing rule, so a custom model refuses (docs/policy.md says so)", async () => {
    const policy = await policyWith(lines, { customModel: true });
    const decision = managementDecision(policy, CALLER, "POST", "keys/reset-all");
    expect(decision).toEqual({ allowed: false, rule: "", paramRule: lineOf(policy, lines[0]!), firstRuleOnly: true });
    expect(paramRuleHint(decision)).toContain("with a custom model come before that line");
  });
});

describe("policy test and policy diff give ManageKey's answer", () => {
  const testCase = (path: string): DecisionCase => ({
    index: 0,
    line: 1,
    name: path,
    roles: ["custom"],
    org: "acme",
    keyNamespace: "*",
    namespace: "",
    requestOrg: "",
    path,
    method: "POST",
    expect: "deny",
  });

  it("policy test: reset-all is forbidden, and the message says why", async () => {
    const policy = await policyWith(["p, custom, *, *, keys/:id, .*"]);
    expect(decideCase(policy, testCase("keys/key_abc")).allowed).toBe(true);
    const decision = decideCase(policy, testCase("keys/reset-all"));
    expect(decision).toMatchObject({ allowed: false, reason: "forbidden" });
    expect(decision.message).toBe(
      `API key is not allowed to POST keys/reset-all (${lineOf(policy, "p, custom, *, *, keys/:id, .*")} reaches keys/reset-all only through a ":param", and a ":param" never matches reset-all; a rule must name keys/reset-all)`,
    );
  });

  it("policy diff: adding keys/:id flips one key, not reset-all", async () => {
    const before = await policyWith([]);
    const after = await policyWith(["p, custom, *, *, keys/:id, ^POST$"]);
    const ask = (path: string) => ({ roles: ["custom"], org: "acme", keyNamespace: "*", namespace: "", requestOrg: "", path, method: "POST" });
    expect(replayOne(after, ask("keys/reset-all"))).toEqual({ kind: "decided", allowed: false, rule: "" });
    const diff = replayDiff(before, after, [ask("keys/key_abc"), ask("keys/reset-all")]);
    expect(diff).toMatchObject({ requests: 2, denyToAllow: 1, allowToDeny: 0 });
    expect(diff.denyToAllowGroups[0]!.examples.map((example) => example.path)).toEqual(["keys/key_abc"]);
  });
});
