import { compilePolicy } from "../policy/compiled-policy.js";
import { compileKeyMatch2 } from "../policy/patterns.js";
import type { Policy } from "../policy/policy.js";
import type { PolicyDecision, PolicyRequest } from "../policy/policy-request.js";
import type { PolicyRule } from "../policy/policy-source.js";
import { ALL_NAMESPACES } from "../keys/key-record.js";

/**
 * The policy resources that ManageKey actions (and reading the audit log)
 * are checked on. They have no
 * leading "/", so no request path (and no rule such as "/*") can reach them.
 * The one definition: KeyManager, `policy test`, `policy diff` and `policy
 * lint` all use these.
 *
 *   create POST keys · list GET keys · get GET keys/:id · update PATCH keys/:id
 *   delete DELETE keys/:id · revoke POST keys/:id/revoke · rotate POST keys/:id/rotate
 *   reset-all POST keys/reset-all (never granted through a ":param": see resetAllReach)
 *   AuditService/ListAuditEvents GET audit (the audit log, own org only)
 *   ResourceService: claim POST resources · list GET resources
 *   get GET resources/:kind/:id · release DELETE resources/:kind/:id
 */
export const MANAGEMENT_RESOURCES = ["keys", "keys/:id", "keys/:id/revoke", "keys/:id/rotate", "keys/reset-all", "audit", "resources", "resources/:kind/:id"] as const;

const RESOURCE = /^((keys|resources)(\/[A-Za-z0-9_.~:-]+)*|audit)$/;

export function isManagementResource(path: string): boolean {
  return RESOURCE.test(path);
}

export const RESET_ALL_RESOURCE = "keys/reset-all";

/** A management decision; `paramRule` names the rule a refused reset-all was allowed by only through a ":param". */
export interface ManagementDecision extends PolicyDecision {
  paramRule?: string;
  /** A custom model: Casbin names only the first allowing rule, so a later keys/reset-all line did not count. */
  firstRuleOnly?: true;
}

/**
 * ManageKey's policy check: the caller key's roles in its own org and
 * namespace (a key scoped to every namespace asks as "*"), on the resource.
 * `keys/:id` means one key, and reset-all is not a key: a rule reaching
 * keys/reset-all only through a ":param" never grants it (resetAllReach).
 * The one decision for ManageKey, the audit log, `policy test` and
 * `policy diff`.
 */
export function managementDecision(
  policy: Policy,
  caller: { roles: readonly string[]; org: string; namespace: string },
  method: string,
  resource: string,
): ManagementDecision {
  const request: PolicyRequest = { roles: caller.roles, org: caller.org, namespace: caller.namespace || ALL_NAMESPACES, path: resource, method };
  const decision = policy.decide(request);
  if (!decision.allowed || resource !== RESET_ALL_RESOURCE) return decision;
  const rule = resetAllCache(policy).byWhere.get(decision.rule);
  if (!rule || resetAllReach(rule.path) !== "param") return decision;
  // Casbin decides a custom model and reports only the first allowing rule: refuse rather than guess what a later rule would say.
  if (policy.info.engine !== "compiled") return { allowed: false, rule: "", paramRule: decision.rule, firstRuleOnly: true };
  const again = resetAllCache(policy).withoutParamGrants().decide(request);
  return again.allowed ? again : { allowed: false, rule: "", paramRule: decision.rule };
}

/** Why a reset-all a rule reached only through a ":param" is refused (appended to the refusal). */
export function paramRuleHint(decision: ManagementDecision): string {
  return decision.paramRule
    ? ` (${decision.paramRule} reaches keys/reset-all only through a ":param", and a ":param" never matches reset-all; a rule must name keys/reset-all${decision.firstRuleOnly ? ", and with a custom model come before that line" : ""})`
    : "";
}

/** A ":name" that may match only before the first "/": in "keys/reset-all", never any part of "reset-all". */
const PARAM_BEFORE_FIRST_SLASH = "(?<!/[^/]*)[^/]+";

/**
 * How a path pattern (keyMatch2) reaches keys/reset-all: "none", "literal"
 * (it names it, or a wildcard covers it: "keys/reset-all", "keys/*", "*"), or
 * "param" (only a ":param" stands for reset-all: "keys/:id"), which never
 * grants it.
 */
export function resetAllReach(pattern: string): "none" | "literal" | "param" {
  const any = compileKeyMatch2(pattern);
  if (!any.ok || !any.value.test(RESET_ALL_RESOURCE)) return "none";
  const literal = compileKeyMatch2(pattern, PARAM_BEFORE_FIRST_SLASH);
  return literal.ok && literal.value.test(RESET_ALL_RESOURCE) ? "literal" : "param";
}

interface ResetAllCache {
  byWhere: ReadonlyMap<string, PolicyRule>;
  /** The policy without the rules that reach reset-all only through a ":param" (compiled engine; built on first use). */
  withoutParamGrants(): { decide(request: PolicyRequest): PolicyDecision };
}

/** Per loaded policy (a reload is a new object): built once, on the first reset-all a ":param" rule allowed. */
const resetAllCaches = new WeakMap<Policy, ResetAllCache>();

function resetAllCache(policy: Policy): ResetAllCache {
  let cache = resetAllCaches.get(policy);
  if (!cache) {
    let filtered: ReturnType<typeof compilePolicy> | undefined;
    cache = {
      byWhere: new Map(policy.rules.map((rule) => [rule.where, rule])),
      withoutParamGrants: () => (filtered ??= compilePolicy(policy.rules.filter((rule) => resetAllReach(rule.path) !== "param"), policy.links)),
    };
    resetAllCaches.set(policy, cache);
  }
  return cache;
}
