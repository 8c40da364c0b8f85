import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { createAuthorizer } from "../../src/core/authorize/authorizer.js";
import { KNOWN_METHODS } from "../../src/core/request/normalize.js";
import type { KeyRecord } from "../../src/core/keys/key-record.js";
import { isManagementResource } from "../../src/core/manage/management.js";
import {
  decideCase,
  evaluateCase,
  parseDecisionTable,
  runDecisionTables,
  type DecisionCase,
  type DecisionTable,
} from "../../src/policy-tools/decision-table.js";
import { loadPolicy, type Policy } from "../../src/core/policy/policy.js";
import { CUBE_ROUTES, INHERITS as ROLE_INHERITS, may as mayUse, type Role } from "../support/cube-routes.js";

/**
 * Decision tables (`keygate policy test`): parsing and strict validation,
 * evaluation through Authorize's own decision path, and the tables shipped
 * in policies/tests/ — which must pass, cover every Cube/E2B route, and name
 * rules that really are the lines that allow.
 */

const POLICY_DIR = "policies";
const TABLES_DIR = join(POLICY_DIR, "tests");
const FIXTURES = "test/fixtures";

let policy: Policy;
let shipped: DecisionTable[];

function parseOk(text: string, file = "t.yaml"): DecisionTable {
  const result = parseDecisionTable(text, file);
  if (!result.ok) throw new Error(`expected ${file} to parse:\n${result.errors.join("\n")}`);
  return result.table;
}

function parseErrors(text: string, file = "t.yaml"): string[] {
  const result = parseDecisionTable(text, file);
  if (result.ok) throw new Error(`expected ${file} to be refused`);
  return result.errors;
}

function oneCase(text: string): DecisionCase {
  const table = parseOk(text);
  expect(table.cases).toHaveLength(1);
  return table.cases[0]!;
}

beforeAll(async () => {
  policy = await loadPolicy(POLICY_DIR);
  shipped = readdirSync(TABLES_DIR)
    .filter((name) => /\.ya?ml$/.test(name))
    .sort()
    .map((name) => parseOk(readFileSync(join(TABLES_DIR, name), "utf8"), join(TABLES_DIR, name)));
});

describe("parsing", () => {
  it("reads the documented format, with defaults for the key and the request", () => {
    const c = oneCase(`
name: default policy — reader
cases:
  - name: reader lists sandboxes
    roles: [reader]
    path: /sandboxes
    method: GET
    expect: allow
`);
    expect(c).toEqual({
      index: 1,
      line: 4,
      name: "reader lists sandboxes",
      roles: ["reader"],
      org: "default",
      keyNamespace: "*",
      namespace: "",
      requestOrg: "",
      path: "/sandboxes",
      method: "GET",
      expect: "allow",
    });
  });

  it("reads every field", () => {
    const c = oneCase(`
cases:
  - { name: n, roles: [reader, writer], org: acme, key_namespace: team-a, namespace: team-a, request_org: acme,
      path: /x, method: POST, expect: allow, reason: allowed, rule: policy.csv:17 }
`);
    expect(c).toMatchObject({
      roles: ["reader", "writer"],
      org: "acme",
      keyNamespace: "team-a",
      namespace: "team-a",
      requestOrg: "acme",
      reason: "allowed",
      rule: "policy.csv:17",
    });
  });

  it("merges defaults under each case; a case's own value wins", () => {
    const table = parseOk(`
defaults: { roles: [reader], org: acme, namespace: "", method: GET }
cases:
  - { path: /a, expect: allow }
  - { path: /b, org: globex, roles: [admin], method: "", expect: deny }
`);
    expect(table.cases.map((c) => [c.roles, c.org, c.method])).toEqual([
      [["reader"], "acme", "GET"],
      [["admin"], "globex", ""],
    ]);
  });

  it('names a case "ROLES METHOD PATH" by default, and a table by its file', () => {
    const table = parseOk(
      `
cases:
  - { roles: [reader, writer], path: /sandboxes, method: GET, expect: allow }
  - { roles: [admin], path: /sandboxes, expect: allow }
`,
      "dir/tables.yaml",
    );
    expect(table.name).toBe("tables.yaml");
    expect(table.file).toBe("dir/tables.yaml");
    expect(table.cases.map((c) => c.name)).toEqual(["reader,writer GET /sandboxes", "admin (no method) /sandboxes"]);
  });

  it("follows YAML anchors and aliases", () => {
    const table = parseOk(`
cases:
  - { roles: &writer [writer], path: /sandboxes, method: POST, expect: allow }
  - { roles: *writer, path: &templates /templates, method: POST, expect: allow }
  - { roles: *writer, path: *templates, method: GET, expect: allow }
`);
    expect(table.cases.map((c) => `${c.roles.join()} ${c.method} ${c.path}`)).toEqual(["writer POST /sandboxes", "writer POST /templates", "writer GET /templates"]);
  });

  it("treats keys and keys/… as key-management resources, nothing else", () => {
    expect(["keys", "keys/key_1", "keys/reset-all"].map(isManagementResource)).toEqual([true, true, true]);
    expect(["/keys", "keysx", "/keys/key_1", "sandboxes"].map(isManagementResource)).toEqual([false, false, false, false]);
  });
});

describe("validation: a malformed table is refused, naming file, line and case", () => {
  const CASE = "{ roles: [reader], path: /x, expect: allow }";
  it.each([
    ["a YAML syntax error", "cases:\n  - { roles: [reader], path: /x\n", /^t\.yaml:3:1: Flow map .* must .* end with a \}$/],
    ["a duplicate key", `cases:\n  - ${CASE}\ncases:\n  - ${CASE}\n`, /^t\.yaml:3:1: Map keys must be unique$/],
    ["two documents", `cases:\n  - ${CASE}\n---\ncases: []\n`, /^t\.yaml:3:1: Source contains multiple documents/],
    ["an unknown tag", `cases:\n  - { roles: [reader], path: !p /x, expect: allow }\n`, /^t\.yaml:2:\d+: Unresolved tag: !p$/],
    ["an empty file", "", /^t\.yaml:1: the file is empty; a decision table is a mapping with "cases"/],
    ["a list at the top", `- ${CASE}\n`, /^t\.yaml:1: the file holds a list; a decision table is a mapping/],
    ["no cases", "name: x\n", /^t\.yaml:1: no "cases": a table needs a list of cases$/],
    ["empty cases", "name: x\ncases: []\n", /^t\.yaml:2: "cases" must be a non-empty list of cases, got an empty list$/],
    ["cases not a list", "cases: { roles: [reader] }\n", /^t\.yaml:1: "cases" must be a non-empty list of cases, got a mapping$/],
    ["an unknown top-level key", `name: x\ncase:\n  - ${CASE}\n`, /^t\.yaml:2: unknown key "case" \(a table has name, defaults, cases\)$/],
    ["a name that is not a string", `name: 3\ncases:\n  - ${CASE}\n`, /^t\.yaml:1: "name" must be a non-empty string, got a number/],
    ["defaults not a mapping", `defaults: [reader]\ncases:\n  - ${CASE}\n`, /^t\.yaml:1: "defaults" must be a mapping of case fields, got a list$/],
    ["an unknown key in defaults", `defaults: { colour: red }\ncases:\n  - ${CASE}\n`, /^t\.yaml:1: defaults: unknown key "colour" \(use roles, org, /],
    ["a name in defaults", `defaults: { name: x }\ncases:\n  - ${CASE}\n`, /^t\.yaml:1: defaults: unknown key "name"/],
    ["a case that is not a mapping", "cases:\n  - just text\n", /^t\.yaml:2: case 1: a case must be a mapping, got "just text"$/],
    ["an unknown key in a case", "cases:\n  - name: typo\n    roles: [reader]\n    path: /x\n    methd: GET\n    expect: allow\n", /^t\.yaml:5: case 1 "typo": unknown key "methd" \(use name, roles, /],
    ["missing path", `cases:\n  - ${CASE}\n  - { name: second, roles: [reader], expect: allow }\n`, /^t\.yaml:3: case 2 "second": missing "path" \(in the case or in defaults\)$/],
    ["missing expect", "cases:\n  - { roles: [reader], path: /x }\n", /^t\.yaml:2: case 1: missing "expect" \(allow or deny\)$/],
    ["missing roles", "cases:\n  - { path: /x, expect: deny }\n", /^t\.yaml:2: case 1: missing "roles"/],
    ["roles not a list", "cases:\n  - { roles: reader, path: /x, expect: deny }\n", /^t\.yaml:2: case 1: "roles" must be a list of role names, such as \[reader\], got "reader"$/],
    ["a role that is not a string", "cases:\n  - { roles: [1], path: /x, expect: deny }\n", /^t\.yaml:2: case 1: "roles" must hold role names, got a number/],
    ["empty roles", "cases:\n  - { roles: [], path: /x, expect: deny }\n", /^t\.yaml:2: case 1: "roles" is empty: a key has at least one role$/],
    ["an impossible role", "cases:\n  - { roles: [read er], path: /x, expect: deny }\n", /case 1: role "read er" is not a valid role name/],
    ["a path that is not a string", "cases:\n  - { roles: [reader], path: 12, expect: deny }\n", /^t\.yaml:2: case 1: "path" must be a string, got a number \(12; quote it/],
    ["a null method", "cases:\n  - { roles: [reader], path: /x, method: ~, expect: deny }\n", /case 1: "method" must be a string, got nothing \(null; write "" for empty\)$/],
    ["expect not allow or deny", "cases:\n  - { roles: [reader], path: /x, expect: yes please }\n", /case 1: "expect" must be allow or deny, got "yes please"$/],
    ["expect as a boolean", "cases:\n  - { roles: [reader], path: /x, expect: true }\n", /case 1: "expect" must be a string, got a boolean/],
    ["an unknown reason", "cases:\n  - { roles: [reader], path: /x, expect: deny, reason: expired }\n", /case 1: "reason" must be one of allowed, forbidden, bad_request, not_found, got "expired"$/],
    ["a reason that contradicts expect", "cases:\n  - { roles: [reader], path: /x, expect: deny, reason: allowed }\n", /case 1: "reason: allowed" contradicts "expect: deny"$/],
    ["a deny reason on an allow", "cases:\n  - { roles: [reader], path: /x, expect: allow, reason: forbidden }\n", /case 1: "reason: forbidden" contradicts "expect: allow"$/],
    ["a rule that is not FILE:LINE", "cases:\n  - { roles: [reader], path: /x, expect: allow, rule: line 17 }\n", /case 1: "rule" must be FILE:LINE, such as policy\.csv:17, got "line 17"$/],
    ["a rule on a deny", "cases:\n  - { roles: [reader], path: /x, expect: deny, rule: policy.csv:17 }\n", /case 1: "rule" names the rule that allowed; a deny has none$/],
    ["an impossible key org", "cases:\n  - { roles: [reader], org: acme corp, path: /x, expect: deny }\n", /case 1: "org" "acme corp" is not a valid org name/],
    ["an impossible key namespace", "cases:\n  - { roles: [reader], key_namespace: a/b, path: /x, expect: deny }\n", /case 1: "key_namespace" "a\/b" is not a valid namespace/],
    ["key management with no method", "cases:\n  - { roles: [admin], path: keys, expect: allow }\n", /case 1: "keys" is a key-management resource: it needs one method/],
    ["key management with a namespace", "cases:\n  - { roles: [admin], path: keys, method: GET, namespace: a, expect: allow }\n", /case 1: "keys" is a key-management resource: ManageKey takes no namespace or request_org$/],
  ])("%s", (_what, text, error) => {
    const errors = parseErrors(text);
    expect(errors.some((e) => error.test(e)), errors.join("\n")).toBe(true);
  });

  it("reports every problem in a file, not only the first", () => {
    const errors = parseErrors(`
name: many
defaults: { colour: red }
cases:
  - { name: first, roles: [reader], path: /x, methd: GET, expect: allow }
  - { roles: [reader], path: /x }
  - { roles: [reader], path: /x, expect: allow }
`);
    expect(errors).toEqual([
      't.yaml:3: defaults: unknown key "colour" (use roles, org, key_namespace, namespace, request_org, path, method, expect, reason, rule, owner, owner_namespace)',
      't.yaml:5: case 1 "first": unknown key "methd" (use name, roles, org, key_namespace, namespace, request_org, path, method, expect, reason, rule, owner, owner_namespace)',
      't.yaml:6: case 2: missing "expect" (allow or deny)',
    ]);
  });

  it("reports a wrong value once, not also as missing", () => {
    expect(parseErrors("cases:\n  - { roles: [reader], path: [/x], expect: deny }\n")).toEqual(['t.yaml:2: case 1: "path" must be a string, got a list']);
  });
});

/** A key as the server would have loaded it: what Authorize decides on after the lookup. */
function keyFor(c: DecisionCase): KeyRecord {
  const at = new Date("2026-01-01T00:00:00Z");
  return {
    id: "key_test",
    name: "test",
    org: c.org,
    namespace: c.keyNamespace,
    roles: c.roles,
    enabled: true,
    displayPrefix: "sk-sb-test",
    createdAt: at,
    updatedAt: at,
    expiresAt: null,
    revokedAt: null,
    lastUsedAt: null,
    rotatedFrom: null,
    rateLimit: null,
    maxSandboxes: null,
    budgetId: "key_test",
    parentBudgets: [],
    createdBy: "local",
  };
}

describe("evaluation", () => {
  it("decides every shipped request case exactly as Authorize does for such a key", async () => {
    const cases = shipped.flatMap((t) => t.cases).filter((c) => !isManagementResource(c.path));
    expect(cases.length).toBeGreaterThan(400);
    for (const c of cases) {
      // A case that states an owner is decided with ownership on, the ledger answering that owner.
      const owner = c.owner === undefined || c.owner === "none" ? null : { org: c.owner, namespace: c.ownerNamespace ?? "default", keyId: "key_owner" };
      const authorize = createAuthorizer({
        lookupKey: async () => ({ status: "ok", key: keyFor(c) }),
        policy: () => policy,
        now: () => new Date(),
        ...(c.owner !== undefined && { ownership: { owner: async () => owner } }),
      });
      const server = await authorize({ credential: "sk-sb-any", path: c.path, method: c.method, namespace: c.namespace, org: c.requestOrg });
      const { key: _key, ...serverDecision } = server;
      expect(decideCase(policy, c), c.name).toEqual(serverDecision);
    }
  });

  it("decides key management as ManageKey's policy check: the key's org and namespace, one method", () => {
    for (const c of shipped.flatMap((t) => t.cases).filter((c) => isManagementResource(c.path))) {
      const expected = policy.decide({ roles: c.roles, org: c.org, namespace: c.keyNamespace, path: c.path, method: c.method.toUpperCase() });
      const decision = decideCase(policy, c);
      expect({ allowed: decision.allowed, rule: decision.matchedRule }, c.name).toEqual(expected);
      if (!decision.allowed) expect(decision).toMatchObject({ reason: "forbidden", message: `API key is not allowed to ${c.method.toUpperCase()} ${c.path}` });
    }
  });

  it("passes a case when decision, reason and rule all match", () => {
    const table = parseOk(`
cases:
  - { roles: [reader], path: /sandboxes, method: GET, expect: allow, reason: allowed, rule: policy.csv:26 }
  - { roles: [reader], path: /sandboxes, method: POST, expect: deny, reason: forbidden }
  - { roles: [admin], path: /a/../b, method: GET, expect: deny, reason: bad_request }
`);
    const results = runDecisionTables(policy, [table]);
    expect(results.map((r) => [r.passed, r.mismatches])).toEqual([
      [true, []],
      [true, []],
      [true, []],
    ]);
  });

  it("fails a case on the wrong decision, reason or rule, saying which, with the closest rules for a policy deny", () => {
    const table = parseOk(
      `
name: failing
cases:
  - { name: wrong decision, roles: [reader], path: /sandboxes/sbx-1, method: DELETE, expect: allow }
  - { name: wrong rule, roles: [writer], path: /sandboxes, method: GET, expect: allow, rule: policy.csv:50 }
  - { name: wrong reason, roles: [admin], path: /a/../b, method: GET, expect: deny, reason: forbidden }
  - { name: passes, roles: [reader], path: /sandboxes, method: GET, expect: allow }
`,
      "failing.yaml",
    );
    const results = runDecisionTables(policy, [table]);
    expect(results.map((r) => [r.case.name, r.passed, r.mismatches])).toEqual([
      ["wrong decision", false, ["expected allow, got deny"]],
      ["wrong rule", false, ["expected rule policy.csv:50, got policy.csv:26"]],
      ["wrong reason", false, ["expected reason forbidden, got bad_request"]],
      ["passes", true, []],
    ]);
    expect(results[0]).toMatchObject({ file: "failing.yaml", table: "failing" });
    expect(results[0]!.decision).toMatchObject({ allowed: false, reason: "forbidden", message: "API key is not allowed to DELETE /sandboxes/sbx-1", matchedRule: "" });
    const denied = results[0]!.decision;
    expect(denied.allowed ? [] : denied.explanation?.map((m) => m.rule)).toContain("policy.csv:52");
    expect(results[2]!.decision).toMatchObject({ reason: "bad_request", message: 'path contains a ".." segment' });
    expect(results[2]!.decision).not.toHaveProperty("explanation");
  });

  it("with no method, every method must be allowed; the first one that is not names the deny", () => {
    const c = oneCase("cases:\n  - { roles: [writer], path: /sandboxes, expect: deny }\n");
    expect(decideCase(policy, c)).toMatchObject({ allowed: false, reason: "forbidden", message: "API key is not allowed to PUT /sandboxes" });
  });

  it("HEAD is not GET unless the policy says so", async () => {
    const getOnly = await loadPolicy(join(FIXTURES, "policy-test-get-only"));
    const [get, head] = parseOk(`
defaults: { roles: [reader], path: /items/1 }
cases:
  - { method: GET, expect: allow, rule: policy.csv:2 }
  - { method: HEAD, expect: deny, reason: forbidden }
`).cases as [DecisionCase, DecisionCase];
    expect(evaluateCase(getOnly, { file: "x", name: "x", cases: [] }, get).passed).toBe(true);
    expect(evaluateCase(getOnly, { file: "x", name: "x", cases: [] }, head).passed).toBe(true);
    // The default policy does say so.
    expect(decideCase(policy, head)).toMatchObject({ allowed: false });
    expect(decideCase(policy, { ...head, path: "/sandboxes/sbx-1" })).toMatchObject({ allowed: true, matchedRule: "policy.csv:28" });
  });
});

/** keyMatch2, written out independently of Casbin and keygate. */
function pathMatches(path: string, pattern: string): boolean {
  const regex = pattern
    .split("/")
    .map((part) => (part === "*" ? ".*" : part.startsWith(":") ? "[^/]+" : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${regex}$`).test(path);
}

const INHERITS: Record<string, readonly string[]> = ROLE_INHERITS;

describe("the shipped tables (policies/tests/)", () => {
  it("all pass on the shipped policy", () => {
    const results = runDecisionTables(policy, shipped);
    expect(results.filter((r) => !r.passed).map((r) => `${r.file}: ${r.case.name}: ${r.mismatches.join("; ")}`)).toEqual([]);
    expect(results.length).toBeGreaterThan(450);
  });

  // Cube serves every route at / and under /cubeapi/v1 (routes.yaml strips the prefix): both forms are in the tables.
  const keys: Role[][] = [["reader"], ["writer"], ["platform"], ["admin"], ["admin", "platform"]];
  it.each(keys.flatMap((roles) => ["", "/cubeapi/v1"].map((prefix) => [roles.join(" + "), prefix, roles] as const)))(
    "cover every Cube/E2B route × every method for %s, as SPEC.md and the e2b SDK say (prefix %j)",
    (_, prefix, roles) => {
      const cases = shipped.flatMap((t) => t.cases).filter((c) => c.roles.join() === roles.join() && c.org === "acme" && c.requestOrg === "" && c.namespace === "" && c.keyNamespace === "*" && c.owner === undefined);
      const role = roles.join("+");
      for (const route of CUBE_ROUTES) {
        const path = prefix + route.example;
        for (const method of KNOWN_METHODS) {
          const found = cases.filter((c) => c.path === path && c.method === method);
          expect(found.length, `${role} ${method} ${path}`).toBeGreaterThan(0);
          const may = mayUse(roles, route, method);
          expect(found.map((c) => c.expect), `${role} ${method} ${path}`).toEqual(found.map(() => (may ? "allow" : "deny")));
          if (may) expect(found.some((c) => c.rule !== undefined), `${role} ${method} ${path} names its rule`).toBe(true);
        }
      }
    },
  );

  it("name rules that are p lines of policy.csv which really allow the case", () => {
    const lines = readFileSync(join(POLICY_DIR, "policy.csv"), "utf8").split(/\r?\n/);
    const withRule = shipped.flatMap((t) => t.cases).filter((c) => c.rule !== undefined);
    expect(withRule.length).toBeGreaterThan(200);
    for (const c of withRule) {
      const [file, lineNo] = c.rule!.split(":") as [string, string];
      expect(file).toBe("policy.csv");
      const [ptype, sub, org, ns, pattern, method] = (lines[Number(lineNo) - 1] ?? "").split(",").map((f) => f.trim());
      const label = `${c.name} → ${c.rule}`;
      expect(ptype, label).toBe("p");
      expect(c.roles.flatMap((role) => INHERITS[role] ?? [role]), label).toContain(sub);
      expect([org, ns], label).toEqual(["*", "*"]);
      const path = c.path.split("?")[0]!.replace(/\/+/g, "/").replace(/(.)\/$/, "$1").replace("%2D", "-").replace(/^\/cubeapi\/v1(?=\/)/, "");
      expect(pathMatches(path, pattern!), label).toBe(true);
      expect(new RegExp(method!).test(c.method === "" ? "GET" : c.method.toUpperCase()), label).toBe(true);
    }
  });

  it("include key management (admin only), bad paths, missing methods, org hints and scoped keys", () => {
    const cases = shipped.flatMap((t) => t.cases);
    const management = cases.filter((c) => isManagementResource(c.path));
    expect(management.filter((c) => c.expect === "allow").every((c) => c.roles.includes("admin"))).toBe(true);
    expect(management.filter((c) => !c.roles.includes("admin")).length).toBeGreaterThanOrEqual(16);
    expect(cases.filter((c) => c.reason === "bad_request" && /%2f|%5c|\.\./i.test(c.path)).length).toBeGreaterThanOrEqual(4);
    expect(cases.filter((c) => c.method === "").map((c) => c.roles[0])).toEqual(expect.arrayContaining(["reader", "writer", "platform", "admin"]));
    // The terminal is a shell: a GET no reader may make, every writer may.
    const terminal = cases.filter((c) => c.path === "/sandboxes/sbx-1/terminal/ws" && c.method === "GET" && c.roles.length === 1);
    expect(Object.fromEntries(terminal.map((c) => [c.roles[0], c.expect]))).toEqual({ reader: "deny", writer: "allow", platform: "deny", admin: "allow" });
    expect(cases.some((c) => c.requestOrg !== "" && c.requestOrg !== c.org && c.roles.includes("admin") && c.expect === "deny")).toBe(true);
    expect(cases.some((c) => c.keyNamespace !== "*" && c.namespace !== "" && c.namespace !== c.keyNamespace && c.expect === "deny")).toBe(true);
  });
});
