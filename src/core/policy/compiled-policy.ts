import { KNOWN_METHODS } from "../request/normalize.js";
import type { PolicyRule, RoleLink } from "./policy-source.js";
import { compileKeyMatch2, compileMethodPattern, firstSegmentOf, literalFirstSegment } from "./patterns.js";
import type { PolicyDecision, PolicyRequest, RuleMiss } from "./policy-request.js";

/**
 * keygate's model (see policies/model.conf) compiled into lookup structures:
 *
 *   m = (p.org == "*" || p.org == r.org) && (p.ns == "*" || p.ns == r.ns)
 *       && regexMatch(r.method, p.method) && keyMatch2(r.path, p.path)
 *       && g(r.sub, p.sub, r.org)
 *
 * Casbin evaluates that for every rule on every decision. Here rules are
 * indexed by subject, then org ("*" or one org), then the first path segment
 * when the pattern fixes it, then the request method their pattern matches;
 * a decision looks only at the rules of the request's roles in its org and
 * "*", under its first segment and the unindexed bucket, for its method,
 * with patterns compiled once (literal paths compared as strings). Role
 * inheritance follows Casbin's role manager: links in the request's org and
 * in "*", at most 10 levels deep (Casbin's default maxHierarchyLevel); each
 * (role, org) closure is memoized with the buckets it reaches.
 * test/unit/policy-differential.test.ts checks this against Casbin's
 * enforcer on random policies and requests; bench/policy-bench.ts times both.
 */

/** Casbin's DefaultRoleManager is created with maxHierarchyLevel 10. */
const MAX_HIERARCHY_LEVEL = 10;
/** Bound on memoized role closures (roles × orgs); cleared wholesale when full. */
const MAX_CLOSURES = 100_000;

/**
 * Rules are filed under the request methods their pattern matches, one slot
 * per known method (a request's method is one of them after normalization),
 * so a decision never runs a method regex for them; any other method goes to
 * the last slot, which holds every rule and tests the regex.
 */
const METHOD_SLOT = new Map<string, number>(KNOWN_METHODS.map((method, slot) => [method, slot]));
const OTHER_METHOD = KNOWN_METHODS.length;
const SLOTS = KNOWN_METHODS.length + 1;

/** A path pattern keyMatch2 leaves as it is and whose regex has no special character: string equality. */
const LITERAL_PATH = /^[A-Za-z0-9_~/-]*$/;

/** A rule ready to test; what a decision reads is copied onto it (one object to touch per candidate). */
interface CompiledRule {
  index: number;
  ns: string;
  /** The path itself when the pattern matches only that path. */
  literal: string | undefined;
  path: RegExp;
  method: RegExp;
  where: string;
  rule: PolicyRule;
}

/** One subject's rules in one org ("*" or a named org). */
interface Bucket {
  /** First segment → method slot → rules in index order. */
  bySegment: Map<string, (CompiledRule[] | undefined)[]>;
  /** Rules whose pattern does not fix the first segment (always checked), by method slot. */
  any: (CompiledRule[] | undefined)[];
}

/** What a role is worth in an org: the roles it holds and the buckets of those that have rules there. */
interface Closure {
  roles: ReadonlySet<string>;
  buckets: Bucket[];
}

export interface CompiledPolicy {
  decide(request: PolicyRequest): PolicyDecision;
  /** Every role `role` holds in `org`, itself included. */
  rolesOf(role: string, org: string): ReadonlySet<string>;
  explain(request: PolicyRequest, limit: number): RuleMiss[];
}

/** Shared by every deny (frozen: callers only read decisions). */
const DENY: PolicyDecision = Object.freeze({ allowed: false, rule: "" });

export function compilePolicy(rules: readonly PolicyRule[], links: readonly RoleLink[]): CompiledPolicy {
  // Patterns repeat across rules (the same routes in many orgs): compile each once.
  const paths = new Map<string, { path: RegExp; literal: string | undefined; segment: string | undefined } | undefined>();
  const methods = new Map<string, { regex: RegExp; slots: boolean[] } | undefined>();
  const compiledRules: CompiledRule[] = [];
  // sub → org → bucket
  const index = new Map<string, Map<string, Bucket>>();
  for (const rule of rules) {
    let path = paths.get(rule.path);
    if (!paths.has(rule.path)) {
      const compiled = compileKeyMatch2(rule.path);
      path = compiled.ok
        ? { path: compiled.value, literal: LITERAL_PATH.test(rule.path) ? rule.path : undefined, segment: literalFirstSegment(rule.path) }
        : undefined;
      paths.set(rule.path, path);
    }
    let method = methods.get(rule.method);
    if (!methods.has(rule.method)) {
      const compiled = compileMethodPattern(rule.method);
      method = compiled.ok ? { regex: compiled.value, slots: [...KNOWN_METHODS.map((m) => compiled.value.test(m)), true] } : undefined;
      methods.set(rule.method, method);
    }
    if (!path || !method) continue; // refused by the loader already
    const compiled: CompiledRule = { index: rule.index, ns: rule.ns, literal: path.literal, path: path.path, method: method.regex, where: rule.where, rule };
    compiledRules.push(compiled);
    let byOrg = index.get(rule.sub);
    if (!byOrg) index.set(rule.sub, (byOrg = new Map()));
    let bucket = byOrg.get(rule.org);
    if (!bucket) byOrg.set(rule.org, (bucket = { bySegment: new Map(), any: new Array(SLOTS) }));
    let slots = bucket.any;
    if (path.segment !== undefined) {
      const existing = bucket.bySegment.get(path.segment);
      if (existing) slots = existing;
      else bucket.bySegment.set(path.segment, (slots = new Array(SLOTS)));
    }
    for (let slot = 0; slot < SLOTS; slot++) {
      if (!method.slots[slot]) continue;
      const list = slots[slot];
      if (list) list.push(compiled);
      else slots[slot] = [compiled];
    }
  }

  // domain → child → parents
  const edges = new Map<string, Map<string, string[]>>();
  for (const link of links) {
    let byChild = edges.get(link.domain);
    if (!byChild) edges.set(link.domain, (byChild = new Map()));
    const parents = byChild.get(link.child);
    if (!parents) byChild.set(link.child, [link.parent]);
    else if (!parents.includes(link.parent)) parents.push(link.parent);
  }

  // org → role → closure. Nested maps rather than one "org\0role" key: role
  // and org names are arbitrary strings, and a joined key could collide.
  const closures = new Map<string, Map<string, Closure>>();
  let closureCount = 0;
  // An org no rule or link names decides exactly as org "*" does (only "*"
  // links and "*" rules apply to either): share those closures.
  const namedOrgs = new Set<string>([...rules.map((rule) => rule.org), ...links.map((link) => link.domain)]);
  function closureOf(role: string, requestOrg: string): Closure {
    const org = namedOrgs.has(requestOrg) ? requestOrg : "*";
    let inOrgClosures = closures.get(org);
    const known = inOrgClosures?.get(role);
    if (known) return known;
    const inOrg = edges.get(org);
    const inAll = org === "*" ? undefined : edges.get("*");
    const seen = new Set<string>([role]);
    let frontier = [role];
    for (let level = 0; level < MAX_HIERARCHY_LEVEL && frontier.length > 0; level++) {
      const next: string[] = [];
      for (const current of frontier) {
        for (const parents of [inOrg?.get(current), inAll?.get(current)]) {
          if (!parents) continue;
          for (const parent of parents) {
            if (!seen.has(parent)) {
              seen.add(parent);
              next.push(parent);
            }
          }
        }
      }
      frontier = next;
    }
    const buckets: Bucket[] = [];
    for (const sub of seen) {
      const byOrg = index.get(sub);
      if (!byOrg) continue;
      const own = byOrg.get(org);
      if (own) buckets.push(own);
      const all = org === "*" ? undefined : byOrg.get("*");
      if (all) buckets.push(all);
    }
    const result: Closure = { roles: seen, buckets };
    if (closureCount >= MAX_CLOSURES) {
      closures.clear();
      closureCount = 0;
      inOrgClosures = undefined;
    }
    if (!inOrgClosures) closures.set(org, (inOrgClosures = new Map()));
    inOrgClosures.set(role, result);
    closureCount++;
    return result;
  }

  /**
   * Lowest-index rule of a list (sorted by index) that matches, if lower than
   * `best`. The method is tested only in the OTHER_METHOD slot: in the others
   * every rule's method pattern matches the slot's method.
   */
  function firstMatch(
    list: readonly CompiledRule[] | undefined,
    request: PolicyRequest,
    testMethod: boolean,
    best: CompiledRule | undefined,
  ): CompiledRule | undefined {
    if (!list) return best;
    const { namespace, path, method } = request;
    const bound = best ? best.index : Infinity;
    for (let i = 0; i < list.length; i++) {
      const candidate = list[i]!;
      if (candidate.index >= bound) return best;
      if (candidate.ns !== "*" && candidate.ns !== namespace) continue;
      if (candidate.literal !== undefined ? candidate.literal !== path : !candidate.path.test(path)) continue;
      if (testMethod && !candidate.method.test(method)) continue;
      return candidate;
    }
    return best;
  }

  return {
    rolesOf: (role, org) => closureOf(role, org).roles,
    decide(request) {
      const slot = METHOD_SLOT.get(request.method) ?? OTHER_METHOD;
      const testMethod = slot === OTHER_METHOD;
      const segment = firstSegmentOf(request.path);
      let best: CompiledRule | undefined;
      // A role listed twice, or held through two roles, is only looked at
      // again: the lowest index wins either way.
      for (const role of request.roles) {
        const { buckets } = closureOf(role, request.org);
        for (let i = 0; i < buckets.length; i++) {
          const bucket = buckets[i]!;
          const bySegment = bucket.bySegment.get(segment);
          if (bySegment) best = firstMatch(bySegment[slot], request, testMethod, best);
          best = firstMatch(bucket.any[slot], request, testMethod, best);
        }
      }
      return best ? { allowed: true, rule: best.where } : DENY;
    },
    explain(request, limit) {
      const held = new Set<string>();
      for (const role of request.roles) for (const sub of closureOf(role, request.org).roles) held.add(sub);
      const misses: (RuleMiss & { score: number; index: number })[] = [];
      for (const candidate of compiledRules) {
        const { rule } = candidate;
        const reasons: string[] = [];
        if (!held.has(rule.sub)) reasons.push(`role "${rule.sub}" is not held (the key has ${[...held].join(", ") || "no roles"})`);
        if (rule.org !== "*" && rule.org !== request.org) reasons.push(`wrong org: the rule is for "${rule.org}", the key is in "${request.org}"`);
        if (rule.ns !== "*" && rule.ns !== request.namespace) reasons.push(`wrong namespace: the rule is for "${rule.ns}", the request is in "${request.namespace}"`);
        if (!candidate.path.test(request.path)) reasons.push(`path ${request.path} does not match ${rule.path}`);
        if (!candidate.method.test(request.method)) reasons.push(`method ${request.method} does not match ${rule.method}`);
        if (reasons.length === 0) continue;
        // Rank: fewest differences; then a rule the key's roles hold; then file order.
        const score = reasons.length * 2 + (held.has(rule.sub) ? 0 : 1);
        misses.push({ rule: rule.where, text: rule.text, reasons, score, index: rule.index });
      }
      misses.sort((a, b) => a.score - b.score || a.index - b.index);
      return misses.slice(0, limit).map(({ rule, text, reasons }) => ({ rule, text, reasons }));
    },
  };
}
