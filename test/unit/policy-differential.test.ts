import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileAdapter, newEnforcer, newModelFromString, type Enforcer } from "casbin";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KNOWN_METHODS } from "../../src/core/request/normalize.js";
import { compileKeyMatch2 } from "../../src/core/policy/patterns.js";
import { loadPolicy, type Policy } from "../../src/core/policy/policy.js";
import type { PolicyRequest } from "../../src/core/policy/policy-request.js";

/**
 * Differential test: the compiled policy (src/core/policy/compiled-policy.ts)
 * against plain Casbin on the same model.conf and CSV. Casbin is the
 * definition: for every request, "allowed" must agree with "any of the
 * request's roles is allowed by enforceExSync", and the rule the compiled
 * policy names ("policy.csv:N") must be the one Casbin reports: the earliest
 * in file order of the rules enforceExSync returns for each role (Casbin
 * returns a role's first matching rule). That is stronger than "a rule
 * enforceEx says matches for one of the roles", which it implies.
 *
 * Both sides read the same CSV from a temp dir (loadPolicy, and Casbin's own
 * FileAdapter), written in varying styles (spacing, quoting, CRLF, comments).
 *
 * Policies and requests are drawn from one small vocabulary so requests
 * actually hit rules: keyMatch2 paths with ":id", "/*", "*", regex
 * characters ("." and "|" alternation, "?" optional), patterns with and
 * without a leading "/"; method regexes anchored and not; g links in one org
 * and in "*", cycles, and a role chain longer than Casbin's
 * maxHierarchyLevel (10); roles and orgs the policy never mentions.
 *
 * Set KEYGATE_FC_SEED (and KEYGATE_FC_PATH) to replay a failure fast-check reports.
 */

const MODEL_TEXT = await readFile(join("policies", "model.conf"), "utf8");
const FILE = "policy.csv";

/** Every request compared against Casbin, across all tests in this file. */
let casesCompared = 0;
/** How the random cases came out, to check they exercise what they should. */
const stats = { cases: 0, allowed: 0, inherited: 0, multiRole: 0, wildcardOrgRule: 0, noSlash: 0 };
type Stats = typeof stats;
const MIN_CASES = 10_000;

// ---------------------------------------------------------------- vocabulary

const ROLES = ["reader", "writer", "admin", "ops", "dev"] as const;
/** c0 → c1 → … → c12: 12 levels, 2 more than Casbin follows. */
const CHAIN = Array.from({ length: 13 }, (_, i) => `c${i}`);
const POLICY_ROLES = [...ROLES, ...CHAIN];
/** Roles no rule or link mentions, "*" (not a wildcard for subjects) and a role that is an org name. */
const STRANGER_ROLES = ["ghost", "*", "o1"];
const POLICY_ORGS = ["o1", "o2", "o3"];
/** o4 appears in no rule or link; "*" as a request org is legal for Casbin too. */
const REQUEST_ORGS = [...POLICY_ORGS, "o4", "*"];
const POLICY_NS = ["n1", "n2"];
const REQUEST_NS = ["n1", "n2", "n3"];
/** Normalization upper-cases and refuses these, but the policy must still agree with Casbin on them. */
const ODD_METHODS = ["", "get", "CONNECT", "GET|POST"];

/** Words in request paths; pattern literals are drawn from the same list. */
const WORDS = ["a", "b", "keys", "sandboxes", "v2", "a.b", "axb", "ab", "a|b", "x-1", ":id"];
const LITERAL_SEGMENTS = ["a", "b", "keys", "sandboxes", "v2", "ab", "x-1"];
/** Pattern segments with regex meaning, as policy authors might (mis)write them. */
const REGEX_SEGMENTS = ["a.b", "(a|b)", "a|b", "b?", "a+", "[ab]", "sandboxes|keys", "v\\d", ".*", "?b", "{0}keys", "+a"];
const PARAM_SEGMENTS = [":id", ":x", ":buildID"];
const WHOLE_PATTERNS = ["*", "/*", "/", "/?", "keys/:id", "keys/*", "keys", ":id", "/:id", "/:id/*", "*/a", "/a/:id:x", "/a:b/:c", "/sandboxes/:id/?"];

const METHOD_PATTERNS = [
  "^(GET|HEAD)$",
  "^POST$",
  "^(PUT|PATCH|DELETE)$",
  "^(GET|HEAD|OPTIONS)$",
  ".*",
  "^.*$",
  "P",
  "GET",
  "^GET",
  "T$",
  "E",
  "(GET|POST)",
  "DELETE|GET",
  "^GET|POST$",
  "^P(OST|UT)$",
  "[A-Z]+",
  "^(GET|POST){1,2}$", // a comma: must be quoted in the CSV
];

// ---------------------------------------------------------------- arbitraries

interface Rule {
  sub: string;
  org: string;
  ns: string;
  path: string;
  method: string;
}
interface Link {
  child: string;
  parent: string;
  domain: string;
}
interface PolicyCase {
  rules: Rule[];
  links: Link[];
  /** How the CSV is written: both loaders must read the same values. */
  format?: { crlf: boolean; styles: number[] };
}
interface Request {
  roles: string[];
  org: string;
  ns: string;
  path: string;
  method: string;
}

const weightedFrom = <T,>(pairs: [number, T[]][]) => fc.oneof(...pairs.map(([weight, values]) => ({ weight, arbitrary: fc.constantFrom(...values) })));

const segmentArb = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(...LITERAL_SEGMENTS) },
  { weight: 4, arbitrary: fc.constantFrom(...PARAM_SEGMENTS) },
  { weight: 3, arbitrary: fc.constantFrom(...REGEX_SEGMENTS) },
  { weight: 1, arbitrary: fc.constant("*") },
);

const pathPatternArb = fc.oneof(
  {
    weight: 8,
    arbitrary: fc
      .record({
        slash: fc.constantFrom("/", "/", "/", ""),
        segments: fc.array(segmentArb, { minLength: 1, maxLength: 4 }),
        tail: fc.constantFrom("", "", "", "", "/*", "/?", "/:id"),
      })
      .map(({ slash, segments, tail }) => `${slash}${segments.join("/")}${tail}`),
  },
  { weight: 2, arbitrary: fc.constantFrom(...WHOLE_PATTERNS) },
  // Only patterns the loader accepts: the rest would make Casbin hang ("/:") or throw (bad regex).
).filter((pattern) => compileKeyMatch2(pattern).ok);

const ruleArb: fc.Arbitrary<Rule> = fc.record({
  sub: weightedFrom([
    [6, [...ROLES]],
    [2, CHAIN.slice(7)],
    [1, CHAIN.slice(0, 7)],
  ]),
  org: weightedFrom([
    [3, ["*"]],
    [4, POLICY_ORGS],
  ]),
  ns: weightedFrom([
    [3, ["*"]],
    [2, POLICY_NS],
  ]),
  path: pathPatternArb,
  method: fc.constantFrom(...METHOD_PATTERNS),
});

const domainArb = weightedFrom([
  [2, ["*"]],
  [3, POLICY_ORGS],
]);

const linkArb: fc.Arbitrary<Link> = fc.record({
  child: fc.constantFrom(...POLICY_ROLES),
  parent: fc.constantFrom(...POLICY_ROLES),
  domain: domainArb,
});

/**
 * The chain c0 → … → c12, all in "*", all in one org, or each link in "*" or
 * an org; sometimes with a cycle back or a shortcut.
 */
const chainDomainsArb = fc.oneof(
  domainArb.map((domain) => Array<string>(CHAIN.length - 1).fill(domain)),
  fc.array(domainArb, { minLength: CHAIN.length - 1, maxLength: CHAIN.length - 1 }),
);
const chainArb: fc.Arbitrary<Link[]> = fc
  .record({
    domains: chainDomainsArb,
    extra: fc.array(fc.record({ from: fc.nat(12), to: fc.nat(12), domain: domainArb }), { maxLength: 2 }),
  })
  .map(({ domains, extra }) => [
    ...domains.map((domain, i) => ({ child: CHAIN[i]!, parent: CHAIN[i + 1]!, domain })),
    ...extra.map(({ from, to, domain }) => ({ child: CHAIN[from]!, parent: CHAIN[to]!, domain })),
  ]);

const policyArb: fc.Arbitrary<PolicyCase> = fc
  .record({
    rules: fc.array(ruleArb, { minLength: 1, maxLength: 40 }),
    links: fc.array(linkArb, { maxLength: 12 }),
    chain: fc.option(chainArb, { freq: 2 }),
    format: fc.record({ crlf: fc.boolean(), styles: fc.array(fc.nat(9), { minLength: 1, maxLength: 8 }) }),
  })
  .map(({ rules, links, chain, format }) => ({ rules, links: [...(chain ?? []), ...links], format }));

const requestPathArb = fc
  .record({
    slash: fc.constantFrom("/", "/", "/", "/", ""),
    segments: fc.array(fc.constantFrom(...WORDS), { minLength: 1, maxLength: 4 }),
    trailing: fc.constantFrom("", "", "", "", "", "/"),
  })
  .map(({ slash, segments, trailing }) => `${slash}${segments.join("/")}${trailing}`);

const requestArb: fc.Arbitrary<Request> = fc.record({
  roles: fc.array(
    weightedFrom([
      [5, [...ROLES]],
      [3, CHAIN],
      [1, STRANGER_ROLES],
    ]),
    { minLength: 0, maxLength: 3 },
  ),
  org: weightedFrom([
    [6, POLICY_ORGS],
    [1, ["o4", "*"]],
  ]),
  ns: weightedFrom([
    [12, REQUEST_NS],
    [1, ["*"]],
  ]),
  path: requestPathArb,
  method: weightedFrom([
    [12, [...KNOWN_METHODS]],
    [1, ODD_METHODS],
  ]),
});

/**
 * Random requests over the vocabulary rarely hit a rule (role, org,
 * namespace, method and path must all fit), so most requests are derived
 * from a rule of the policy: its role (or a role linked to it), its org and
 * namespace, a method and a path its patterns match, and sometimes one field
 * nudged off to make a near miss. The rest are plain random requests.
 */
interface RequestSpec {
  base: Request;
  mode: "random" | "derived" | "near";
  rule: number;
  pick: number;
  child: number;
  extraRole: boolean;
  nudge: "org" | "ns" | "method" | "path" | "role";
}

const requestSpecArb: fc.Arbitrary<RequestSpec> = fc.record({
  base: requestArb,
  mode: fc.constantFrom("random", "random", "derived", "derived", "derived", "near", "near"),
  rule: fc.nat(),
  pick: fc.nat(),
  child: fc.nat(),
  extraRole: fc.boolean(),
  nudge: fc.constantFrom("org", "ns", "method", "path", "role"),
});

/** Request paths over WORDS: every 1–3 segment path, 4 and 5 segments over fewer words, with and without "/". */
const PATH_POOL: string[] = (() => {
  const pool = new Set<string>();
  const grow = (prefixes: string[], words: readonly string[]) => prefixes.flatMap((p) => words.map((w) => `${p}/${w}`));
  const one = WORDS.map((w) => `/${w}`);
  const two = grow(one, WORDS);
  const three = grow(two, WORDS);
  const few = ["a", "b", "keys", "sandboxes", "x-1"];
  const four = grow(grow(grow(few.map((w) => `/${w}`), few), few), few);
  const five = grow(four.filter((_, i) => i % 5 === 0), few);
  for (const path of [...one, ...two, ...three, ...four, ...five]) pool.add(path);
  for (const path of [...one, ...two]) {
    pool.add(`${path}/`);
    pool.add(path.slice(1));
  }
  pool.add("/");
  return [...pool];
})();

class Resolver {
  private readonly matching = new Map<number, string[]>();
  constructor(private readonly policy: PolicyCase) {}

  private pathsFor(index: number): string[] {
    let paths = this.matching.get(index);
    if (!paths) {
      const pattern = compileKeyMatch2(this.policy.rules[index]!.path);
      paths = pattern.ok ? PATH_POOL.filter((path) => pattern.value.test(path)) : [];
      this.matching.set(index, paths);
    }
    return paths;
  }

  resolve(spec: RequestSpec): Request {
    if (spec.mode === "random" || this.policy.rules.length === 0) return spec.base;
    const index = spec.rule % this.policy.rules.length;
    const rule = this.policy.rules[index]!;
    // Half the time, walk down the links from the rule's role (up to 13 steps, past the hierarchy limit).
    let role = rule.sub;
    if (spec.child % 2 === 1) {
      let state = spec.child;
      for (let step = (spec.child >> 1) % 14; step > 0; step--) {
        const children = this.policy.links.filter((link) => link.parent === role).map((link) => link.child);
        if (children.length === 0) break;
        state = (state * 1103515245 + 12345) % 2147483648;
        role = children[state % children.length]!;
      }
    }
    const methodRegex = new RegExp(rule.method);
    const methods = KNOWN_METHODS.filter((m) => methodRegex.test(m));
    const paths = this.pathsFor(index);
    const request: Request = {
      roles: spec.extraRole ? [spec.base.roles[0] ?? "ghost", role] : [role],
      org: rule.org === "*" ? spec.base.org : rule.org,
      ns: rule.ns === "*" ? spec.base.ns : rule.ns,
      method: methods.length > 0 ? methods[spec.pick % methods.length]! : spec.base.method,
      path: paths.length > 0 ? paths[spec.pick % paths.length]! : spec.base.path,
    };
    if (spec.mode === "near") {
      if (spec.nudge === "role") request.roles = spec.base.roles;
      else if (spec.nudge === "org") request.org = spec.base.org;
      else if (spec.nudge === "ns") request.ns = spec.base.ns;
      else request[spec.nudge] = spec.base[spec.nudge];
    }
    return request;
  }
}

// ---------------------------------------------------------------- harness

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "keygate-policy-diff-"));
  await writeFile(join(dir, "model.conf"), MODEL_TEXT);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * A CSV line in one of the styles Casbin's file adapter reads: ", ", ",",
 * padded with spaces and tabs, or every field quoted. A value with a comma
 * is always quoted (no value here contains a quote).
 */
function csvLine(fields: string[], style: number): string {
  const quote = (v: string) => `"${v}"`;
  const values = fields.map((v) => (style === 3 || v.includes(",") ? quote(v) : v));
  switch (style) {
    case 1:
      return values.join(",");
    case 2:
      return `  ${values.join(" \t,  ")}\t`;
    default:
      return values.join(", ");
  }
}

/** CSV text with comments and blank lines sprinkled in, so "policy.csv:N" is not just the rule's index. */
function csvOf(policy: PolicyCase): { text: string; lineOf: Rule[] } {
  const styles = policy.format?.styles ?? [0];
  const lines: string[] = ["# generated by policy-differential.test.ts", ""];
  const lineOf: Rule[] = [];
  const place = (fields: string[], rule?: Rule) => {
    lines.push(csvLine(fields, styles[lines.length % styles.length]!));
    if (rule) lineOf[lines.length] = rule; // 1-based line number
  };
  policy.links.forEach((link, i) => {
    place(["g", link.child, link.parent, link.domain]);
    if (i % 5 === 4) lines.push("");
  });
  policy.rules.forEach((rule, i) => {
    place(["p", rule.sub, rule.org, rule.ns, rule.path, rule.method], rule);
    if (i % 7 === 3) lines.push("  # a comment between rules");
  });
  return { text: `${lines.join(policy.format?.crlf ? "\r\n" : "\n")}\n`, lineOf };
}

interface Pair {
  compiled: Policy;
  casbin: Enforcer;
  lineOf: Rule[];
}

/** The policy loaded both ways from one temp dir: loadPolicy (compiled) and Casbin's own FileAdapter. */
async function loadBoth(policy: PolicyCase): Promise<Pair> {
  const { text, lineOf } = csvOf(policy);
  await writeFile(join(dir, FILE), text);
  // Written and closed just now, by this test alone: nothing to wait for (the default waits for a just-written file to settle).
  const compiled = await loadPolicy(dir, undefined, { settleMs: 0 });
  expect(compiled.info.engine).toBe("compiled");
  const casbin = await newEnforcer(newModelFromString(MODEL_TEXT), new FileAdapter(join(dir, FILE)));
  await casbin.addNamedDomainMatchingFunc("g", (org: string, pattern: string) => pattern === "*" || org === pattern);
  return { compiled, casbin, lineOf };
}

const sameRule = (a: readonly string[], b: Rule) => a[0] === b.sub && a[1] === b.org && a[2] === b.ns && a[3] === b.path && a[4] === b.method;

/** What Casbin says: allowed if any role is; the rule is the earliest (in file order) of each role's first match. */
function casbinDecision(pair: Pair, request: Request): { allowed: boolean; rule: string } {
  let bestLine = Infinity;
  for (const role of request.roles) {
    const [allowed, values] = pair.casbin.enforceExSync(role, request.org, request.ns, request.path, request.method);
    if (!allowed) continue;
    // enforceEx returns the values of the first matching p line; an identical
    // earlier line would have matched first, so the first line with those values is it.
    const line = pair.lineOf.findIndex((rule) => rule !== undefined && sameRule(values, rule));
    expect(line, `enforceEx returned ${JSON.stringify(values)}, which is no line of the CSV`).toBeGreaterThan(0);
    bestLine = Math.min(bestLine, line);
  }
  return bestLine === Infinity ? { allowed: false, rule: "" } : { allowed: true, rule: `${FILE}:${bestLine}` };
}

function compare(pair: Pair, request: Request, context: () => string, tally?: Stats): void {
  const input: PolicyRequest = { roles: request.roles, org: request.org, namespace: request.ns, path: request.path, method: request.method };
  const got = pair.compiled.decide(input);
  const want = casbinDecision(pair, request);
  casesCompared++;
  if (tally) {
    tally.cases++;
    if (got.allowed) {
      tally.allowed++;
      const rule = pair.lineOf[Number(got.rule.split(":")[1])]!;
      if (!request.roles.includes(rule.sub)) tally.inherited++;
      if (request.roles.length > 1) tally.multiRole++;
      if (rule.org === "*") tally.wildcardOrgRule++;
      if (!rule.path.startsWith("/")) tally.noSlash++;
    }
  }
  if (got.allowed !== want.allowed || got.rule !== want.rule) {
    throw new Error(
      `compiled ${JSON.stringify(got)} but Casbin ${JSON.stringify(want)} for request ${JSON.stringify(request)}\n` +
        (got.rule ? `compiled rule: ${JSON.stringify(pair.lineOf[Number(got.rule.split(":")[1])])}\n` : "") +
        context(),
    );
  }
}

function fcParameters(numRuns: number): fc.Parameters<unknown> {
  const seed = process.env.KEYGATE_FC_SEED;
  return seed ? { numRuns, seed: Number(seed), path: process.env.KEYGATE_FC_PATH, endOnFailure: false } : { numRuns };
}

// ---------------------------------------------------------------- tests

describe("compiled policy vs Casbin (differential)", () => {
  it("agrees on random policies and random requests", async () => {
    const RUNS = 500;
    const REQUESTS = { minLength: 60, maxLength: 80 };
    await fc.assert(
      fc.asyncProperty(policyArb, fc.array(requestSpecArb, REQUESTS), async (policy, specs) => {
        const pair = await loadBoth(policy);
        const resolver = new Resolver(policy);
        for (const spec of specs) compare(pair, resolver.resolve(spec), () => `policy:\n${csvOf(policy).text}`, stats);
      }),
      fcParameters(RUNS),
    );

  }, 60_000);

  it("agrees on a hand-built policy over every combination of its vocabulary", async () => {
    // Chain c0 → … → c12 ("*" and o1 links mixed), cycles, org-specific links,
    // a rule at every chain level, and every kind of path and method pattern.
    const links: Link[] = [
      ...CHAIN.slice(0, -1).map((child, i) => ({ child, parent: CHAIN[i + 1]!, domain: i % 4 === 2 ? "o1" : "*" })),
      { child: "writer", parent: "reader", domain: "*" },
      { child: "reader", parent: "writer", domain: "o2" }, // a cycle, in o2 only
      { child: "admin", parent: "writer", domain: "o1" },
      { child: "ops", parent: "c3", domain: "*" },
      { child: "dev", parent: "dev", domain: "*" }, // a self-loop
      { child: "c12", parent: "c0", domain: "o3" }, // the chain closes into a cycle in o3
    ];
    const rules: Rule[] = [
      ...CHAIN.map((sub) => ({ sub, org: "*", ns: "*", path: `/${sub}/:id`, method: "^(GET|HEAD)$" })),
      ...CHAIN.map((sub) => ({ sub, org: "o2", ns: "n1", path: "/sandboxes/*", method: "^POST$" })),
      { sub: "reader", org: "*", ns: "*", path: "/sandboxes", method: "^(GET|HEAD)$" },
      { sub: "reader", org: "o1", ns: "*", path: "/a.b/:id", method: "GET" },
      { sub: "writer", org: "*", ns: "n1", path: "/sandboxes/:id", method: "^(PUT|PATCH|DELETE)$" },
      { sub: "writer", org: "o3", ns: "*", path: "keys/:id", method: "P" },
      { sub: "admin", org: "*", ns: "*", path: "/a|b", method: ".*" },
      { sub: "admin", org: "o2", ns: "n2", path: "*", method: "^.*$" },
      { sub: "ops", org: "*", ns: "*", path: "/v2/?", method: "T$" },
      { sub: "ops", org: "o1", ns: "*", path: "/(a|b)/:id/*", method: "E" },
      { sub: "dev", org: "*", ns: "n2", path: "/keys/:id:x", method: "DELETE|GET" },
      { sub: "dev", org: "*", ns: "*", path: "/:id/b?", method: "^GET|POST$" },
    ];
    const pair = await loadBoth({ rules, links });
    const paths = new Set<string>();
    for (const first of WORDS) {
      for (const slash of ["/", ""]) {
        paths.add(`${slash}${first}`);
        for (const second of ["a", "a.b", ""]) paths.add(`${slash}${first}/${second}`);
      }
    }
    for (const level of CHAIN) paths.add(`/${level}/x`);
    paths.add("/sandboxes/s1/b/c");
    paths.add("/");
    let allowed = 0;
    for (const role of [...POLICY_ROLES, ...STRANGER_ROLES]) {
      for (const org of REQUEST_ORGS) {
        for (const ns of ["n1", "n2"]) {
          for (const path of paths) {
            for (const method of ["GET", "POST"]) {
              const request = { roles: [role], org, ns, path, method };
              compare(pair, request, () => "hand-built policy");
              if (pair.compiled.decide({ ...request, namespace: ns }).allowed) allowed++;
            }
          }
        }
      }
    }
    expect(allowed).toBeGreaterThan(100);


    // The hierarchy limit, compared with Casbin above, spelled out. Every
    // chain link holds in o1 (c2→c3, c6→c7, c10→c11 only there).
    const can = (role: string, org: string, level: number) => {
      const args = [role, org, "n1", `/c${level}/x`, "GET"] as const;
      const compiled = pair.compiled.decide({ roles: [role], org, namespace: "n1", path: args[3], method: "GET" }).allowed;
      expect(compiled, `${role} in ${org} on c${level}'s rule`).toBe(pair.casbin.enforceSync(...args));
      return compiled;
    };
    expect(can("c0", "o1", 10)).toBe(true); // 10 links: Casbin's maxHierarchyLevel
    expect(can("c0", "o1", 11)).toBe(false); // 11 links: beyond it
    expect(can("c1", "o1", 11)).toBe(true);
    expect(can("c0", "o2", 2)).toBe(true);
    expect(can("c0", "o2", 3)).toBe(false); // c2→c3 is an o1 link
    expect(can("c12", "o3", 2)).toBe(true); // through c12→c0 (o3)
    expect(can("c12", "o1", 0)).toBe(false); // that link is not in o1
    expect(can("ops", "o4", 3)).toBe(true); // a "*" link, in an org the policy never names
  });

  it("compares role and org names as whole strings (no joined memo key)", async () => {
    // Found by review, checked against Casbin here: the (role, org) closure
    // memo was keyed by `${org}\0${role}`, so after role "z" in org "x\0y"
    // (which inherits admin), role "y\0z" in org "x" was allowed as admin.
    const pair = await loadBoth({
      rules: [{ sub: "admin", org: "*", ns: "*", path: "/a", method: "GET" }],
      links: [{ child: "z", parent: "admin", domain: "*" }],
    });
    for (const [role, org] of [
      ["z", "x\0y"],
      ["y\0z", "x"],
      ["z", "x"],
      ["x\0z", "y"],
    ] as const) {
      compare(pair, { roles: [role], org, ns: "n1", path: "/a", method: "GET" }, () => "NUL names");
    }
  });

  it("compared at least 10,000 requests with Casbin, a good share of them allowed and inherited", () => {
    expect(casesCompared).toBeGreaterThanOrEqual(MIN_CASES);
    // The random cases exercise what they should (see Resolver): not just denials.
    expect(stats.allowed, JSON.stringify(stats)).toBeGreaterThan(stats.cases * 0.2);
    expect(stats.allowed, JSON.stringify(stats)).toBeLessThan(stats.cases * 0.8);
    expect(stats.inherited, JSON.stringify(stats)).toBeGreaterThan(300);
    expect(stats.multiRole, JSON.stringify(stats)).toBeGreaterThan(1000);
    expect(stats.wildcardOrgRule, JSON.stringify(stats)).toBeGreaterThan(1000);
    expect(stats.noSlash, JSON.stringify(stats)).toBeGreaterThan(300);
  });
});
