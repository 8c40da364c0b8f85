import { NO_ROUTES } from "../../src/core/policy/policy-routes.js";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KNOWN_METHODS } from "../../src/core/request/normalize.js";
import { lintPolicy } from "../../src/policy-tools/lint.js";
import { compileKeyMatch2, compileMethodPattern } from "../../src/core/policy/patterns.js";
import { readPolicySource, type Diagnostic, type PolicyRule, type PolicySource } from "../../src/core/policy/policy-source.js";

/**
 * `keygate policy lint` as decision tables: each row is a tiny policy and
 * every diagnostic it must produce, in order. A row that expects [] is the
 * check not firing. Policies go through readPolicySource from a temp dir, so
 * lint sees exactly what the server would load.
 */

type Expected = [line: number, severity: Diagnostic["severity"], fragment: string];

let root: string;
let standardModel: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "keygate-lint-"));
  standardModel = await readFile("policies/model.conf", "utf8");
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

async function lintFiles(files: Record<string, string>): Promise<Diagnostic[]> {
  const dir = await mkdtemp(join(root, "case-"));
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return lintPolicy(await readPolicySource(dir));
}

const lintCsv = (lines: string[]): Promise<Diagnostic[]> => lintFiles({ "model.conf": standardModel, "policy.csv": lines.join("\n") + "\n" });

/** Every diagnostic, in order, is the expected one (where, severity, and a fragment of the message). */
function expectExactly(found: Diagnostic[], expected: Expected[]): void {
  const shown = found.map((d) => `${d.where}: ${d.severity}: ${d.message}`).join("\n");
  expect(found.length, `got:\n${shown}`).toBe(expected.length);
  expected.forEach(([line, severity, fragment], i) => {
    expect({ where: found[i]!.where, severity: found[i]!.severity }, `got:\n${shown}`).toEqual({ where: `policy.csv:${line}`, severity });
    expect(found[i]!.message).toContain(fragment);
  });
}

describe("1. syntax: the reader's diagnostics are errors", () => {
  it.each<[string, string[], Expected[]]>([
    ["too few fields", ["p, reader, *, *, /a"], [[1, "error", 'a "p" line has 5 fields, this one has 4']]],
    ["too many g fields", ["g, a, b, *, extra"], [[1, "error", 'a "g" line has 3 fields, this one has 4']]],
    ["unknown ptype", ["x, a, b, *"], [[1, "error", 'expected a "p" or "g" line']]],
    ["unbalanced bracket", ["p, reader, *, *, /a, ^(GET$"], [[1, "error", 'unmatched "(" or ")"']]],
    ["nameless parameter (would hang Casbin)", ["p, reader, *, *, /a/:, ^GET$"], [[1, "error", 'a ":" parameter needs a name']]],
    ["invalid method regex", ["p, reader, *, *, /a, ^GET[$"], [[1, "error", 'invalid method pattern "^GET[$"']]],
    ["empty field", ["p, reader, , *, /a, ^GET$"], [[1, "error", "empty field"]]],
    ["comments, blank lines and a good rule", ["# reader", "", "p, reader, *, *, /a/:id, ^GET$"], []],
  ])("%s", async (_name, lines, expected) => {
    expectExactly(await lintCsv(lines), expected);
  });
});

describe("1. syntax: the model", () => {
  const customMatcher = (text: string) => text.replace("keyMatch2(r.path, p.path)", "keyMatch(r.path, p.path)");
  const withoutRoles = (text: string) => customMatcher(text).replace(/\[role_definition\]\ng = _, _, _\n/, "").replace(" && g(r.sub, p.sub, r.org)", " && r.sub == p.sub");
  const rules = "p, reader, *, *, /a, ^GET$\n";

  it.each<[string, Record<string, string> | ((model: string) => Record<string, string>), [string, Diagnostic["severity"], string][]]>([
    ["standard model", (model) => ({ "model.conf": model, "policy.csv": rules }), []],
    ["standard model, other whitespace", (model) => ({ "model.conf": model.replace(/ == /g, "=="), "policy.csv": rules }), []],
    ["missing model.conf", { "policy.csv": rules }, [["model.conf", "error", "cannot read"]]],
    ["not a model at all", { "model.conf": "garbage\n", "policy.csv": rules }, [["model.conf", "error", "invalid Casbin model"]]],
    ["empty model", { "model.conf": "", "policy.csv": rules }, [["model.conf", "error", "missing required sections"]]],
    ["a custom matcher", (model) => ({ "model.conf": customMatcher(model), "policy.csv": rules }), [["model.conf", "warning", "Casbin's evaluator: linear in the number of rules"]]],
    [
      "g lines without a role definition",
      (model) => ({ "model.conf": withoutRoles(model), "policy.csv": rules + "g, writer, reader, *\n" }),
      [
        ["model.conf", "error", 'no "g" role definition, but policy.csv:2'],
        ["model.conf", "warning", "Casbin's evaluator"],
      ],
    ],
    ["no csv files", (model) => ({ "model.conf": model }), [["", "error", "no .csv policy files"]]],
  ])("%s", async (_name, files, expected) => {
    const found = await lintFiles(typeof files === "function" ? files(standardModel) : files);
    expect(found.map((d) => [d.where, d.severity])).toEqual(expected.map(([where, severity]) => [where, severity]));
    expected.forEach(([, , fragment], i) => expect(found[i]!.message).toContain(fragment));
  });

  it("reports a missing directory once, not also its model", async () => {
    const found = lintPolicy(await readPolicySource(join(root, "does-not-exist")));
    expect(found.map((d) => [d.where, d.severity])).toEqual([["", "error"]]);
    expect(found[0]!.message).toMatch(/^policy directory .* does not exist$/);
  });
});

describe("2. names and roles", () => {
  it.each<[string, string[], Expected[]]>([
    ["valid names", ["p, team.lead:v2, acme-1, ns_a, /a, ^GET$"], []],
    ["role with a space", ["p, bad role, *, *, /a, ^GET$"], [[1, "error", 'role "bad role" is not a valid name']]],
    ["role starting with -", ["p, -lead, *, *, /a, ^GET$"], [[1, "error", "no key can hold it"]]],
    ["role * (a wildcard only for org and namespace)", ["p, *, *, *, /a, ^GET$"], [[1, "error", 'role "*" is not a valid name']]],
    ["org with a space", ["p, reader, acme corp, *, /a, ^GET$"], [[1, "error", 'org "acme corp" is neither "*" nor a valid name']]],
    ["namespace with a /", ["p, reader, *, team/a, /a, ^GET$"], [[1, "error", 'namespace "team/a" is neither "*" nor a valid name']]],
    [
      "g line: invalid child and domain",
      ["p, reader, *, *, /a, ^GET$", "g, the writer, reader, acme corp"],
      [
        [2, "error", 'role "the writer" is not a valid name'],
        [2, "error", 'org "acme corp"'],
      ],
    ],
    ["parent with no rules and no parents", ["g, auditor, ghost, *"], [[1, "warning", 'role "ghost" grants nothing']]],
    ["parent with no rules of its own, but one it inherits has some", ["p, base, *, *, /a, ^GET$", "g, mid, base, *", "g, top, mid, *"], []],
    ["parent that only inherits an empty role", ["g, mid, ghost, *", "g, top, mid, acme"], [
      [1, "warning", 'role "ghost" grants nothing'],
      [2, "warning", 'role "mid" grants nothing'],
    ]],
    ["a role only ever a child (keys hold it)", ["p, reader, *, *, /a, ^GET$", "g, alice, reader, *"], []],
    ["a role with rules adding an empty parent", ["p, reader, *, *, /a, ^GET$", "g, reader, extra, *"], [[2, "warning", '"reader" gains nothing from it']]],
  ])("%s", async (_name, lines, expected) => {
    expectExactly(await lintCsv(lines), expected);
  });
});

describe("3. role cycles", () => {
  const rule = "p, a, *, *, /a, ^GET$";
  it.each<[string, string[], Expected[]]>([
    ["a chain", [rule, "g, b, a, *", "g, c, b, *"], []],
    ["a role inheriting itself", [rule, "g, a, a, *"], [[2, "error", 'role cycle in every org: "a" → "a" (policy.csv:2)']]],
    ["two roles in one org", [rule, "g, a, b, acme", "g, b, a, acme"], [[3, "error", 'role cycle in org "acme": "a" → "b" → "a" (policy.csv:2, policy.csv:3)']]],
    ["an org link closed by a * link", [rule, "g, a, b, acme", "g, b, a, *"], [[3, "error", 'in org "acme"']]],
    ["the same pair in two different orgs", [rule, "g, a, b, acme", "g, b, a, other"], []],
    [
      "three roles in every org",
      [rule, "g, a, b, *", "g, b, c, *", "g, c, a, *"],
      [[4, "error", '"a" → "b" → "c" → "a" (policy.csv:2, policy.csv:3, policy.csv:4)']],
    ],
    ["a duplicate g line", [rule, "g, b, a, *", "g, b, a, *"], [[3, "warning", "duplicate of policy.csv:2"]]],
  ])("%s", async (_name, lines, expected) => {
    expectExactly(await lintCsv(lines), expected);
  });
});

describe("4. shadowed rules", () => {
  it.each<[string, string[], Expected[]]>([
    ["exact duplicate", ["p, r, *, *, /a, ^GET$", "p, r, *, *, /a, ^GET$"], [[2, "warning", "duplicate of policy.csv:1"]]],
    ["fewer methods on the same path", ["p, r, *, *, /a, ^(GET|HEAD)$", "p, r, *, *, /a, ^GET$"], [[2, "warning", "shadowed by policy.csv:1"]]],
    ["more methods on the same path", ["p, r, *, *, /a, ^GET$", "p, r, *, *, /a, ^(GET|HEAD)$"], []],
    ["the same path with another parameter name", ["p, r, *, *, /a/:id, ^GET$", "p, r, *, *, /a/:name, ^GET$"], [[2, "warning", "shadowed by policy.csv:1"]]],
    ["a /* prefix before a deeper path", ["p, r, *, *, /a/*, ^GET$", "p, r, *, *, /a/:id/logs, ^GET$"], [[2, "warning", "shadowed by policy.csv:1"]]],
    ["a /* prefix with a parameter", ["p, r, *, *, /a/:id/*, ^GET$", "p, r, *, *, /a/:x/logs/:y, ^GET$"], [[2, "warning", "shadowed by policy.csv:1"]]],
    ["a /* prefix does not cover the path itself", ["p, r, *, *, /a/*, ^GET$", "p, r, *, *, /a, ^GET$"], []],
    ["a /* prefix does not cover a longer first segment", ["p, r, *, *, /a/*, ^GET$", "p, r, *, *, /ab/c, ^GET$"], []],
    ["the broader rule comes later", ["p, r, *, *, /a/:id, ^GET$", "p, r, *, *, /a/*, ^GET$"], []],
    ["/* before a request path", ["p, r, *, *, /*, ^GET$", "p, r, *, *, /a, ^GET$"], [
      [1, "warning", 'path "/*"'],
      [2, "warning", "shadowed by policy.csv:1"],
    ]],
    ["/* never covers a key-management resource", ["p, r, *, *, /*, ^GET$", "p, r, *, *, keys, ^GET$"], [[1, "warning", 'path "/*"']]],
    ["* covers a key-management resource", ["p, r, *, *, *, ^GET$", "p, r, *, *, keys/:id, ^GET$"], [
      [1, "warning", 'path "*"'],
      [2, "warning", "shadowed by policy.csv:1"],
    ]],
    ["org * before one org", ["p, r, *, *, /a, ^GET$", "p, r, acme, *, /a, ^GET$"], [[2, "warning", "shadowed by policy.csv:1"]]],
    ["one org before org *", ["p, r, acme, *, /a, ^GET$", "p, r, *, *, /a, ^GET$"], []],
    ["namespace * before one namespace", ["p, r, *, *, /a, ^GET$", "p, r, *, ns1, /a, ^GET$"], [[2, "warning", "shadowed by policy.csv:1"]]],
    ["two different namespaces", ["p, r, *, ns1, /a, ^GET$", "p, r, *, ns2, /a, ^GET$"], []],
    ["two different roles", ["p, r, *, *, /a, ^GET$", "p, s, *, *, /a, ^GET$"], []],
    [
      "the first covering rule is named",
      ["p, r, *, *, /a/*, ^(GET|HEAD)$", "p, r, *, *, /a/:id, ^(GET|HEAD)$", "p, r, *, *, /a/:id, ^GET$"],
      [
        [2, "warning", "shadowed by policy.csv:1"],
        [3, "warning", "shadowed by policy.csv:1"],
      ],
    ],
    ["a method regex spelt differently but matching the same methods", ["p, r, *, *, /a, ^(GET|HEAD)$", "p, r, *, *, /a, ^(HEAD|GET)$"], [[2, "warning", "shadowed by policy.csv:1"]]],
  ])("%s", async (_name, lines, expected) => {
    expectExactly(await lintCsv(lines), expected);
  });

  it("only calls a rule shadowed when the earlier rule matches every request it matches", () => {
    const PATHS = ["/", "/a", "/b", "/a/b", "/a/a", "/b/a", "/a/b/c", "/a/b/c/d", "keys", "keys/k1", "keys/k1/revoke"];
    const segment = fc.constantFrom("a", "b", ":id", ":x");
    const pattern = fc.oneof(
      fc.tuple(fc.array(segment, { minLength: 1, maxLength: 3 }), fc.boolean()).map(([segments, star]) => `/${segments.join("/")}${star ? "/*" : ""}`),
      fc.constantFrom("/*", "*", "/", "keys", "keys/:id", "keys/*"),
    );
    const method = fc.constantFrom("^GET$", "^(GET|HEAD)$", "^POST$", "P", ".*", "^(GET|POST)$");
    const rule = fc.record({ sub: fc.constantFrom("r", "s"), org: fc.constantFrom("*", "acme"), path: pattern, method });
    fc.assert(
      fc.property(fc.array(rule, { minLength: 2, maxLength: 8 }), (drafts) => {
        const rules: PolicyRule[] = drafts.map((d, i) => ({ ...d, index: i, where: `policy.csv:${i + 1}`, ns: "*", text: "" }));
        const source: PolicySource = { dir: "", modelText: standardModel, files: ["policy.csv"], rules, links: [], diagnostics: [], routes: NO_ROUTES, version: "" };
        const matches = (r: PolicyRule, org: string, path: string, m: string) => {
          const p = compileKeyMatch2(r.path);
          const re = compileMethodPattern(r.method);
          return p.ok && re.ok && (r.org === "*" || r.org === org) && p.value.test(path) && re.value.test(m);
        };
        for (const d of lintPolicy(source)) {
          const by = /^(?:shadowed by|duplicate of) (policy\.csv:\d+)/.exec(d.message)?.[1];
          if (!by) continue;
          const later = rules.find((r) => r.where === d.where)!;
          const earlier = rules.find((r) => r.where === by)!;
          expect(earlier.index).toBeLessThan(later.index);
          expect(earlier.sub).toBe(later.sub);
          for (const org of ["acme", "other"]) {
            for (const path of PATHS) {
              for (const m of KNOWN_METHODS) {
                if (matches(later, org, path, m)) expect(matches(earlier, org, path, m), `${later.text || JSON.stringify(later)} ${org} ${m} ${path}`).toBe(true);
              }
            }
          }
        }
      }),
      { numRuns: 500 },
    );
  });

  it("compares rules across files in file-name order", async () => {
    const found = await lintFiles({ "model.conf": standardModel, "a.csv": "p, r, *, *, /x/*, ^GET$\n", "b.csv": "p, r, *, *, /x/y, ^GET$\n" });
    expect(found).toEqual([{ where: "b.csv:1", severity: "warning", message: "shadowed by a.csv:1, which already allows every request this rule allows" }]);
  });
});

describe("5. path patterns that match more than meant", () => {
  it.each<[string, string, Expected[]]>([
    ["a plain path", "/sandboxes/:id/logs", []],
    ["a final /* segment", "/sandboxes/:id/*", []],
    ["every request path", "/*", [[1, "warning", "matches every request path"]]],
    ["everything, key management included", "*", [[1, "warning", "every key-management resource"]]],
    ["only the root", "/", [[1, "warning", 'matches only the root path "/"']]],
    ["/* in the middle", "/a/*/b", [[1, "warning", "any number of segments"]]],
    ["* after a letter", "/sandboxes*", [[1, "warning", '"s*" = zero or more "s"']]],
    ["no leading / and not a management resource", "sandboxes/:id", [[1, "warning", 'has no leading "/"']]],
    ["a management resource", "keys/:id/revoke", []],
    ["the reset-all resource", "keys/reset-all", []],
    ["management resources under keys/*", "keys/*", []],
    ["a trailing /", "/sandboxes/", [[1, "warning", "matches nothing"]]],
    ["a double /", "/sandboxes//:id", [[1, "warning", 'contains "//"']]],
  ])("%s: %s", async (_name, path, expected) => {
    expectExactly(await lintCsv([`p, r, *, *, ${path}, ^GET$`]), expected);
  });
});

describe("5. a :param rule that no longer grants reset-all (issue 14, item 11)", () => {
  it.each<[string, string, Expected[]]>([
    ["keys/:id with POST", "p, r, *, *, keys/:id, ^POST$", [[1, "warning", 'path "keys/:id" with POST no longer grants reset-all (a ":param" never matches reset-all']]],
    ["keys/:x with every method", "p, r, *, *, keys/:x, ^.*$", [[1, "warning", "name keys/reset-all to grant it"]]],
    ["keys/:id without POST (the shipped admin rule)", "p, r, *, *, keys/:id, ^(GET|PATCH|DELETE)$", []],
    ["keys/reset-all itself", "p, r, *, *, keys/reset-all, ^POST$", []],
    ["keys/* (a wildcard still grants it)", "p, r, *, *, keys/*, ^POST$", []],
    ["keys/:id/revoke", "p, r, *, *, keys/:id/revoke, ^POST$", []],
  ])("%s", async (_name, line, expected) => {
    expectExactly(await lintCsv([line]), expected);
  });
});

describe("6 and 7. method patterns", () => {
  it.each<[string, string, Expected[]]>([
    ["anchored group", "^(GET|HEAD)$", []],
    ["anchored non-capturing group", "^(?:GET|HEAD)$", []],
    ["each alternative anchored", "^GET$|^POST$", []],
    ["every method", "^(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS)$", []],
    ["an unknown method only", "^FETCH$", [[1, "error", 'matches none of the methods a request can have (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS); it names "FETCH"']]],
    ["CONNECT, which keygate refuses", "^CONNECT$", [[1, "error", 'it names "CONNECT"']]],
    ["lower case", "^get$", [[1, "error", '"get" (methods are matched upper-case)']]],
    ["a regex matching no method", "^[0-9]+$", [[1, "error", "the rule never applies"]]],
    ["a known and an unknown method", "^(GET|FETCH)$", [[1, "warning", 'names "FETCH": not a method keygate accepts']]],
    ["two unknown among known", "^(GET|PURGE|HEAD|LINK)$", [[1, "warning", 'names "PURGE", "LINK"']]],
    ["unanchored, matching more", "P", [[1, "warning", "it also matches POST, PUT, PATCH, OPTIONS"]]],
    ["unanchored at the end", "^GET", [[1, "warning", 'today it matches the same methods as "^GET$"']]],
    ["unanchored alternation", "GET|HEAD", [[1, "warning", 'write "^(GET|HEAD)$"']]],
    ["anchors on the outside only", "^GET|POST$", [[1, "warning", 'write "^(GET|POST)$"']]],
    ["unanchored part of a method", "ET", [[1, "warning", "it also matches GET"]]],
    [
      "unanchored, with an unknown method",
      "GET|FETCH",
      [
        [1, "warning", 'names "FETCH"'],
        [1, "warning", "is not anchored"],
      ],
    ],
  ])("%s: %s", async (_name, method, expected) => {
    expectExactly(await lintCsv([`p, r, *, *, /a, ${method}`]), expected);
  });
});

describe("the whole policy", () => {
  it("the shipped policies/ has no errors and no warnings (admin has no catch-all /*)", async () => {
    expect(lintPolicy(await readPolicySource("policies"))).toEqual([]);
  });

  it("sorts by file, then line, whatever check found it", async () => {
    const found = await lintFiles({
      "model.conf": standardModel.replace("keyMatch2(r.path, p.path)", "keyMatch(r.path, p.path)"),
      "b.csv": ["p, r, *, *, /x, P", "p, r, *, *, /x, P"].join("\n"),
      "a.csv": ["g, a, ghost, *", "p, r, *, *, /*, ^GET$"].join("\n"),
    });
    expect(found.map((d) => d.where)).toEqual(["a.csv:1", "a.csv:2", "b.csv:1", "b.csv:2", "b.csv:2", "model.conf"]);
  });

  it("stays fast on a large policy", () => {
    const rules: PolicyRule[] = [];
    for (let i = 0; i < 30_000; i++) {
      const org = i % 3 === 0 ? "*" : `org${i % 50}`;
      const path = `/r${i % 1000}/:id/${i}`;
      const method = "^(GET|HEAD)$";
      rules.push({ index: i, where: `policy.csv:${i + 1}`, sub: `role${i % 10}`, org, ns: "*", path, method, text: "" });
    }
    const source: PolicySource = { dir: "", modelText: standardModel, files: ["policy.csv"], rules, links: [], diagnostics: [], routes: NO_ROUTES, version: "" };
    const started = performance.now();
    expect(lintPolicy(source)).toEqual([]);
    expect(performance.now() - started).toBeLessThan(10_000);
  });
});
