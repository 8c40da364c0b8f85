import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KNOWN_METHODS } from "../../src/core/request/normalize.js";
import { loadPolicy, PolicyLoadError, type Policy } from "../../src/core/policy/policy.js";
import type { PolicyRequest } from "../../src/core/policy/policy-request.js";
import { CUBE_ROUTES, INHERITS, may, ROLES, type CubeRoute, type Role } from "../support/cube-routes.js";

const POLICY_DIR = "policies";
const ORG = "acme";
const NS = "default";

const ROUTES = CUBE_ROUTES;
type Route = CubeRoute;

/** What the spec says each role may do on a route. */
function expected(role: Role, route: Route, method: string): boolean {
  return may([role], route, method);
}

interface CsvRule {
  ptype: string;
  fields: string[];
}

/** Reads "policy.csv:NN" back out of the file, so a matched rule is checked against the text itself. */
async function ruleAt(dir: string, where: string): Promise<CsvRule> {
  const match = /^([^:]+):(\d+)$/.exec(where);
  if (!match) throw new Error(`"${where}" is not FILE:LINE`);
  const lines = (await readFile(join(dir, match[1]!), "utf8")).split(/\r?\n/);
  const line = lines[Number(match[2]) - 1];
  if (line === undefined) throw new Error(`${where} is past the end of the file`);
  const [ptype, ...fields] = line.split(",").map((f) => f.trim());
  return { ptype: ptype!, fields };
}

/** keyMatch2, written out independently of Casbin. */
function pathMatches(path: string, pattern: string): boolean {
  const regex = pattern
    .split("/")
    .map((part) => (part === "*" ? ".*" : part.startsWith(":") ? "[^/]+" : part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")))
    .join("/");
  return new RegExp(`^${regex}$`).test(path);
}

let policy: Policy;
let policyLines: string[];
const temps: string[] = [];

async function tempPolicy(files: Record<string, string>, options: { model?: boolean } = {}): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "keygate-policy-test-"));
  temps.push(dir);
  if (options.model !== false) await copyFile(join(POLICY_DIR, "model.conf"), join(dir, "model.conf"));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return dir;
}

async function loadError(dir: string): Promise<PolicyLoadError> {
  try {
    await loadPolicy(dir);
  } catch (error) {
    expect(error).toBeInstanceOf(PolicyLoadError);
    return error as PolicyLoadError;
  }
  throw new Error(`loading ${dir} should have failed`);
}

function request(overrides: Partial<PolicyRequest> & Pick<PolicyRequest, "roles" | "path" | "method">): PolicyRequest {
  return { org: ORG, namespace: NS, ...overrides };
}

beforeAll(async () => {
  policy = await loadPolicy(POLICY_DIR);
  policyLines = (await readFile(join(POLICY_DIR, "policy.csv"), "utf8")).split(/\r?\n/);
});

afterAll(async () => {
  for (const dir of temps) await rm(dir, { recursive: true, force: true });
});

describe("the default policy (policies/) on every Cube/E2B route", () => {
  const table = ROLES.flatMap((role) =>
    ROUTES.flatMap((route) =>
      KNOWN_METHODS.map((method) => ({ role, method, path: route.example, route, allowed: expected(role, route, method) })),
    ),
  );

  it("the table is complete: 4 roles × 38 routes × 7 methods", () => {
    expect(ROUTES).toHaveLength(38);
    expect(table).toHaveLength(4 * 38 * KNOWN_METHODS.length);
  });

  it.each(table.map((row) => [row.role, row.allowed ? "may" : "may not", row.method, row.path, row] as const))(
    "%s %s %s %s",
    async (_role, _verb, _method, _path, { role, method, path, route, allowed }) => {
      const decision = policy.decide(request({ roles: [role], path, method }));
      expect(decision.allowed).toBe(allowed);
      if (!allowed) {
        expect(decision.rule).toBe("");
        return;
      }
      // matched_rule points at the line of policy.csv that allowed, and that line really says so
      expect(decision.rule).toMatch(/^policy\.csv:\d+$/);
      const rule = await ruleAt(POLICY_DIR, decision.rule);
      expect(rule.ptype).toBe("p");
      const [sub, org, ns, pattern, methodRegex] = rule.fields as [string, string, string, string, string];
      expect(INHERITS[role]).toContain(sub);
      expect(org).toBe("*");
      expect(ns).toBe("*");
      expect(new RegExp(methodRegex).test(method)).toBe(true);
      expect(pathMatches(path, pattern)).toBe(true);
      // No catch-all: every allow is the route's own line (or /templates/:id for a literal it also matches), for admin too.
      expect([route.pattern, route.alsoMatches]).toContain(pattern);
    },
  );

  it("every route is named by a line of its own", () => {
    for (const route of ROUTES) {
      const routeLines = policyLines.filter((line) => line.split(",").map((f) => f.trim())[4] === route.pattern);
      expect(routeLines.length, route.pattern).toBeGreaterThan(0);
    }
  });

  it("every method pattern in policy.csv is anchored: no partial or unknown methods match", () => {
    for (const line of policyLines) {
      const fields = line.split(",").map((f) => f.trim());
      if (fields[0] !== "p") continue;
      const methods = new RegExp(fields[5]!);
      expect(methods.test("CONNECT"), line).toBe(false);
      expect(methods.test("TRACE"), line).toBe(false);
      expect(methods.test("XGET"), line).toBe(false);
      expect(methods.test("GETX"), line).toBe(false);
    }
  });

  it.each(ROLES)("%s: a decision does not depend on the org or namespace in the default policy", (role) => {
    for (const [org, namespace] of [
      ["acme", "default"],
      ["globex", "prod"],
      ["org-2", "*"],
    ] as const) {
      expect(policy.decide({ roles: [role], org, namespace, path: "/sandboxes", method: "GET" }).allowed).toBe(true);
      expect(policy.decide({ roles: [role], org, namespace, path: "/sandboxes", method: "POST" }).allowed).toBe(role === "writer" || role === "admin");
      expect(policy.decide({ roles: [role], org, namespace, path: "/templates/tpl-1", method: "DELETE" }).allowed).toBe(role === "platform");
    }
  });
});

describe("paths outside the listed routes", () => {
  const paths = ["/", "/health", "/admin", "/keys", "/sandboxes/sbx-1/files", "/sandboxes/a/b/c/d", "/templates/t/builds", "/v3/sandboxes", "/SANDBOXES", "/sandboxesX"];

  it.each(paths)("no role, admin and a platform operator included, may use any method on %s (there is no catch-all)", (path) => {
    for (const roles of [["reader"], ["writer"], ["platform"], ["admin"], ["admin", "platform"]]) {
      for (const method of KNOWN_METHODS) {
        expect(policy.decide(request({ roles, path, method })), `${roles.join("+")} ${method}`).toEqual({ allowed: false, rule: "" });
      }
    }
  });

  it("no p line has a path pattern wider than one route (no /*, no *)", () => {
    for (const line of policyLines) {
      const fields = line.split(",").map((f) => f.trim());
      if (fields[0] === "p") expect(fields[4], line).not.toMatch(/\*/);
    }
  });

  it.each(paths)("reader and writer may use no method on %s", (path) => {
    for (const role of ["reader", "writer"]) {
      for (const method of KNOWN_METHODS) {
        expect(policy.decide(request({ roles: [role], path, method })), `${role} ${method}`).toEqual({ allowed: false, rule: "" });
      }
    }
  });

  it.each([
    ["GET", "/sandboxes/sbx-1/"],
    ["GET", "/sandboxes//logs"],
    ["GET", "sandboxes"],
    ["GET", ""],
    ["get", "/sandboxes"],
    ["", "/sandboxes"],
    ["CONNECT", "/sandboxes"],
    ["GET|POST", "/sandboxes"],
  ])("writer: %j %j (not normalized) is denied rather than guessed", (method, path) => {
    expect(policy.decide(request({ roles: ["writer"], path, method })).allowed).toBe(false);
  });

  it("an unknown role or no role at all is denied", () => {
    expect(policy.decide(request({ roles: ["superuser"], path: "/sandboxes", method: "GET" }))).toEqual({ allowed: false, rule: "" });
    expect(policy.decide(request({ roles: [], path: "/sandboxes", method: "GET" }))).toEqual({ allowed: false, rule: "" });
    expect(policy.decide(request({ roles: ["*"], path: "/sandboxes", method: "GET" })).allowed).toBe(false);
  });

  it("with several roles, any role that allows is enough", () => {
    const decision = policy.decide(request({ roles: ["reader", "writer"], path: "/sandboxes", method: "POST" }));
    expect(decision.allowed).toBe(true);
    expect(policyLines[Number(decision.rule.split(":")[1]) - 1]).toBe("p, writer, *, *, /sandboxes, ^POST$");
  });
});

describe("methods", () => {
  it("HEAD is not implicitly GET: a rule naming only GET denies HEAD", async () => {
    const custom = await loadPolicy(await tempPolicy({ "policy.csv": "p, getter, *, *, /sandboxes, ^GET$\n" }));
    expect(custom.decide(request({ roles: ["getter"], path: "/sandboxes", method: "GET" }))).toEqual({ allowed: true, rule: "policy.csv:1" });
    expect(custom.decide(request({ roles: ["getter"], path: "/sandboxes", method: "HEAD" }))).toEqual({ allowed: false, rule: "" });
  });
});

describe("key management resources (KeyService/ManageKey)", () => {
  const MANAGE: [resource: string, method: string][] = [
    ["keys", "GET"],
    ["keys", "POST"],
    ["keys/key_x", "GET"],
    ["keys/key_x", "PATCH"],
    ["keys/key_x", "DELETE"],
    ["keys/key_x/revoke", "POST"],
    ["keys/key_x/rotate", "POST"],
    ["keys/reset-all", "POST"],
  ];

  it.each(MANAGE)("admin may use %s with %s", async (resource, method) => {
    const decision = policy.decide(request({ roles: ["admin"], path: resource, method }));
    expect(decision.allowed).toBe(true);
    const rule = await ruleAt(POLICY_DIR, decision.rule);
    expect(rule.ptype).toBe("p");
    expect(rule.fields[0]).toBe("admin");
    expect(rule.fields[3]).toMatch(/^keys/);
    expect(pathMatches(resource, rule.fields[3]!)).toBe(true);
  });

  it.each(MANAGE.flatMap(([resource, method]) => ["reader", "writer"].map((role) => [role, resource, method] as const)))(
    "%s may not touch %s with %s",
    (role, resource, method) => {
      expect(policy.decide(request({ roles: [role], path: resource, method }))).toEqual({ allowed: false, rule: "" });
    },
  );

  it.each([
    ["keys", "DELETE"],
    ["keys", "PUT"],
    ["keys/key_x/revoke", "GET"],
    ["keys/key_x/rotate", "DELETE"],
    ["keys/key_x/other", "POST"],
    ["keys/key_x/revoke/extra", "POST"],
    ["keysX", "GET"],
    ["key", "GET"],
  ])("admin may not use %s with %s (no rule says so)", (resource, method) => {
    expect(policy.decide(request({ roles: ["admin"], path: resource, method })).allowed).toBe(false);
  });

  it("a path rule '/*' never grants a key resource, even with every method", async () => {
    const dir = await tempPolicy({ "policy.csv": "p, boss, *, *, /*, .*\np, anyone, *, *, /keys, .*\n" });
    const custom = await loadPolicy(dir);
    for (const [resource, method] of MANAGE) {
      expect(custom.decide(request({ roles: ["boss"], path: resource, method })).allowed, `${method} ${resource}`).toBe(false);
      expect(custom.decide(request({ roles: ["anyone"], path: resource, method })).allowed, `${method} ${resource}`).toBe(false);
    }
    // while the request path "/keys" (a Cube path, not key management) is an ordinary path
    expect(custom.decide(request({ roles: ["boss"], path: "/keys", method: "POST" })).allowed).toBe(true);
  });
});

describe("role inheritance", () => {
  it.each([
    [["admin"], ["admin", "writer", "reader"]],
    [["writer"], ["writer", "reader"]],
    [["reader"], ["reader"]],
    [["reader", "admin"], ["admin", "writer", "reader"]],
    [["nobody"], ["nobody"]],
    [[], []],
  ])("inheritedRoles(%j, acme) is %j", async (roles, expectedRoles) => {
    const inherited = await policy.inheritedRoles(roles, "acme");
    expect([...inherited].sort()).toEqual([...expectedRoles].sort());
  });

  it("default-policy inheritance ('*' org) holds in every org", async () => {
    for (const org of ["acme", "globex", "x"]) {
      expect(await policy.inheritedRoles(["admin"], org)).toEqual(new Set(["admin", "writer", "reader"]));
    }
  });

  describe("a g line with an org holds in that org only", () => {
    let custom: Policy;
    let dir: string;
    beforeAll(async () => {
      dir = await tempPolicy({
        "policy.csv": [
          "# custom policy", //                                   1
          "p, reader, *, *, /sandboxes, ^(GET|HEAD)$", //         2
          "p, writer, *, *, /sandboxes, ^POST$", //               3
          "g, writer, reader, *", //                              4
          "", //                                                  5
          "g, boss, writer, org1", //                             6
        ].join("\n"),
      });
      custom = await loadPolicy(dir);
    });

    it.each([
      ["org1", "POST", true, "policy.csv:3"],
      ["org1", "GET", true, "policy.csv:2"],
      ["org1", "HEAD", true, "policy.csv:2"],
      ["org1", "DELETE", false, ""],
      ["org2", "POST", false, ""],
      ["org2", "GET", false, ""],
      ["ORG1", "POST", false, ""],
      ["org10", "POST", false, ""],
      ["*", "POST", false, ""],
      ["", "POST", false, ""],
    ])("boss in %j may %s: %s (%s)", (org, method, allowed, rule) => {
      expect(custom.decide({ roles: ["boss"], org, namespace: NS, path: "/sandboxes", method })).toEqual({ allowed, rule });
    });

    it("inheritedRoles follows the org", async () => {
      expect(await custom.inheritedRoles(["boss"], "org1")).toEqual(new Set(["boss", "writer", "reader"]));
      expect(await custom.inheritedRoles(["boss"], "org2")).toEqual(new Set(["boss"]));
      expect(await custom.inheritedRoles(["boss"], "*")).toEqual(new Set(["boss"]));
      expect(await custom.inheritedRoles(["writer"], "org2")).toEqual(new Set(["writer", "reader"]));
    });

    it("matched rules name the right line, skipping comments and blank lines", async () => {
      const decision = custom.decide({ roles: ["boss"], org: "org1", namespace: NS, path: "/sandboxes", method: "POST" });
      expect(await ruleAt(dir, decision.rule)).toEqual({ ptype: "p", fields: ["writer", "*", "*", "/sandboxes", "^POST$"] });
    });
  });
});

describe("org- and namespace-specific rules", () => {
  let custom: Policy;
  beforeAll(async () => {
    const dir = await tempPolicy({
      "policy.csv": [
        "p, acme-only, acme, *, /volumes, ^GET$",
        "p, dev-only, *, dev, /volumes, ^POST$",
        "p, both, acme, dev, /volumes/:id, ^DELETE$",
      ].join("\n"),
      "zz-more.csv": "# a second rules file\n\np, extra, *, *, /snapshots, ^GET$\n",
    });
    custom = await loadPolicy(dir);
  });

  it.each([
    // role        org       namespace  method    path              allowed  rule
    ["acme-only", "acme", "default", "GET", "/volumes", true, "policy.csv:1"],
    ["acme-only", "acme", "dev", "GET", "/volumes", true, "policy.csv:1"],
    ["acme-only", "globex", "default", "GET", "/volumes", false, ""],
    ["acme-only", "Acme", "default", "GET", "/volumes", false, ""],
    ["acme-only", "*", "default", "GET", "/volumes", false, ""],
    ["acme-only", "acme", "default", "POST", "/volumes", false, ""],
    ["dev-only", "acme", "dev", "POST", "/volumes", true, "policy.csv:2"],
    ["dev-only", "globex", "dev", "POST", "/volumes", true, "policy.csv:2"],
    ["dev-only", "acme", "prod", "POST", "/volumes", false, ""],
    ["dev-only", "acme", "", "POST", "/volumes", false, ""],
    ["dev-only", "acme", "*", "POST", "/volumes", false, ""],
    ["dev-only", "acme", "dev-2", "POST", "/volumes", false, ""],
    ["both", "acme", "dev", "DELETE", "/volumes/vol-1", true, "policy.csv:3"],
    ["both", "acme", "prod", "DELETE", "/volumes/vol-1", false, ""],
    ["both", "globex", "dev", "DELETE", "/volumes/vol-1", false, ""],
    ["both", "acme", "dev", "DELETE", "/volumes", false, ""],
    ["extra", "acme", "dev", "GET", "/snapshots", true, "zz-more.csv:3"],
  ])("%s in org %j, namespace %j: %s %s → %s", (role, org, namespace, method, path, allowed, rule) => {
    expect(custom.decide({ roles: [role], org, namespace, path, method })).toEqual({ allowed, rule });
  });

  it("reports every rules file and counts p and g lines", () => {
    expect(custom.info.files).toEqual(["policy.csv", "zz-more.csv"]);
    expect(custom.info.rules).toBe(4);
  });
});

describe("policy info", () => {
  it("describes the default policy", () => {
    const pgLines = policyLines.filter((line) => /^\s*[pg],/.test(line)).length;
    expect(policy.info.dir).toBe(POLICY_DIR);
    expect(policy.info.files).toEqual(["policy.csv"]);
    expect(policy.info.rules).toBe(pgLines);
    expect(policy.info.version).toMatch(/^[0-9a-f]{12}$/);
  });

  it("the version changes when a rule changes and not otherwise", async () => {
    const a = await loadPolicy(await tempPolicy({ "policy.csv": "p, r, *, *, /a, ^GET$\n" }));
    const b = await loadPolicy(await tempPolicy({ "policy.csv": "p, r, *, *, /a, ^GET$\n" }));
    const c = await loadPolicy(await tempPolicy({ "policy.csv": "p, r, *, *, /a, ^POST$\n" }));
    expect(a.info.version).toBe(b.info.version);
    expect(a.info.version).not.toBe(c.info.version);
  });

  it("loadedAt comes from the clock it is given", async () => {
    const at = new Date("2030-01-02T03:04:05Z");
    expect((await loadPolicy(POLICY_DIR, () => at)).info.loadedAt).toBe(at);
  });
});

describe("loadPolicy errors name the file and line", () => {
  it.each([
    ["a p line with too few fields", "p, reader, *, *, /x", /bad\.csv:3: a "p" line has 5 fields, this one has 4/],
    ["a p line with too many fields", "p, reader, *, *, /x, ^GET$, extra", /bad\.csv:3: a "p" line has 5 fields, this one has 6/],
    ["a g line with too few fields", "g, boss, writer", /bad\.csv:3: a "g" line has 3 fields, this one has 2/],
    ["a g line with too many fields", "g, boss, writer, org1, extra", /bad\.csv:3: a "g" line has 3 fields, this one has 4/],
    ["an unknown ptype", "x, reader, *, *, /x, ^GET$", /bad\.csv:3: expected a "p" or "g" line/],
    ["a p2 ptype the model does not define", "p2, reader, *, *, /x, ^GET$", /bad\.csv:3: expected a "p" or "g" line/],
    ["an upper-case ptype", "P, reader, *, *, /x, ^GET$", /bad\.csv:3: expected a "p" or "g" line/],
    ["an unbalanced bracket in a method regex", "p, reader, *, *, /x, ^(GET$", /bad\.csv:3: cannot parse .*unmatched "\("/],
    ["an invalid method regex (quantifier)", "p, reader, *, *, /x, ^GET++$", /bad\.csv:3: invalid method pattern "\^GET\+\+\$"/],
    ["a path parameter with no name (Casbin would loop forever)", "p, reader, *, *, /x/:, ^GET$", /bad\.csv:3: invalid path pattern "\/x\/:"/],
    ["an invalid method regex (bracket)", "p, reader, *, *, /x, [GET", /bad\.csv:3: invalid method pattern/],
    ["an empty field", "p, reader, *, , /x, ^GET$", /bad\.csv:3: empty field/],
  ])("%s", async (_label, badLine, message) => {
    const dir = await tempPolicy({
      "a-good.csv": "p, reader, *, *, /ok, ^GET$\n",
      "bad.csv": `# line 1\np, reader, *, *, /fine, ^GET$\n${badLine}\np, reader, *, *, /after, ^GET$\n`,
    });
    const error = await loadError(dir);
    expect(error.name).toBe("PolicyLoadError");
    expect(error.message).toMatch(message);
  });

  it("rules written without spaces, indented or with quoted fields load, and cite their own line", async () => {
    const dir = await tempPolicy({
      "policy.csv": ['p,tight,*,*,/a,^GET$', "   p, indented, *, *, /b, ^GET$", 'p, quoted, *, *, "/c", "^(GET){1,2}$"', "\tg, alias, tight, *"].join("\n"),
    });
    const custom = await loadPolicy(dir);
    expect(custom.decide(request({ roles: ["tight"], path: "/a", method: "GET" }))).toEqual({ allowed: true, rule: "policy.csv:1" });
    expect(custom.decide(request({ roles: ["indented"], path: "/b", method: "GET" }))).toEqual({ allowed: true, rule: "policy.csv:2" });
    expect(custom.decide(request({ roles: ["quoted"], path: "/c", method: "GET" }))).toEqual({ allowed: true, rule: "policy.csv:3" });
    expect(custom.decide(request({ roles: ["alias"], path: "/a", method: "GET" }))).toEqual({ allowed: true, rule: "policy.csv:1" });
  });

  it("counts lines the same way with CRLF line endings", async () => {
    const dir = await tempPolicy({ "policy.csv": "# windows\r\np, r, *, *, /x, ^GET$\r\np, r, *, *, /y\r\n" });
    expect((await loadError(dir)).message).toMatch(/^policy\.csv:3: /);
  });

  it("a missing model.conf fails clearly", async () => {
    const dir = await tempPolicy({ "policy.csv": "p, r, *, *, /x, ^GET$\n" }, { model: false });
    const error = await loadError(dir);
    expect(error.message).toContain("model.conf");
    expect(error.message).toMatch(/cannot read/);
  });

  it("a directory with no .csv fails clearly", async () => {
    const dir = await tempPolicy({ "policy.csv.bak": "p, r, *, *, /x, ^GET$\n", "README.md": "no rules here\n" });
    const error = await loadError(dir);
    expect(error.message).toBe(`no .csv policy files in ${dir}`);
  });

  it("a directory that does not exist fails clearly", async () => {
    const dir = join(tmpdir(), "keygate-policy-test-does-not-exist", String(process.pid));
    const error = await loadError(dir);
    expect(error.message).toContain(dir);
  });

  it("a model.conf that is not a model fails clearly", async () => {
    const dir = await tempPolicy({ "policy.csv": "p, r, *, *, /x, ^GET$\n" }, { model: false });
    await writeFile(join(dir, "model.conf"), "[request_definition]\nr = sub\n");
    const error = await loadError(dir);
    expect(error.message).toMatch(/model\.conf/);
  });

  it("an empty .csv file is a valid policy that allows nothing", async () => {
    const empty = await loadPolicy(await tempPolicy({ "policy.csv": "# nothing yet\n" }));
    expect(empty.info.rules).toBe(0);
    expect(empty.decide(request({ roles: ["admin"], path: "/sandboxes", method: "GET" }))).toEqual({ allowed: false, rule: "" });
  });

  it("a sub-directory named like a csv file is not read as rules", async () => {
    const dir = await tempPolicy({ "policy.csv": "p, r, *, *, /x, ^GET$\n" });
    await mkdir(join(dir, "old.csv.d"));
    expect((await loadPolicy(dir)).info.files).toEqual(["policy.csv"]);
  });
});
