import { copyFile, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadPolicy, type Policy } from "../../src/core/policy/policy.js";
import {
  parseRequestLine,
  replayDiff,
  replayOne,
  requestJson,
  samplePaths,
  synthesizeRequests,
  type ReplayDiff,
  type ReplayRequest,
} from "../../src/policy-tools/replay-diff.js";

const POLICY_DIR = resolve(import.meta.dirname, "../../policies");
const FIXTURES = resolve(import.meta.dirname, "../fixtures/diff-requests");

/** A small policy; each test edits a copy. Line numbers matter: policy.csv:1 … :5. */
const BASE = [
  "p, reader, *, *, /templates, ^(GET|HEAD)$",
  "p, reader, *, *, /templates/:id, ^GET$",
  "p, writer, *, *, /templates, ^POST$",
  "g, writer, reader, *",
  "p, admin, *, *, keys/:id, ^GET$",
];

const temps: string[] = [];

afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

/** A policy dir with the shipped model.conf and these policy.csv lines. */
async function policyOf(lines: readonly string[]): Promise<Policy> {
  const dir = await mkdtemp(join(tmpdir(), "keygate-replay-diff-"));
  temps.push(dir);
  await copyFile(join(POLICY_DIR, "model.conf"), join(dir, "model.conf"));
  await writeFile(join(dir, "policy.csv"), lines.join("\n") + "\n");
  return loadPolicy(dir);
}

/** Replays the requests synthesized from both policies. */
function synthesizedDiff(oldPolicy: Policy, newPolicy: Policy, limit = 5): ReplayDiff {
  return replayDiff(oldPolicy, newPolicy, synthesizeRequests([oldPolicy, newPolicy]).requests(), { limit });
}

function request(overrides: Partial<ReplayRequest> & Pick<ReplayRequest, "roles" | "path" | "method">): ReplayRequest {
  return { org: "acme", keyNamespace: "*", namespace: "", requestOrg: "", ...overrides };
}

/** "reader other-org GET /templates/x1", to compare examples at a glance. */
const brief = (r: ReplayRequest) => `${r.roles.join(",")} ${r.org} ${r.method} ${r.path}`;

describe("replaying synthesized requests under two policies", () => {
  it("no change: nothing flips, nothing changes rule", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(BASE));
    expect(diff).toMatchObject({ flipped: 0, allowToDeny: 0, denyToAllow: 0, ruleChanged: 0, badRequests: 0 });
    expect(diff.allowToDenyGroups).toEqual([]);
    expect(diff.denyToAllowGroups).toEqual([]);
    // 3 roles × (other-org) × ("" namespace) × (/templates, /templates/x1, keys/x1) × 7 methods
    expect(diff.requests).toBe(3 * 1 * 1 * 3 * 7);
  });

  it("a rule that only moves to another line is not a change", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(["# a comment above", "", ...BASE]));
    expect(diff).toMatchObject({ flipped: 0, ruleChanged: 0 });
  });

  it("removing a rule: allow→deny, grouped under the removed (old) rule", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(BASE.filter((_, i) => i !== 1)));
    expect(diff).toMatchObject({ flipped: 2, allowToDeny: 2, denyToAllow: 0, ruleChanged: 0 });
    expect(diff.allowToDenyGroups).toHaveLength(1);
    const [group] = diff.allowToDenyGroups;
    expect(group).toMatchObject({ rule: "policy.csv:2", text: "p, reader, *, *, /templates/:id, ^GET$", count: 2 });
    expect(group!.examples.map(brief)).toEqual(["reader other-org GET /templates/x1", "writer other-org GET /templates/x1"]);
  });

  it("adding a broader rule: deny→allow, grouped under the new rule", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf([...BASE, "p, reader, *, *, /templates/*, ^(GET|HEAD)$"]));
    expect(diff).toMatchObject({ allowToDeny: 0, denyToAllow: 6 });
    expect(diff.denyToAllowGroups).toHaveLength(1);
    const [group] = diff.denyToAllowGroups;
    expect(group).toMatchObject({ rule: "policy.csv:6", text: "p, reader, *, *, /templates/*, ^(GET|HEAD)$", count: 6 });
    // GET /templates/x1 was already allowed by an earlier line, which still wins: no flip there.
    expect(group!.examples.map(brief)).toEqual([
      "reader other-org HEAD /templates/x1",
      "reader other-org GET /templates/x1/x2",
      "reader other-org HEAD /templates/x1/x2",
      "writer other-org HEAD /templates/x1",
      "writer other-org GET /templates/x1/x2",
    ]);
  });

  it("a g line narrowed to one org: the other orgs lose the inherited rules, grouped per rule, largest first", async () => {
    const narrowed = BASE.map((line) => (line === "g, writer, reader, *" ? "g, writer, reader, acme" : line));
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(narrowed));
    expect(diff).toMatchObject({ allowToDeny: 3, denyToAllow: 0 });
    expect(diff.allowToDenyGroups.map((g) => [g.rule, g.count])).toEqual([
      ["policy.csv:1", 2],
      ["policy.csv:2", 1],
    ]);
    // acme (named by the new g line) keeps them; other-org (named by neither) does not.
    expect(diff.allowToDenyGroups.flatMap((g) => g.examples.map(brief))).toEqual([
      "writer other-org GET /templates",
      "writer other-org HEAD /templates",
      "writer other-org GET /templates/x1",
    ]);
  });

  it("removing a g line: allow→deny under each inherited rule", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(BASE.filter((line) => !line.startsWith("g,"))));
    expect(diff.allowToDenyGroups.map((g) => [g.rule, g.count])).toEqual([
      ["policy.csv:1", 2],
      ["policy.csv:2", 1],
    ]);
  });

  it("an edited rule that still allows counts as a rule change, not a flip", async () => {
    const edited = BASE.map((line, i) => (i === 0 ? "p, reader, *, *, /templates, ^(GET|HEAD|OPTIONS)$" : line));
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(edited));
    expect(diff).toMatchObject({ allowToDeny: 0, denyToAllow: 2, ruleChanged: 4 });
    expect(diff.ruleChangedExamples[0]).toMatchObject({ oldRule: "policy.csv:1", newRule: "policy.csv:1" });
    expect(diff.denyToAllowGroups.map((g) => g.examples.map(brief))).toEqual([["reader other-org OPTIONS /templates", "writer other-org OPTIONS /templates"]]);
  });

  it("management resources (keys/…) are replayed as ManageKey decides them", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(BASE.filter((line) => !line.includes("keys/"))));
    expect(diff.allowToDenyGroups).toEqual([
      { rule: "policy.csv:5", text: "p, admin, *, *, keys/:id, ^GET$", count: 1, examples: [request({ roles: ["admin"], org: "other-org", path: "keys/x1", method: "GET" })] },
    ]);
  });

  it("--limit bounds the examples per group, never the count", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf([...BASE, "p, reader, *, *, /templates/*, ^(GET|HEAD)$"]), 2);
    expect(diff.denyToAllowGroups[0]).toMatchObject({ count: 6 });
    expect(diff.denyToAllowGroups[0]!.examples).toHaveLength(2);
  });

  it("a whole policy swapped: flips both ways, counts add up", async () => {
    const diff = synthesizedDiff(await policyOf(BASE), await policyOf(["p, reader, *, *, /*, ^GET$"]));
    expect(diff.flipped).toBe(diff.allowToDeny + diff.denyToAllow);
    expect(diff.allowToDenyGroups.reduce((sum, g) => sum + g.count, 0)).toBe(diff.allowToDeny);
    expect(diff.denyToAllowGroups.reduce((sum, g) => sum + g.count, 0)).toBe(diff.denyToAllow);
    expect(diff.denyToAllowGroups.map((g) => g.rule)).toEqual(["policy.csv:1"]);
  });
});

describe("requests decided as Authorize decides them", () => {
  it.each([
    ["a bad path", request({ roles: ["reader"], path: "/templates/../keys", method: "GET" })],
    ["an unknown method", request({ roles: ["reader"], path: "/templates", method: "TRACE" })],
    ["an invalid namespace", request({ roles: ["reader"], path: "/templates", method: "GET", namespace: "*" })],
    ["a management resource with no method", request({ roles: ["admin"], path: "keys/k1", method: "" })],
  ])("%s is refused before the policy, the same under both, never a flip", async (_name, r) => {
    const everything = await policyOf(["p, reader, *, *, /*, .*", "p, admin, *, *, keys/*, .*"]);
    expect(replayOne(everything, r).kind).toBe("bad_request");
    const diff = replayDiff(await policyOf(BASE), everything, [r]);
    expect(diff).toMatchObject({ requests: 1, badRequests: 1, flipped: 0 });
  });

  it.each([
    ["a wrong org hint", request({ roles: ["reader"], path: "/templates", method: "GET", requestOrg: "globex" })],
    ["a namespace outside the key's scope", request({ roles: ["reader"], path: "/templates", method: "GET", keyNamespace: "team-a", namespace: "team-b" })],
  ])("%s is denied under both policies", async (_name, r) => {
    const diff = replayDiff(await policyOf(BASE), await policyOf(["p, reader, *, *, /*, .*"]), [r]);
    expect(diff).toMatchObject({ requests: 1, badRequests: 0, flipped: 0 });
  });

  it("no method means every method must be allowed, as for older Cube releases", async () => {
    const base = await policyOf(BASE);
    expect(replayOne(base, request({ roles: ["reader"], path: "/templates", method: "" }))).toEqual({ kind: "decided", allowed: false, rule: "" });
    const all = await policyOf(["p, reader, *, *, /templates, .*"]);
    expect(replayOne(all, request({ roles: ["reader"], path: "/templates", method: "" }))).toEqual({ kind: "decided", allowed: true, rule: "policy.csv:1" });
  });
});

describe("synthesized requests", () => {
  it.each([
    ["/templates", ["/templates"]],
    ["/templates/:id", ["/templates/x1"]],
    ["/templates/:id/builds/:buildID/status", ["/templates/x1/builds/x2/status"]],
    ["/files/*", ["/files/x1/x2", "/files"]],
    ["/*", ["/x1/x2", "/"]],
    ["*", ["/x1"]],
    ["keys/:id/revoke", ["keys/x1/revoke"]],
  ])("path pattern %s → %j", (pattern, paths) => {
    expect(samplePaths(pattern)).toEqual(paths);
  });

  it("every role and org either policy names, one org neither does, every namespace a rule names", async () => {
    const oldPolicy = await policyOf(["p, reader, acme, *, /a, ^GET$", "g, writer, reader, globex"]);
    const newPolicy = await policyOf(["p, auditor, *, team-a, /b/:id, ^GET$", "g, ops, admin, *"]);
    const s = synthesizeRequests([oldPolicy, newPolicy]);
    expect(s.roles).toEqual(["admin", "auditor", "ops", "reader", "writer"]);
    expect(s.orgs).toEqual(["acme", "globex", "other-org"]);
    expect(s.namespaces).toEqual(["", "team-a"]);
    expect(s.paths).toEqual(["/a", "/b/x1"]);
    const all = [...s.requests()];
    expect(all).toHaveLength(s.count);
    expect(s.count).toBe(5 * 3 * 2 * 2 * 7);
    expect(all.every((r) => replayOne(oldPolicy, r).kind === "decided")).toBe(true);
  });

  it("the org named in neither policy is really named in neither", async () => {
    const s = synthesizeRequests([await policyOf(["p, reader, other-org, *, /a, ^GET$"])]);
    expect(s.orgs).toEqual(["other-org", "other-org-2"]);
  });

  it("management resources are asked once, in the key's own namespace", async () => {
    const s = synthesizeRequests([await policyOf(["p, admin, *, *, keys, ^GET$", "p, reader, *, team-a, /a, ^GET$"])]);
    const resourceRequests = [...s.requests()].filter((r) => r.path === "keys");
    expect(resourceRequests.every((r) => r.namespace === "")).toBe(true);
    expect(resourceRequests).toHaveLength(2 * 1 * 7); // 2 roles × 1 org × 7 methods
  });
});

describe("request files (JSON lines)", () => {
  it("reads both field-name styles, skips blank and # lines, ignores extra fields", async () => {
    const text = await readFile(join(FIXTURES, "requests.jsonl"), "utf8");
    const parsed = text.split("\n").map((line, i) => parseRequestLine(line, i + 1));
    expect(parsed.filter((p) => p.kind === "error")).toEqual([]);
    const requests = parsed.flatMap((p) => (p.kind === "request" ? [p.request] : []));
    expect(requests.map(requestJson)).toEqual([
      { roles: ["reader"], org: "acme", key_namespace: "*", namespace: "", request_org: "", path: "/templates", method: "GET", line: 2 },
      { roles: ["writer"], org: "acme", key_namespace: "*", namespace: "", request_org: "", path: "/templates", method: "HEAD", line: 3 },
      { roles: ["reader"], org: "acme", key_namespace: "*", namespace: "team-a", request_org: "acme", path: "/templates/tpl_1", method: "get", line: 5 },
      { roles: ["reader"], org: "acme", key_namespace: "team-a", namespace: "team-b", request_org: "", path: "/templates", method: "GET", line: 6 },
      { roles: ["reader"], org: "acme", key_namespace: "*", namespace: "", request_org: "", path: "/templates/../keys", method: "GET", line: 7 },
    ]);

    const withoutReads = await policyOf(BASE.filter((line) => !line.startsWith("p, reader")));
    const diff = replayDiff(await policyOf(BASE), withoutReads, requests);
    expect(diff).toMatchObject({ requests: 5, badRequests: 1, allowToDeny: 3, denyToAllow: 0 });
    expect(diff.allowToDenyGroups.map((g) => [g.rule, g.examples.map((r) => r.line)])).toEqual([
      ["policy.csv:1", [2, 3]],
      ["policy.csv:2", [5]],
    ]);
  });

  it("both spellings of a field may be given when they agree", () => {
    const line = JSON.stringify({ roles: ["reader"], key_roles: ["reader"], org: "acme", key_org: "acme", path: "/a", method: "GET" });
    expect(parseRequestLine(line, 1)).toMatchObject({ kind: "request", request: { roles: ["reader"], org: "acme" } });
  });

  it.each([
    ["not JSON", "{roles: reader}", /^line 7: not valid JSON/],
    ["not an object", '["reader"]', /^line 7: expected a JSON object$/],
    ["no roles", '{"org": "acme", "path": "/a", "method": "GET"}', /^line 7: missing "roles" \(or "key_roles"\)$/],
    ["roles not a list", '{"key_roles": "reader", "org": "acme", "path": "/a", "method": "GET"}', /^line 7: "key_roles" must be an array of role names$/],
    ["an empty role", '{"roles": [""], "org": "acme", "path": "/a", "method": "GET"}', /"roles" must be an array of role names/],
    ["the two spellings disagree", '{"roles": ["reader"], "key_roles": ["admin"], "org": "acme", "path": "/a", "method": "GET"}', /^line 7: "roles" and "key_roles" disagree/],
    ["no org", '{"roles": ["reader"], "path": "/a", "method": "GET"}', /^line 7: missing "org" \(or "key_org"\)$/],
    ["an empty org", '{"roles": ["reader"], "key_org": "", "path": "/a", "method": "GET"}', /^line 7: "key_org" must be a non-empty string$/],
    ["no path", '{"roles": ["reader"], "org": "acme", "method": "GET"}', /^line 7: missing "path"$/],
    ["no method", '{"roles": ["reader"], "org": "acme", "path": "/a"}', /^line 7: missing "method"/],
    ["a method that is not a string", '{"roles": ["reader"], "org": "acme", "path": "/a", "method": 1}', /^line 7: "method" must be a string$/],
    ["a namespace that is not a string", '{"roles": ["reader"], "org": "acme", "path": "/a", "method": "GET", "namespace": 3}', /^line 7: "namespace" must be a string$/],
    ["an empty key namespace", '{"roles": ["reader"], "org": "acme", "path": "/a", "method": "GET", "key_namespace": ""}', /^line 7: "key_namespace" must not be empty/],
  ])("%s is an error naming the line", (_name, line, message) => {
    const parsed = parseRequestLine(line, 7);
    expect(parsed.kind).toBe("error");
    expect(parsed.kind === "error" && parsed.message).toMatch(message);
  });

  it.each([[""], ["   "], ["# a comment"], ["  # indented comment"]])("%j is skipped", (line) => {
    expect(parseRequestLine(line, 1)).toEqual({ kind: "skip" });
  });
});
