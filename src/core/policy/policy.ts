import { newEnforcer, newModelFromString, type Adapter, type Enforcer, type Model } from "casbin";
import { compilePolicy } from "./compiled-policy.js";
import type { PolicyDecision, PolicyRequest, RuleMiss } from "./policy-request.js";
import type { PolicyRoutes } from "./policy-routes.js";
import { MODEL_FILE, readPolicySource, type PolicyRule, type ReadPolicyOptions, type PolicySource, type RoleLink } from "./policy-source.js";

/**
 * The policy: Casbin's model file is the definition of a decision, the CSV
 * files in the policy directory are its rules. keygate's own model shape is
 * compiled into indexes (decisions stay fast at 100k rules); any other model
 * is evaluated by Casbin itself, so an edited matcher still means what
 * Casbin says it means.
 */

export interface Policy {
  decide(request: PolicyRequest): PolicyDecision;
  /** The roles given plus every role they inherit in `org`. */
  inheritedRoles(roles: readonly string[], org: string): Promise<Set<string>>;
  /** The rules closest to matching a request, with what differed; best first. */
  explain(request: PolicyRequest, limit?: number): RuleMiss[];
  readonly rules: readonly PolicyRule[];
  readonly links: readonly RoleLink[];
  /** routes.yaml: prefixes stripped before deciding, and paths that address an owned resource. */
  readonly routes: PolicyRoutes;
  readonly info: PolicyInfo;
}

export interface PolicyInfo {
  dir: string;
  files: string[];
  /** Number of p and g lines. */
  rules: number;
  /** Short content hash of model and rules: changes whenever they do. */
  version: string;
  loadedAt: Date;
  /** "compiled": keygate's model, indexed. "casbin": a custom model, evaluated by Casbin. */
  engine: "compiled" | "casbin";
}

export class PolicyLoadError extends Error {
  override readonly name = "PolicyLoadError";
}

/** The model keygate compiles. Whitespace does not matter; anything else does. */
const STANDARD_MODEL = {
  r: "sub, org, ns, path, method",
  p: "sub, org, ns, path, method",
  g: "_, _, _",
  e: "some(where (p.eft == allow))",
  m: '(p.org == "*" || p.org == r.org) && (p.ns == "*" || p.ns == r.ns) && regexMatch(r.method, p.method) && keyMatch2(r.path, p.path) && g(r.sub, p.sub, r.org)',
};

const squash = (text: string) => text.replace(/\s+/g, "");

function modelValue(model: Model, sec: string, key: string): string | undefined {
  return model.model.get(sec)?.get(key)?.value;
}

/** True when the model is keygate's standard model (and so can be compiled). */
export function isStandardModel(model: Model): boolean {
  const sections = ["r", "p", "g", "e", "m"] as const;
  if (modelValue(model, "g", "g2") !== undefined) return false;
  return sections.every((sec) => {
    const value = modelValue(model, sec, sec);
    // Casbin rewrites "r.sub" to "r_sub" internally; compare in its own form.
    const expected = STANDARD_MODEL[sec].replace(/\b([rp])\./g, "$1_");
    return value !== undefined && squash(value) === squash(expected);
  });
}

export function formatDiagnostic(d: { where: string; message: string }): string {
  return d.where ? `${d.where}: ${d.message}` : d.message;
}

/** Reads (see readPolicySource for `read`: how long a just-written file is waited for) and builds the policy in `dir`. */
export async function loadPolicy(dir: string, now: () => Date = () => new Date(), read?: ReadPolicyOptions): Promise<Policy> {
  const source = await readPolicySource(dir, read);
  return buildPolicy(source, now());
}

/** Builds a policy from read sources; throws PolicyLoadError naming file:line for every error. */
export async function buildPolicy(source: PolicySource, loadedAt: Date): Promise<Policy> {
  const errors = source.diagnostics.filter((d) => d.severity === "error");
  if (errors.length > 0) {
    const shown = errors.slice(0, 5).map(formatDiagnostic);
    if (errors.length > 5) shown.push(`… and ${errors.length - 5} more`);
    throw new PolicyLoadError(shown.join("; "));
  }
  let model: Model;
  try {
    model = newModelFromString(source.modelText);
  } catch (error) {
    throw new PolicyLoadError(`${MODEL_FILE}: ${(error as Error).message}`, { cause: error });
  }
  checkModelFields(model, source.modelText);
  const standard = isStandardModel(model);
  const info: PolicyInfo = {
    dir: source.dir,
    files: source.files,
    rules: source.rules.length + source.links.length,
    version: source.version,
    loadedAt,
    engine: standard ? "compiled" : "casbin",
  };
  if (standard) {
    const compiled = compilePolicy(source.rules, source.links);
    return {
      info,
      rules: source.rules,
      links: source.links,
      routes: source.routes,
      decide: compiled.decide,
      explain: (request, limit = 5) => compiled.explain(request, limit),
      async inheritedRoles(roles, org) {
        const result = new Set<string>();
        for (const role of roles) for (const held of compiled.rolesOf(role, org)) result.add(held);
        return result;
      },
    };
  }
  return casbinPolicy(model, source, info);
}

/**
 * Casbin reads a field the definitions do not have ("p.route" where p has no
 * route) as undefined: the model loads, and then every rule quietly fails to
 * match (or matches). A matcher or effect naming an unknown field is refused
 * at load, naming the model.conf line, so a typo never reaches a decision.
 */
export function checkModelFields(model: Model, modelText: string): void {
  const problem = unknownModelField(model, modelText);
  if (problem) throw new PolicyLoadError(formatDiagnostic(problem));
}

/** The first matcher or effect reference to a field its definition lacks, with the model.conf line; undefined when none. */
export function unknownModelField(model: Model, modelText: string): { where: string; message: string } | undefined {
  const fields = new Map<string, string[]>();
  for (const sec of ["r", "p"]) {
    for (const [key, assertion] of model.model.get(sec) ?? []) fields.set(key, assertion.tokens.map((t) => t.slice(key.length + 1)));
  }
  for (const sec of ["m", "e"]) {
    for (const assertion of model.model.get(sec)?.values() ?? []) {
      // Casbin has rewritten "p.sub" to "p_sub"; string literals are not references.
      const code = assertion.value.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""');
      for (const [, key, field] of code.matchAll(/\b([rp][0-9]*)_([A-Za-z0-9_]+)\b/g)) {
        if (sec === "e" && key === "p" && field === "eft") continue; // the effect's own column, allow when absent
        const known = fields.get(key!);
        if (known?.includes(field!)) continue;
        const line = modelText.split(/\r?\n/).findIndex((l) => new RegExp(`\\b${key}\\.${field}\\b`).test(l) && !/^\s*#/.test(l)) + 1;
        const has = known ? `"${key}" has no field "${field}" (it has ${known.join(", ")})` : `there is no "${key}" definition`;
        return { where: line > 0 ? `${MODEL_FILE}:${line}` : MODEL_FILE, message: `the ${sec === "m" ? "matcher" : "effect"} uses ${key}.${field}, but ${has}` };
      }
    }
  }
  return undefined;
}

/** A custom model: Casbin decides; rule sources still name file:line. */
async function casbinPolicy(model: Model, source: PolicySource, info: PolicyInfo): Promise<Policy> {
  const adapter: Adapter = {
    async loadPolicy(target: Model) {
      for (const rule of source.rules) addRule(target, "p", [rule.sub, rule.org, rule.ns, rule.path, rule.method]);
      for (const link of source.links) addRule(target, "g", [link.child, link.parent, link.domain]);
    },
    savePolicy: async () => false,
    addPolicy: async () => {},
    removePolicy: async () => {},
    removeFilteredPolicy: async () => {},
  };
  let enforcer: Enforcer;
  try {
    enforcer = await newEnforcer(model, adapter);
    await enforcer.addNamedDomainMatchingFunc("g", (org: string, pattern: string) => pattern === "*" || org === pattern);
  } catch (error) {
    throw new PolicyLoadError(`${MODEL_FILE}: ${(error as Error).message}`, { cause: error });
  }
  const ruleSource = new Map<string, string>();
  for (const rule of source.rules) {
    const key = [rule.sub, rule.org, rule.ns, rule.path, rule.method].join("\0");
    if (!ruleSource.has(key)) ruleSource.set(key, rule.where);
  }
  return {
    info,
    rules: source.rules,
    links: source.links,
    routes: source.routes,
    decide({ roles, org, namespace, path, method }) {
      for (const role of roles) {
        const [allowed, rule] = enforcer.enforceExSync(role, org, namespace, path, method);
        if (allowed) return { allowed: true, rule: ruleSource.get(rule.join("\0")) ?? "" };
      }
      return { allowed: false, rule: "" };
    },
    explain: () => [],
    async inheritedRoles(roles, org) {
      const result = new Set<string>(roles);
      for (const role of roles) {
        for (const inherited of await enforcer.getImplicitRolesForUser(role, org)) result.add(inherited);
      }
      return result;
    },
  };
}

function addRule(model: Model, ptype: "p" | "g", values: string[]): void {
  const assertion = model.model.get(ptype)?.get(ptype);
  if (!assertion) throw new PolicyLoadError(`${MODEL_FILE}: the model has no "${ptype}" definition, but the rules use it`);
  assertion.policy.push(values);
}
