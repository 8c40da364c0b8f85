import { basename } from "node:path";
import { isAlias, isMap, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node, type Pair } from "yaml";
import { decideForSubject, normalizeRequest, ownershipDeny } from "../core/authorize/authorizer.js";
import { DEFAULT_RESOURCE_NAMESPACE, PLATFORM_ORG } from "../core/resources/resource.js";
import { deny, forbiddenMessage, type Decision } from "../core/authorize/decision.js";
import { normalizeMethod } from "../core/request/normalize.js";
import { isValidName, isValidNamespace, NAME_RULE } from "../core/keys/key-record.js";
import { isManagementResource, managementDecision, paramRuleHint } from "../core/manage/management.js";
import type { Policy } from "../core/policy/policy.js";

/**
 * Decision tables for `keygate policy test`: YAML files of requests and the
 * decisions the policy must give them, run through the very functions
 * Authorize uses after the key lookup (normalizeRequest, decideForSubject),
 * so a table passes exactly when the server would decide that way.
 *
 *   name: default policy — reader          # optional; default: the file name
 *   defaults: { org: acme }                # optional; merged under every case
 *   cases:
 *     - name: reader lists sandboxes       # optional; default "ROLES METHOD PATH"
 *       roles: [reader]                    # the key's roles (required, here or in defaults)
 *       org: acme                          # the key's org (default "default")
 *       key_namespace: "*"                 # the key's namespace scope (default "*")
 *       namespace: ""                      # the request's namespace ("" = the key's own)
 *       request_org: ""                    # the request's org hint ("" = none)
 *       path: /sandboxes                   # required
 *       method: GET                        # "" or omitted: every method must be allowed (older Cube)
 *       expect: allow                      # required: allow | deny
 *       reason: allowed                    # optional: allowed | forbidden | bad_request
 *       rule: policy.csv:15                # optional, allow only: the rule that decided
 *       owner: acme                        # optional: the org owning the resource the path
 *                                          #   addresses (routes.yaml "owned"), or "none"; decided
 *                                          #   as with ownership on. Omitted: ownership off
 *       owner_namespace: default           # optional: the owned resource's namespace (default "default")
 *
 * A path of `keys` or `keys/…` is a key-management resource: the case is
 * decided as ManageKey's policy check decides it (the key's org and namespace,
 * one method, no normalization), not as an Authorize request.
 *
 * Tables are validated strictly: an unknown key, a wrong type or a missing
 * field is an error naming the file, line and case, never a silent pass.
 */

export type Expectation = "allow" | "deny";
export type ExpectedReason = "allowed" | "forbidden" | "bad_request" | "not_found";

export interface DecisionCase {
  /** 1-based position in the table's `cases`. */
  index: number;
  /** Line of the case in its file (1-based). */
  line: number;
  /** As written, or "ROLES METHOD PATH". */
  name: string;
  roles: string[];
  org: string;
  keyNamespace: string;
  namespace: string;
  requestOrg: string;
  path: string;
  /** As written; "" = not given. */
  method: string;
  expect: Expectation;
  reason?: ExpectedReason;
  rule?: string;
  /** The owner org of the addressed resource ("none": nobody); undefined: ownership off. */
  owner?: string;
  ownerNamespace?: string;
}

export interface DecisionTable {
  file: string;
  name: string;
  cases: DecisionCase[];
}

export type ParseResult = { ok: true; table: DecisionTable } | { ok: false; errors: string[] };

export interface CaseResult {
  file: string;
  table: string;
  case: DecisionCase;
  passed: boolean;
  /** What the policy decided (with the closest rules when a policy deny failed the case). */
  decision: Decision;
  /** Which expectations failed, e.g. `expected allow, got deny`. */
  mismatches: string[];
}


const REASONS: readonly ExpectedReason[] = ["allowed", "forbidden", "bad_request", "not_found"];
const RULE_PATTERN = /^[^\s:]+:[1-9]\d*$/;
const TOP_KEYS = ["name", "defaults", "cases"] as const;

type FieldKind = "string" | "roles" | "expect" | "reason" | "rule";
const CASE_FIELDS = {
  name: "string",
  roles: "roles",
  org: "string",
  key_namespace: "string",
  namespace: "string",
  request_org: "string",
  path: "string",
  method: "string",
  expect: "expect",
  reason: "reason",
  rule: "rule",
  owner: "string",
  owner_namespace: "string",
} as const satisfies Record<string, FieldKind>;
type CaseField = keyof typeof CASE_FIELDS;
type FieldValue = string | string[];
type Fields = Partial<Record<CaseField, { value: FieldValue; line: number }>>;
/** Fields read from YAML, and the keys that were present but wrong (so not also "missing"). */
interface ReadFields {
  fields: Fields;
  bad: Set<CaseField>;
}

const isCaseField = (key: string): key is CaseField => Object.hasOwn(CASE_FIELDS, key);

/** What a YAML value is, for "must be a string, got a number". */
function kindOf(node: unknown): string {
  if (isMap(node)) return "a mapping";
  if (isSeq(node)) return "a list";
  if (isScalar(node)) {
    const value = node.value;
    if (value === null) return "nothing (null; write \"\" for empty)";
    if (typeof value === "string") return `"${value}"`;
    return `a ${typeof value} (${String(value)}; quote it to make it a string)`;
  }
  return "something else";
}

/**
 * Parses and validates one table. Every problem is reported, each as
 * `FILE:LINE: [case N "NAME": ]what is wrong`.
 */
export function parseDecisionTable(text: string, file: string): ParseResult {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: true });
  const lineOf = (node: { range?: [number, number, number] | null } | null | undefined): number =>
    node?.range ? lineCounter.linePos(node.range[0]).line : 1;
  const syntax = [...doc.errors, ...doc.warnings];
  if (syntax.length > 0) {
    return {
      ok: false,
      errors: syntax.map((e) => {
        const first = e.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "");
        return e.linePos ? `${file}:${e.linePos[0].line}:${e.linePos[0].col}: ${first}` : `${file}: ${first}`;
      }),
    };
  }
  const errors: string[] = [];
  const root = resolve(doc, doc.contents);
  if (!isMap(root)) {
    const what = root === null || (isScalar(root) && root.value === null) ? "the file is empty" : `the file holds ${kindOf(root)}`;
    return { ok: false, errors: [`${file}:${lineOf(root)}: ${what}; a decision table is a mapping with "cases" (and optional "name", "defaults")`] };
  }

  let name = basename(file);
  let defaults: ReadFields = { fields: {}, bad: new Set() };
  let casesNode: Node | null = null;
  let casesLine = lineOf(root);
  for (const pair of root.items as Pair<unknown, unknown>[]) {
    const key = keyName(doc, pair);
    const where = `${file}:${lineOf(pair.key as Node)}`;
    const value = resolve(doc, pair.value);
    if (key === undefined) {
      errors.push(`${where}: keys must be plain strings`);
    } else if (key === "name") {
      if (isScalar(value) && typeof value.value === "string" && value.value !== "") name = value.value;
      else errors.push(`${where}: "name" must be a non-empty string, got ${kindOf(value)}`);
    } else if (key === "defaults") {
      if (!isMap(value)) {
        errors.push(`${where}: "defaults" must be a mapping of case fields, got ${kindOf(value)}`);
        continue;
      }
      defaults = readFields(doc, value, lineOf, (line, message) => errors.push(`${file}:${line}: defaults: ${message}`), ["name"]);
    } else if (key === "cases") {
      casesNode = value;
      casesLine = lineOf(pair.key as Node);
    } else {
      errors.push(`${where}: unknown key "${key}" (a table has ${TOP_KEYS.join(", ")})`);
    }
  }
  if (casesNode === null) {
    errors.push(`${file}:${casesLine}: no "cases": a table needs a list of cases`);
    return { ok: false, errors };
  }
  if (!isSeq(casesNode) || casesNode.items.length === 0) {
    errors.push(`${file}:${casesLine}: "cases" must be a non-empty list of cases, got ${isSeq(casesNode) ? "an empty list" : kindOf(casesNode)}`);
    return { ok: false, errors };
  }

  const cases: DecisionCase[] = [];
  casesNode.items.forEach((item, i) => {
    const node = resolve(doc, item);
    const index = i + 1;
    const line = lineOf(node);
    const caseErrors: { line: number; message: string }[] = [];
    const fail = (at: number, message: string) => caseErrors.push({ line: at, message });
    let read: ReadFields = { fields: {}, bad: new Set() };
    if (isMap(node)) read = readFields(doc, node, lineOf, fail, []);
    else fail(line, `a case must be a mapping, got ${kindOf(node)}`);
    const merged = { ...defaults.fields, ...read.fields };
    const bad = new Set([...defaults.bad, ...read.bad]);
    const built = isMap(node) ? buildCase(merged, bad, index, line, fail) : undefined;
    if (caseErrors.length > 0) {
      const explicit = read.fields.name?.value;
      const label = `case ${index}${typeof explicit === "string" ? ` "${explicit}"` : ""}`;
      for (const e of caseErrors) errors.push(`${file}:${e.line}: ${label}: ${e.message}`);
    } else if (built) cases.push(built);
  });
  return errors.length > 0 ? { ok: false, errors } : { ok: true, table: { file, name, cases } };
}

function resolve(doc: Document, node: unknown): Node | null {
  if (isAlias(node)) return (node.resolve(doc) as Node | undefined) ?? null;
  return (node as Node | null) ?? null;
}

function keyName(doc: Document, pair: Pair<unknown, unknown>): string | undefined {
  const key = resolve(doc, pair.key);
  return isScalar(key) && typeof key.value === "string" ? key.value : undefined;
}

/** The fields of a case (or of defaults), type-checked; `excluded` keys are refused. */
function readFields(
  doc: Document,
  map: { items: unknown[] },
  lineOf: (node: Node | null | undefined) => number,
  fail: (line: number, message: string) => void,
  excluded: readonly CaseField[],
): ReadFields {
  const fields: Fields = {};
  const bad = new Set<CaseField>();
  for (const pair of map.items as Pair<unknown, unknown>[]) {
    const keyNode = resolve(doc, pair.key);
    const key = keyName(doc, pair);
    const line = lineOf(keyNode);
    if (key === undefined) {
      fail(line, "keys must be plain strings");
      continue;
    }
    if (!isCaseField(key) || excluded.includes(key)) {
      const allowed = Object.keys(CASE_FIELDS).filter((k) => !excluded.includes(k as CaseField));
      fail(line, `unknown key "${key}" (use ${allowed.join(", ")})`);
      continue;
    }
    const value = resolve(doc, pair.value);
    const valueLine = value ? lineOf(value) : line;
    if (CASE_FIELDS[key] === "roles") {
      if (!isSeq(value)) {
        fail(valueLine, `"roles" must be a list of role names, such as [reader], got ${kindOf(value)}`);
        bad.add(key);
        continue;
      }
      const roles: string[] = [];
      for (const item of value.items) {
        const role = resolve(doc, item);
        if (isScalar(role) && typeof role.value === "string") roles.push(role.value);
        else {
          fail(lineOf(role), `"roles" must hold role names, got ${kindOf(role)}`);
          bad.add(key);
        }
      }
      if (!bad.has(key)) fields[key] = { value: roles, line: valueLine };
      continue;
    }
    if (!isScalar(value) || typeof value.value !== "string") {
      fail(valueLine, `"${key}" must be a string, got ${kindOf(value)}`);
      bad.add(key);
      continue;
    }
    fields[key] = { value: value.value, line: valueLine };
  }
  return { fields, bad };
}

/** Checks values and combinations, after defaults are merged in. */
function buildCase(fields: Fields, bad: ReadonlySet<CaseField>, index: number, line: number, fail: (line: number, message: string) => void): DecisionCase | undefined {
  const str = (key: Exclude<CaseField, "roles">, fallback: string): string => {
    const value = fields[key]?.value;
    return typeof value === "string" ? value : fallback;
  };
  const at = (key: CaseField) => fields[key]?.line ?? line;
  let problems = bad.size;
  const check = (ok: boolean, key: CaseField, message: string) => {
    if (!ok) {
      problems++;
      fail(at(key), message);
    }
  };
  // A field that was present but wrong is reported once, not again as missing.
  const present = (key: CaseField) => fields[key] !== undefined || bad.has(key);

  const roles = fields.roles?.value;
  check(present("roles"), "roles", `missing "roles" (the key's roles, in the case or in defaults)`);
  if (Array.isArray(roles)) {
    check(roles.length > 0, "roles", `"roles" is empty: a key has at least one role`);
    for (const role of roles) check(isValidName(role), "roles", `role "${role}" is not a valid role name (${NAME_RULE}); no key can hold it`);
  }
  const org = str("org", "default");
  check(isValidName(org) || org === PLATFORM_ORG, "org", `"org" "${org}" is not a valid org name; no key can be in it (use request_org for a request's org hint)`);
  const keyNamespace = str("key_namespace", "*");
  check(isValidNamespace(keyNamespace), "key_namespace", `"key_namespace" "${keyNamespace}" is not a valid namespace ("*" or a name); no key can be scoped to it`);
  const path = fields.path?.value;
  check(present("path"), "path", `missing "path" (in the case or in defaults)`);
  const method = str("method", "");
  const namespace = str("namespace", "");
  const requestOrg = str("request_org", "");

  const expect = fields.expect?.value;
  check(present("expect"), "expect", `missing "expect" (allow or deny)`);
  check(expect === undefined || expect === "allow" || expect === "deny", "expect", `"expect" must be allow or deny, got "${String(expect)}"`);
  const reason = fields.reason?.value as string | undefined;
  if (reason !== undefined) {
    check(REASONS.includes(reason as ExpectedReason), "reason", `"reason" must be one of ${REASONS.join(", ")}, got "${reason}"`);
    check(!REASONS.includes(reason as ExpectedReason) || (reason === "allowed") === (expect === "allow") || expect === undefined, "reason", `"reason: ${reason}" contradicts "expect: ${String(expect)}"`);
  }
  const rule = fields.rule?.value as string | undefined;
  if (rule !== undefined) {
    check(RULE_PATTERN.test(rule), "rule", `"rule" must be FILE:LINE, such as policy.csv:17, got "${rule}"`);
    check(expect !== "deny", "rule", `"rule" names the rule that allowed; a deny has none`);
  }
  if (typeof path === "string" && isManagementResource(path)) {
    check(normalizeMethod(method).ok && method !== "", "method", `"${path}" is a key-management resource: it needs one method (GET, POST, PATCH, DELETE…), got "${method}"`);
    check(namespace === "" && requestOrg === "", namespace !== "" ? "namespace" : "request_org", `"${path}" is a key-management resource: ManageKey takes no namespace or request_org`);
  }
  const owner = fields.owner?.value as string | undefined;
  const ownerNamespace = fields.owner_namespace?.value as string | undefined;
  if (owner !== undefined) check(owner === "none" || isValidName(owner), "owner", `"owner" must be an org name or "none" (nobody owns it), got "${owner}"`);
  if (ownerNamespace !== undefined) {
    check(isValidName(ownerNamespace), "owner_namespace", `"owner_namespace" must be a namespace name, got "${ownerNamespace}"`);
    check(owner !== undefined && owner !== "none", "owner_namespace", `"owner_namespace" needs an "owner" org`);
  }
  if (problems > 0 || typeof path !== "string" || !Array.isArray(roles)) return undefined;

  const explicitName = fields.name?.value;
  return {
    index,
    line,
    name: typeof explicitName === "string" && explicitName !== "" ? explicitName : `${roles.join(",")} ${method === "" ? "(no method)" : method} ${path}`,
    roles,
    org,
    keyNamespace,
    namespace,
    requestOrg,
    path,
    method,
    expect: expect as Expectation,
    ...(reason !== undefined && { reason: reason as ExpectedReason }),
    ...(rule !== undefined && { rule }),
    ...(owner !== undefined && { owner }),
    ...(ownerNamespace !== undefined && { ownerNamespace }),
  };
}

/**
 * The decision the server would give this case's key and request: Authorize's
 * path after the key lookup, or ManageKey's policy check for `keys…`.
 */
export function decideCase(policy: Policy, c: DecisionCase, explain = false): Decision {
  const subject = { roles: c.roles, org: c.org, namespace: c.keyNamespace };
  if (isManagementResource(c.path)) {
    const method = normalizeMethod(c.method);
    const upper = method.ok ? method.value : c.method;
    const decided = managementDecision(policy, subject, upper, c.path);
    const asked = { roles: c.roles, org: c.org, namespace: c.keyNamespace, path: c.path, method: upper };
    if (decided.allowed) return { allowed: true, reason: "allowed", message: "", matchedRule: decided.rule };
    return { ...deny("forbidden", forbiddenMessage(upper, c.path) + paramRuleHint(decided)), ...(explain && { explanation: policy.explain(asked) }) };
  }
  const request = normalizeRequest({ path: c.path, method: c.method, namespace: c.namespace, org: c.requestOrg });
  if ("reason" in request) return request;
  const decision = decideForSubject(policy, subject, request, undefined, explain);
  if (!decision.allowed || c.owner === undefined || c.org === PLATFORM_ORG) return decision;
  const resource = ownedResourceOf(policy, request.path);
  if (!resource) return decision;
  const owner = c.owner === "none" ? null : { org: c.owner, namespace: c.ownerNamespace ?? DEFAULT_RESOURCE_NAMESPACE, keyId: "" };
  return ownershipDeny(subject, request, resource, owner, undefined, explain) ?? decision;
}

function ownedResourceOf(policy: Policy, path: string) {
  return policy.routes.resourceOf(policy.routes.strip(path));
}

/** Runs one case and compares the decision with what the table expects. */
export function evaluateCase(policy: Policy, table: DecisionTable, c: DecisionCase): CaseResult {
  let decision = decideCase(policy, c);
  const mismatches: string[] = [];
  const got = decision.allowed ? "allow" : "deny";
  if (got !== c.expect) mismatches.push(`expected ${c.expect}, got ${got}`);
  if (c.reason !== undefined && c.reason !== decision.reason) mismatches.push(`expected reason ${c.reason}, got ${decision.reason}`);
  if (c.rule !== undefined && decision.allowed && c.rule !== decision.matchedRule) mismatches.push(`expected rule ${c.rule}, got ${decision.matchedRule || "none"}`);
  if (c.owner !== undefined && !isManagementResource(c.path) && !ownedResourceOf(policy, c.path)) {
    mismatches.push(`"owner" is given, but ${c.path} addresses no owned resource (routes.yaml "owned")`);
  }
  const passed = mismatches.length === 0;
  // Only a failing policy deny is worth explaining: which rules came closest, and why they missed.
  if (!passed && !decision.allowed && (decision.reason === "forbidden" || decision.reason === "not_found")) decision = decideCase(policy, c, true);
  return { file: table.file, table: table.name, case: c, passed, decision, mismatches };
}

export function runDecisionTables(policy: Policy, tables: readonly DecisionTable[]): CaseResult[] {
  return tables.flatMap((table) => table.cases.map((c) => evaluateCase(policy, table, c)));
}
