import type { PolicyRule, RoleLink } from "./policy-source.js";
import { compileKeyMatch2, compileMethodPattern, firstSegmentOf, literalFirstSegment } from "./patterns.js";
import type { PolicyDecision, PolicyRequest, RuleMiss } from "./policy.js";

/**
 * keygate's model (see policies/model.conf) compiled into lookup structures:
 *
 *   m = (p.org == "*" || p.org == r.org) && (p.ns == "*" || p.ns == r.ns)
 *       && regexMatch(r.method, p.method) && keyMatch2(r.path, p.path)
 *       && g(r.sub, p.sub, r.org)
 *
 * Casbin evaluates that for every rule on every decision. Here rules are
 * indexed by subject, then org ("*" or one org), then the first path segment
 * when the pattern fixes it; a decision looks only at the rules of the
 * request's roles in its org and "*", under its first segment and the
 * unindexed bucket, with patterns compiled once. Role inheritance follows
 * Casbin's role manager: links in the request's org and in "*", at most 10
 * levels deep (Casbin's default maxHierarchyLevel).
 * A differential test checks this against newEnforcer(...).enforce.
 */

/** Casbin's DefaultRoleManager is created with maxHierarchyLevel 10. */
const MAX_HIERARCHY_LEVEL = 10;
/** Bound on memoized role closures (roles × orgs); cleared wholesale when full. */
const MAX_CLOSURES = 100_000;

interface CompiledRule {
  rule: PolicyRule;
  path: RegExp;
  method: RegExp;
}

interface Bucket {
  bySegment: Map<string, CompiledRule[]>;
  /** Rules whose pattern does not fix the first segment; always checked. */
  any: CompiledRule[];
}

export interface CompiledPolicy {
  decide(request: PolicyRequest): PolicyDecision;
  /** Every role `role` holds in `org`, itself included. */
  rolesOf(role: string, org: string): ReadonlySet<string>;
  explain(request: PolicyRequest, limit: number): RuleMiss[];
}

export function compilePolicy(rules: readonly PolicyRule[], links: readonly RoleLink[]): CompiledPolicy {
  // sub → org → bucket
  const index = new Map<string, Map<string, Bucket>>();
  for (const rule of rules) {
    const path = compileKeyMatch2(rule.path);
    const method = compileMethodPattern(rule.method);
    if (!path.ok || !method.ok) continue; // refused by the loader already
    const compiled: CompiledRule = { rule, path: path.value, method: method.value };
    let byOrg = index.get(rule.sub);
    if (!byOrg) index.set(rule.sub, (byOrg = new Map()));
    let bucket = byOrg.get(rule.org);
    if (!bucket) byOrg.set(rule.org, (bucket = { bySegment: new Map(), any: [] }));
    const segment = literalFirstSegment(rule.path);
    if (segment === undefined) bucket.any.push(compiled);
    else {
      const list = bucket.bySegment.get(segment);
      if (list) list.push(compiled);
      else bucket.bySegment.set(segment, [compiled]);
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

  const closures = new Map<string, ReadonlySet<string>>();
  function rolesOf(role: string, org: string): ReadonlySet<string> {
    const key = `${org}\u0000${role}`;
    let result = closures.get(key);
    if (result) return result;
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
    result = seen;
    if (closures.size >= MAX_CLOSURES) closures.clear();
    closures.set(key, result);
    return result;
  }

  function matches(candidate: CompiledRule, request: PolicyRequest): boolean {
    const { rule } = candidate;
    return (rule.ns === "*" || rule.ns === request.namespace) && candidate.method.test(request.method) && candidate.path.test(request.path);
  }

  /** Lowest-index matching rule of a list sorted by index, below `best`. */
  function firstMatch(list: readonly CompiledRule[] | undefined, request: PolicyRequest, best: CompiledRule | undefined): CompiledRule | undefined {
    if (!list) return best;
    for (const candidate of list) {
      if (best && candidate.rule.index >= best.rule.index) return best;
      if (matches(candidate, request)) return candidate;
    }
    return best;
  }

  return {
    rolesOf,
    decide(request) {
      const segment = firstSegmentOf(request.path);
      let best: CompiledRule | undefined;
      const visited = new Set<string>();
      for (const role of request.roles) {
        for (const sub of rolesOf(role, request.org)) {
          if (visited.has(sub)) continue;
          visited.add(sub);
          const byOrg = index.get(sub);
          if (!byOrg) continue;
          for (const org of request.org === "*" ? ["*"] : [request.org, "*"]) {
            const bucket = byOrg.get(org);
            if (!bucket) continue;
            best = firstMatch(bucket.bySegment.get(segment), request, best);
            best = firstMatch(bucket.any, request, best);
          }
        }
      }
      return best ? { allowed: true, rule: best.rule.where } : { allowed: false, rule: "" };
    },
    explain(request, limit) {
      const held = new Set<string>();
      for (const role of request.roles) for (const sub of rolesOf(role, request.org)) held.add(sub);
      const misses: (RuleMiss & { score: number; index: number })[] = [];
      for (const byOrg of index.values()) {
        for (const bucket of byOrg.values()) {
          for (const candidate of [...bucket.any, ...[...bucket.bySegment.values()].flat()]) {
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
        }
      }
      misses.sort((a, b) => a.score - b.score || a.index - b.index);
      return misses.slice(0, limit).map(({ rule, text, reasons }) => ({ rule, text, reasons }));
    },
  };
}
