import { decideForSubject, normalizeRequest, type NormalizedRequest } from "../core/authorize/authorizer.js";
import type { Decision } from "../core/authorize/decision.js";
import { KNOWN_METHODS, normalizeMethod, normalizePath } from "../core/request/normalize.js";
import { ALL_NAMESPACES, isValidNamespace } from "../core/keys/key-record.js";
import { isManagementResource, managementDecision } from "../core/manage/management.js";
import type { Policy } from "../core/policy/policy.js";
import type { PolicyRule } from "../core/policy/policy-source.js";

/**
 * Replay-diff: decide one set of requests under an old and a new policy and
 * report the decisions that flip, grouped by the rule responsible, so a
 * policy author sees the blast radius of an edit before it ships. Requests
 * are decided exactly as Authorize decides them after the key lookup
 * (normalizeRequest, then decideForSubject); a management resource ("keys",
 * "keys/…", no leading "/") is decided as ManageKey's policy check does.
 */

/** One request to replay: who asks (the key's roles, org, namespace scope) and what. */
export interface ReplayRequest {
  roles: readonly string[];
  /** The key's org. */
  org: string;
  /** The key's namespace scope; "*" = every namespace. */
  keyNamespace: string;
  /** The namespace the request names; "" = the key's own. */
  namespace: string;
  /** The org hint the request carries; "" = none. */
  requestOrg: string;
  path: string;
  /** "" = every known method must be allowed (older Cube releases send none). */
  method: string;
  /** 1-based line in the request file, when read from one. */
  line?: number;
}

/** What one policy made of one request. A bad request is refused before any policy sees it. */
export type ReplayOutcome = { kind: "bad_request"; message: string } | { kind: "decided"; allowed: boolean; rule: string };

/** The requests whose decision flipped, under one rule. */
export interface FlipGroup {
  /** "policy.csv:12"; "" when the policy did not say which rule. */
  rule: string;
  /** The rule as written ("p, reader, *, *, /templates, ^(GET|HEAD)$"), or "". */
  text: string;
  count: number;
  /** The first `limit` requests of the group, in input order. */
  examples: ReplayRequest[];
}

/** An allowed request that the new policy allows by a different rule. */
export interface RuleChange {
  request: ReplayRequest;
  oldRule: string;
  newRule: string;
}

export interface ReplayDiff {
  requests: number;
  /** Refused before the policy (malformed path, method, org or namespace): the same under both. */
  badRequests: number;
  flipped: number;
  allowToDeny: number;
  denyToAllow: number;
  /** Grouped by the old rule that allowed, largest group first. */
  allowToDenyGroups: FlipGroup[];
  /** Grouped by the new rule that allows, largest group first. */
  denyToAllowGroups: FlipGroup[];
  /**
   * Still allowed, by a different rule (compared by content, so a rule that
   * only moved to another line does not count).
   */
  ruleChanged: number;
  ruleChangedExamples: RuleChange[];
}

export interface ReplayOptions {
  /** Examples kept per group (and for rule changes). */
  limit: number;
}

export const DEFAULT_EXAMPLE_LIMIT = 5;


/**
 * The request after normalization, or the bad-request message. Policy
 * independent, so computed once per request for both policies.
 */
export function prepareRequest(request: ReplayRequest): NormalizedRequest | { message: string } {
  if (isManagementResource(request.path)) {
    // ManageKey decides policy().decide({ …key, path: resource, method }) with the key's own namespace.
    const method = normalizeMethod(request.method);
    if (!method.ok) return { message: method.error };
    if (method.value === "") return { message: `a management resource needs a method (${request.path})` };
    return { path: request.path, methods: [method.value], namespace: "", org: "" };
  }
  const normalized = normalizeRequest({ path: request.path, method: request.method, namespace: request.namespace, org: request.requestOrg });
  if ("reason" in normalized) return { message: normalized.message };
  return normalized;
}

function outcomeOf(decision: Pick<Decision, "allowed" | "matchedRule">): ReplayOutcome {
  return { kind: "decided", allowed: decision.allowed, rule: decision.matchedRule };
}

/** One request decided under one policy, as Authorize (or ManageKey) would decide it. */
export function replayOne(policy: Policy, request: ReplayRequest): ReplayOutcome {
  const prepared = prepareRequest(request);
  if ("message" in prepared) return { kind: "bad_request", message: prepared.message };
  return outcomeOf(decideReplayed(policy, request, prepared));
}

/** Authorize's decision after the lookup, or for a management resource ManageKey's own (a ":param" never grants reset-all). */
function decideReplayed(policy: Policy, request: ReplayRequest, prepared: NormalizedRequest): Pick<Decision, "allowed" | "matchedRule"> {
  const subject = { roles: request.roles, org: request.org, namespace: request.keyNamespace };
  if (!isManagementResource(prepared.path)) return decideForSubject(policy, subject, prepared);
  const decided = managementDecision(policy, subject, prepared.methods[0]!, prepared.path);
  return { allowed: decided.allowed, matchedRule: decided.rule };
}

interface GroupBuilder {
  group: FlipGroup;
  /** File order of the rule, to break ties between groups of one size. */
  order: number;
}

function rulesByWhere(policy: Policy): Map<string, PolicyRule> {
  return new Map(policy.rules.map((rule) => [rule.where, rule]));
}

/** A rule's identity by content, so an edit above it (which moves its line) does not count as a change. */
function ruleIdentity(rules: Map<string, PolicyRule>, where: string): string {
  const rule = rules.get(where);
  return rule ? [rule.sub, rule.org, rule.ns, rule.path, rule.method].join("\u0000") : `@${where}`;
}

export interface ReplayAccumulator {
  /** Decides `request` under both policies and records a flip or a rule change. */
  add(request: ReplayRequest): void;
  result(): ReplayDiff;
}

/**
 * A replay that takes requests one at a time and keeps only counts and a few
 * examples per group, so a decision log of any length fits in memory.
 */
export function createReplayDiff(oldPolicy: Policy, newPolicy: Policy, { limit }: ReplayOptions): ReplayAccumulator {
  const oldRules = rulesByWhere(oldPolicy);
  const newRules = rulesByWhere(newPolicy);
  const lost = new Map<string, GroupBuilder>();
  const gained = new Map<string, GroupBuilder>();
  const ruleChangedExamples: RuleChange[] = [];
  let requests = 0;
  let badRequests = 0;
  let allowToDeny = 0;
  let denyToAllow = 0;
  let ruleChanged = 0;

  function record(groups: Map<string, GroupBuilder>, rules: Map<string, PolicyRule>, where: string, request: ReplayRequest): void {
    let builder = groups.get(where);
    if (!builder) {
      const rule = rules.get(where);
      builder = { group: { rule: where, text: rule?.text ?? "", count: 0, examples: [] }, order: rule?.index ?? Number.MAX_SAFE_INTEGER };
      groups.set(where, builder);
    }
    builder.group.count++;
    if (builder.group.examples.length < limit) builder.group.examples.push(request);
  }

  return {
    add(request) {
      requests++;
      const prepared = prepareRequest(request);
      if ("message" in prepared) {
        badRequests++;
        return;
      }
      const before = decideReplayed(oldPolicy, request, prepared);
      const after = decideReplayed(newPolicy, request, prepared);
      if (before.allowed && !after.allowed) {
        allowToDeny++;
        record(lost, oldRules, before.matchedRule, request);
      } else if (!before.allowed && after.allowed) {
        denyToAllow++;
        record(gained, newRules, after.matchedRule, request);
      } else if (before.allowed && after.allowed && ruleIdentity(oldRules, before.matchedRule) !== ruleIdentity(newRules, after.matchedRule)) {
        ruleChanged++;
        if (ruleChangedExamples.length < limit) ruleChangedExamples.push({ request, oldRule: before.matchedRule, newRule: after.matchedRule });
      }
    },
    result() {
      const sorted = (groups: Map<string, GroupBuilder>) =>
        [...groups.values()].sort((a, b) => b.group.count - a.group.count || a.order - b.order).map((builder) => builder.group);
      return {
        requests,
        badRequests,
        flipped: allowToDeny + denyToAllow,
        allowToDeny,
        denyToAllow,
        allowToDenyGroups: sorted(lost),
        denyToAllowGroups: sorted(gained),
        ruleChanged,
        ruleChangedExamples,
      };
    },
  };
}

/** Replays every request under both policies. */
export function replayDiff(oldPolicy: Policy, newPolicy: Policy, requests: Iterable<ReplayRequest>, options: ReplayOptions = { limit: DEFAULT_EXAMPLE_LIMIT }): ReplayDiff {
  const replay = createReplayDiff(oldPolicy, newPolicy, options);
  for (const request of requests) replay.add(request);
  return replay.result();
}

// --- request files ------------------------------------------------------------

/**
 * The fields a request line may carry. Either spelling of the key's roles
 * and org is accepted (a decision log writes `key_roles`, `key_org`); any
 * other field is ignored, and `null` counts as absent.
 */
export const REQUEST_FIELDS = {
  roles: "the key's roles (string array; alias key_roles)",
  org: "the key's org (alias key_org)",
  key_namespace: 'the key\'s namespace scope (default "*" = every namespace)',
  namespace: 'the namespace the request names (default "" = the key\'s own)',
  request_org: 'the org hint the request carries (default "" = none)',
  path: 'the request path ("/sandboxes/abc"), or a management resource ("keys/key_…")',
  method: 'the HTTP method ("" = every method must be allowed)',
} as const;

export type ParsedLine = { kind: "skip" } | { kind: "request"; request: ReplayRequest } | { kind: "error"; message: string };

/** One line of a request file (JSON lines). Blank lines and lines starting with "#" are skipped. */
export function parseRequestLine(text: string, line: number): ParsedLine {
  const trimmed = text.trim();
  if (trimmed === "" || trimmed.startsWith("#")) return { kind: "skip" };
  const error = (message: string): ParsedLine => ({ kind: "error", message: `line ${line}: ${message}` });
  let value: unknown;
  try {
    value = JSON.parse(trimmed);
  } catch (e) {
    return error(`not valid JSON (${(e as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return error("expected a JSON object");
  const fields = value as Record<string, unknown>;
  const present = (name: string) => fields[name] !== undefined && fields[name] !== null;

  /** A field that may be spelt two ways; both given must agree. */
  function aliased(name: string, alias: string): { value: unknown; name: string } | { error: string } {
    if (present(name) && present(alias) && JSON.stringify(fields[name]) !== JSON.stringify(fields[alias])) {
      return { error: `"${name}" and "${alias}" disagree; give one` };
    }
    if (present(name)) return { value: fields[name], name };
    if (present(alias)) return { value: fields[alias], name: alias };
    return { error: `missing "${name}" (or "${alias}")` };
  }

  // A decision-log line about no key (missing or invalid credential, dev mode) has nothing to replay.
  if (!present("roles") && !present("key_roles") && isDecisionLogLine(fields)) return { kind: "skip" };
  const roles = aliased("roles", "key_roles");
  if ("error" in roles) return error(roles.error);
  if (!Array.isArray(roles.value) || !roles.value.every((role): role is string => typeof role === "string" && role !== "")) {
    return error(`"${roles.name}" must be an array of role names`);
  }
  const org = aliased("org", "key_org");
  if ("error" in org) return error(org.error);
  if (typeof org.value !== "string" || org.value === "") return error(`"${org.name}" must be a non-empty string`);

  function optional(name: string, fallback: string): string | { error: string } {
    if (!present(name)) return fallback;
    return typeof fields[name] === "string" ? (fields[name] as string) : { error: `"${name}" must be a string` };
  }
  const keyNamespace = optional("key_namespace", ALL_NAMESPACES);
  const namespace = optional("namespace", "");
  const requestOrg = optional("request_org", "");
  for (const field of [keyNamespace, namespace, requestOrg]) if (typeof field !== "string") return error(field.error);
  if (keyNamespace === "") return error(`"key_namespace" must not be empty (use "*" for every namespace)`);

  if (!present("path")) return error('missing "path"');
  if (typeof fields.path !== "string") return error('"path" must be a string');
  if (!present("method")) return error('missing "method" ("" = every method)');
  if (typeof fields.method !== "string") return error('"method" must be a string');

  return {
    kind: "request",
    request: {
      roles: roles.value,
      org: org.value,
      keyNamespace: keyNamespace as string,
      namespace: namespace as string,
      requestOrg: requestOrg as string,
      path: fields.path,
      method: fields.method,
      line,
    },
  };
}

/** A line written by keygate's decision log (it carries the decision's reason and entry point). */
function isDecisionLogLine(fields: Record<string, unknown>): boolean {
  return typeof fields.reason === "string" && typeof fields.entry === "string" && "key_roles" in fields;
}

/** A request as a request-file line would give it (so examples can be pasted back into a file). */
export function requestJson(request: ReplayRequest): Record<string, unknown> {
  return {
    roles: [...request.roles],
    org: request.org,
    key_namespace: request.keyNamespace,
    namespace: request.namespace,
    request_org: request.requestOrg,
    path: request.path,
    method: request.method,
    ...(request.line !== undefined && { line: request.line }),
  };
}

// --- synthesized requests --------------------------------------------------------

export interface SynthesizedRequests {
  /** roles × orgs × (namespaces × paths, resources asked once) × methods */
  count: number;
  roles: string[];
  orgs: string[];
  /** "" (the key's own, "*") and every namespace a rule names. */
  namespaces: string[];
  paths: string[];
  methods: string[];
  requests(): Iterable<ReplayRequest>;
}

/** The org no policy names, so org-specific rules are seen from outside too. */
function freshOrg(named: ReadonlySet<string>): string {
  if (!named.has("other-org")) return "other-org";
  let n = 2;
  while (named.has(`other-org-${n}`)) n++;
  return `other-org-${n}`;
}

/**
 * Concrete paths a keyMatch2 pattern matches, plus the near miss of a
 * trailing "/*" (its bare prefix, which "/*" does not match): ":name" → a
 * sample segment ("x1", "x2", …), "/*" → "/x1/x2", "*" alone → "/x1".
 */
export function samplePaths(pattern: string): string[] {
  if (pattern === "*") return ["/x1"];
  let n = 0;
  const sample = () => `x${++n}`;
  const params = pattern.replace(/\/:[^/]+/g, () => `/${sample()}`);
  const deep = params.replace(/\/\*/g, () => `/${sample()}/${sample()}`);
  if (!params.endsWith("/*")) return [deep];
  const prefix = params.slice(0, -2).replace(/\/\*/g, () => `/${sample()}/${sample()}`);
  return [deep, prefix === "" ? "/" : prefix];
}

/** A synthesized path in the form a request would carry it, or undefined when no request could. */
function requestPath(path: string): string | undefined {
  if (!path.startsWith("/")) return isManagementResource(path) ? path : undefined;
  const normalized = normalizePath(path);
  return normalized.ok ? normalized.value : undefined;
}

/**
 * A request set drawn from both policies: every role either names (rule
 * subjects, inheriting and inherited roles), as a single-role key in every
 * org either names plus one neither does, with every namespace a rule names,
 * on every path pattern instantiated, with every known method.
 */
export function synthesizeRequests(policies: readonly Policy[]): SynthesizedRequests {
  const roles = new Set<string>();
  const namedOrgs = new Set<string>();
  const namespaces = new Set<string>([""]);
  const paths = new Set<string>();
  for (const policy of policies) {
    for (const rule of policy.rules) {
      roles.add(rule.sub);
      if (rule.org !== "*") namedOrgs.add(rule.org);
      if (rule.ns !== ALL_NAMESPACES && isValidNamespace(rule.ns)) namespaces.add(rule.ns);
      for (const sample of samplePaths(rule.path)) {
        const path = requestPath(sample);
        if (path !== undefined) paths.add(path);
      }
    }
    for (const link of policy.links) {
      roles.add(link.child);
      roles.add(link.parent);
      if (link.domain !== "*") namedOrgs.add(link.domain);
    }
  }
  const sortedRoles = [...roles].sort();
  const orgs = [...[...namedOrgs].sort(), freshOrg(namedOrgs)];
  const sortedNamespaces = [...namespaces].sort();
  const sortedPaths = [...paths].sort();
  // ManageKey decides in the key's own namespace: a resource is asked once, with no namespace.
  const pathsIn = (namespace: string) => (namespace === "" ? sortedPaths : sortedPaths.filter((path) => path.startsWith("/")));
  const methods = [...KNOWN_METHODS];
  const perKey = sortedNamespaces.reduce((sum, namespace) => sum + pathsIn(namespace).length, 0) * methods.length;
  return {
    count: sortedRoles.length * orgs.length * perKey,
    roles: sortedRoles,
    orgs,
    namespaces: sortedNamespaces,
    paths: sortedPaths,
    methods,
    *requests() {
      for (const role of sortedRoles) {
        for (const org of orgs) {
          for (const namespace of sortedNamespaces) {
            for (const path of pathsIn(namespace)) {
              for (const method of methods) {
                yield { roles: [role], org, keyNamespace: ALL_NAMESPACES, namespace, requestOrg: "", path, method };
              }
            }
          }
        }
      }
    },
  };
}
