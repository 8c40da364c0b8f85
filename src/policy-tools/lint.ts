import { newModelFromString, type Model } from "casbin";
import { KNOWN_METHODS } from "../core/request/normalize.js";
import { isValidName, NAME_RULE } from "../core/keys/key-record.js";
import { MANAGEMENT_RESOURCES, RESET_ALL_RESOURCE, resetAllReach } from "../core/manage/management.js";
import { compileKeyMatch2, compileMethodPattern, keyMatch2Source, methodsMatched } from "../core/policy/patterns.js";
import { isStandardModel, unknownModelField } from "../core/policy/policy.js";
import { MODEL_FILE, type Diagnostic, type PolicyRule, type PolicySource, type RoleLink } from "../core/policy/policy-source.js";

/**
 * `keygate policy lint`: what a policy author most likely got wrong, found
 * without a database or a request. Pure: a read PolicySource in, diagnostics
 * out, sorted by file and line. Errors are policies that cannot load or rules
 * that can never apply; warnings are rules that work, but probably not as
 * meant. Every judgement about paths and methods is made the way the
 * decision makes it (keyMatch2 and regexMatch as Casbin builds them, over
 * the methods a request can carry), so lint never warns about a rule for
 * reasons the decision would not share.
 */

/** ManageKey's resources (README, "Managing keys"), as the key service names them. */
const MANAGEMENT_EXAMPLES = ["keys", "keys/key_x", "keys/key_x/revoke", "keys/key_x/rotate", "keys/reset-all", "audit", "resources", "resources/sandboxes/sb-x"];

const KNOWN = new Set<string>(KNOWN_METHODS);
const KNOWN_LIST = KNOWN_METHODS.join(", ");
/** keyMatch2Source("*"): matches anything. */
const MATCH_ALL_SOURCE = "^(.*)$";
const PARAM_TOKEN = "[^/]+";

export function lintPolicy(source: PolicySource): Diagnostic[] {
  const rules = source.rules.map(analyse);
  const diagnostics = [
    ...source.diagnostics,
    ...checkModel(source),
    ...checkNames(source.rules, source.links),
    ...checkRolesGrantNothing(source.rules, source.links),
    ...checkCycles(source.links),
    ...checkDuplicateLinks(source.links),
    ...checkShadowed(rules),
    ...rules.flatMap(checkPath),
    ...rules.flatMap(checkResetAllParam),
    ...rules.flatMap(checkMethod),
  ];
  return sortDiagnostics(diagnostics);
}

export function sortDiagnostics(diagnostics: readonly Diagnostic[]): Diagnostic[] {
  const keyed = diagnostics.map((d) => ({ d, ...splitWhere(d.where) }));
  keyed.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line));
  return keyed.map((k) => k.d);
}

function splitWhere(where: string): { file: string; line: number } {
  const match = /^(.*):(\d+)$/.exec(where);
  return match ? { file: match[1]!, line: Number(match[2]) } : { file: where, line: 0 };
}

interface AnalysedRule {
  rule: PolicyRule;
  /** The regular expression keyMatch2 tests paths against, so ":id" and ":name" compare equal. */
  pathSource: string;
  methodPattern: RegExp;
  /** The known methods the method pattern matches. */
  methods: ReadonlySet<string>;
}

function analyse(rule: PolicyRule): AnalysedRule {
  // readPolicySource only keeps rules whose patterns compile.
  const path = keyMatch2Source(rule.path);
  const method = compileMethodPattern(rule.method);
  if (!path.ok || !method.ok) throw new Error(`bug: rule ${rule.where} has an invalid pattern`);
  return { rule, pathSource: path.value, methodPattern: method.value, methods: new Set(methodsMatched(method.value)) };
}

const error = (where: string, message: string): Diagnostic => ({ where, severity: "error", message });
const warning = (where: string, message: string): Diagnostic => ({ where, severity: "warning", message });

// --- 1. the model --------------------------------------------------------

function checkModel(source: PolicySource): Diagnostic[] {
  // readPolicySource already said it cannot read the file (or the directory).
  if (source.diagnostics.some((d) => d.where === MODEL_FILE || d.where.startsWith(`${MODEL_FILE}:`) || d.where === "")) return [];
  let model: Model;
  try {
    model = newModelFromString(source.modelText);
  } catch (e) {
    return [error(MODEL_FILE, `invalid Casbin model: ${(e as Error).message}`)];
  }
  const found: Diagnostic[] = [];
  const unknownField = unknownModelField(model, source.modelText);
  if (unknownField) found.push(error(unknownField.where, unknownField.message));
  if (source.links.length > 0 && model.model.get("g")?.get("g") === undefined) {
    found.push(error(MODEL_FILE, `the model has no "g" role definition, but ${source.links[0]!.where} and other g lines use one`));
  }
  if (!isStandardModel(model)) {
    found.push(warning(MODEL_FILE, "not keygate's standard model, so decisions use Casbin's evaluator: linear in the number of rules"));
  }
  return found;
}

// --- 2. names and roles ----------------------------------------------------

function checkNames(rules: readonly PolicyRule[], links: readonly RoleLink[]): Diagnostic[] {
  const found: Diagnostic[] = [];
  const anyOrName = (value: string) => value === "*" || isValidName(value);
  for (const rule of rules) {
    if (!isValidName(rule.sub)) found.push(error(rule.where, `role "${rule.sub}" is not a valid name (${NAME_RULE}): no key can hold it`));
    if (!anyOrName(rule.org)) found.push(error(rule.where, `org "${rule.org}" is neither "*" nor a valid name (${NAME_RULE}): no request has it`));
    if (!anyOrName(rule.ns)) found.push(error(rule.where, `namespace "${rule.ns}" is neither "*" nor a valid name (${NAME_RULE}): no request has it`));
  }
  for (const link of links) {
    for (const role of [link.child, link.parent]) {
      if (!isValidName(role)) found.push(error(link.where, `role "${role}" is not a valid name (${NAME_RULE}): no key can hold it`));
    }
    if (!anyOrName(link.domain)) found.push(error(link.where, `org "${link.domain}" is neither "*" nor a valid name (${NAME_RULE}): no request has it`));
  }
  return found;
}

/**
 * A parent role that has no rules and inherits none: the g line gives its
 * child nothing (usually a typo in the parent's name). A role that is only
 * ever a child is fine: keys hold it.
 */
function checkRolesGrantNothing(rules: readonly PolicyRule[], links: readonly RoleLink[]): Diagnostic[] {
  const grants = new Set(rules.map((r) => r.sub));
  // Fixpoint over every domain: a role grants something when a role it inherits does.
  for (let changed = true; changed; ) {
    changed = false;
    for (const link of links) {
      if (grants.has(link.parent) && !grants.has(link.child)) {
        grants.add(link.child);
        changed = true;
      }
    }
  }
  return links
    .filter((link) => !grants.has(link.parent))
    .map((link) =>
      warning(link.where, `role "${link.parent}" grants nothing (no p rules, and it inherits no role that has any), so "${link.child}" gains nothing from it`),
    );
}

// --- 3. role cycles ---------------------------------------------------------

/**
 * A cycle of g lines makes every role on it equal to every other, which is
 * never what a hierarchy means. Links in org "*" apply in every org, so each
 * org's graph is its own links plus the "*" ones; a cycle made of "*" links
 * only is reported once, from the "*" graph.
 */
function checkCycles(links: readonly RoleLink[]): Diagnostic[] {
  const domains = [...new Set(links.map((l) => l.domain))].sort((a, b) => (a === "*" ? -1 : b === "*" ? 1 : a < b ? -1 : 1));
  const found: Diagnostic[] = [];
  const reported = new Set<string>();
  for (const domain of domains) {
    const graph = new Map<string, Map<string, RoleLink>>();
    for (const link of links) {
      if (link.domain !== domain && link.domain !== "*") continue;
      let parents = graph.get(link.child);
      if (!parents) graph.set(link.child, (parents = new Map()));
      const existing = parents.get(link.parent);
      // Prefer this domain's own link, so a cycle through it is attributed to it.
      if (!existing || (existing.domain === "*" && link.domain === domain)) parents.set(link.parent, link);
    }
    for (const component of stronglyConnected(graph)) {
      const members = new Set(component);
      const inside = component.flatMap((child) => [...(graph.get(child)?.values() ?? [])].filter((l) => members.has(l.parent)));
      const start = inside.find((l) => l.domain === domain);
      if (!start) continue; // no edges, or only "*" ones reported from the "*" graph
      const cycle = cycleThrough(start, graph, members);
      const lines = cycle.map((l) => l.where);
      const key = [...lines].sort().join("\n");
      if (reported.has(key)) continue;
      reported.add(key);
      const names = [...cycle.map((l) => l.child), start.child].map((n) => `"${n}"`).join(" → ");
      const scope = domain === "*" ? "in every org" : `in org "${domain}"`;
      // Reported on the line that closes the cycle, reading the files top to bottom.
      const closing = sortDiagnostics(cycle.map((l) => error(l.where, ""))).at(-1)!.where;
      found.push(error(closing, `role cycle ${scope}: ${names} (${lines.join(", ")}); every role on it would hold every other's rules`));
    }
  }
  return found;
}

/** The links of one cycle that starts with `start`, staying inside `members` (shortest way back). */
function cycleThrough(start: RoleLink, graph: ReadonlyMap<string, ReadonlyMap<string, RoleLink>>, members: ReadonlySet<string>): RoleLink[] {
  if (start.parent === start.child) return [start];
  // Breadth-first from the parent back to the child; both are in one component, so it gets there.
  const via = new Map<string, RoleLink>();
  const queue = [start.parent];
  const seen = new Set(queue);
  for (let i = 0; i < queue.length && !seen.has(start.child); i++) {
    for (const [parent, link] of graph.get(queue[i]!) ?? []) {
      if (!members.has(parent) || seen.has(parent)) continue;
      seen.add(parent);
      via.set(parent, link);
      queue.push(parent);
    }
  }
  const back: RoleLink[] = [];
  for (let node = start.child; node !== start.parent; ) {
    const link = via.get(node)!;
    back.unshift(link);
    node = link.child;
  }
  return [start, ...back];
}

/** Tarjan's strongly connected components, iterative (role graphs can be long chains). */
function stronglyConnected(graph: ReadonlyMap<string, ReadonlyMap<string, RoleLink>>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let counter = 0;
  for (const root of graph.keys()) {
    if (index.has(root)) continue;
    const work: { node: string; parents: string[]; next: number }[] = [];
    const enter = (node: string) => {
      index.set(node, counter);
      low.set(node, counter++);
      stack.push(node);
      onStack.add(node);
      work.push({ node, parents: [...(graph.get(node)?.keys() ?? [])], next: 0 });
    };
    enter(root);
    while (work.length > 0) {
      const frame = work.at(-1)!;
      if (frame.next < frame.parents.length) {
        const parent = frame.parents[frame.next++]!;
        if (!index.has(parent)) enter(parent);
        else if (onStack.has(parent)) low.set(frame.node, Math.min(low.get(frame.node)!, index.get(parent)!));
        continue;
      }
      work.pop();
      const caller = work.at(-1);
      if (caller) low.set(caller.node, Math.min(low.get(caller.node)!, low.get(frame.node)!));
      if (low.get(frame.node) === index.get(frame.node)) {
        const component: string[] = [];
        let member: string;
        do {
          member = stack.pop()!;
          onStack.delete(member);
          component.push(member);
        } while (member !== frame.node);
        const selfLoop = graph.get(frame.node)?.has(frame.node) ?? false;
        if (component.length > 1 || selfLoop) components.push(component.reverse());
      }
    }
  }
  return components;
}

function checkDuplicateLinks(links: readonly RoleLink[]): Diagnostic[] {
  const first = new Map<string, RoleLink>();
  const found: Diagnostic[] = [];
  for (const link of links) {
    const key = [link.child, link.parent, link.domain].join("\0");
    const earlier = first.get(key);
    if (earlier) found.push(warning(link.where, `duplicate of ${earlier.where}`));
    else first.set(key, link);
  }
  return found;
}

// --- 4. shadowed rules ----------------------------------------------------

/**
 * A later rule for the same role whose every request an earlier rule already
 * allows: the earlier one always decides (lower index wins), so the later one
 * never does. Coverage is judged on the keyMatch2 regular expressions:
 * equal, "*", or a "/*" pattern whose prefix the later pattern starts with.
 * Rules are indexed by role, org and namespace, so this stays fast at 100k rules.
 */
function checkShadowed(rules: readonly AnalysedRule[]): Diagnostic[] {
  const earlier = new Map<string, AnalysedRule[]>();
  const keyOf = (sub: string, org: string, ns: string, pathSource: string) => [sub, org, ns, pathSource].join("\0");
  const found: Diagnostic[] = [];
  for (const later of rules) {
    // A rule matching no method is an error of its own; it covers nothing.
    if (later.methods.size === 0) continue;
    const { sub, org, ns } = later.rule;
    let best: AnalysedRule | undefined;
    for (const pathSource of coveringSources(later.pathSource)) {
      for (const o of new Set([org, "*"])) {
        for (const n of new Set([ns, "*"])) {
          for (const candidate of earlier.get(keyOf(sub, o, n, pathSource)) ?? []) {
            if (best && candidate.rule.index >= best.rule.index) break;
            if ([...later.methods].every((m) => candidate.methods.has(m))) {
              best = candidate;
              break;
            }
          }
        }
      }
    }
    if (best) {
      const same = best.rule.org === org && best.rule.ns === ns && best.rule.path === later.rule.path && best.rule.method === later.rule.method;
      found.push(warning(later.rule.where, same ? `duplicate of ${best.rule.where}` : `shadowed by ${best.rule.where}, which already allows every request this rule allows`));
    }
    const key = keyOf(sub, org, ns, later.pathSource);
    const list = earlier.get(key);
    if (list) list.push(later);
    else earlier.set(key, [later]);
  }
  return found;
}

/**
 * keyMatch2 sources whose matches include every match of `source`: itself,
 * "*", and for each "/" in it, everything up to that "/" followed by ".*"
 * (the "/*" patterns). The prefix argument is only sound for plain sources
 * (literal text, ":name" parameters, "/*"); for anything with regex
 * alternation or groups, only equality counts.
 */
function coveringSources(source: string): string[] {
  const result = [source, MATCH_ALL_SOURCE];
  if (!isPlainSource(source)) return result;
  for (let i = 0; i < source.length; i++) {
    if (source.startsWith(PARAM_TOKEN, i)) {
      i += PARAM_TOKEN.length - 1;
      continue;
    }
    // A quantifier right after the "/" would bind to it: "/a/?x" is not "/a/" then something.
    if (source[i] === "/" && !/^[*+?{]/.test(source.slice(i + 1))) result.push(`${source.slice(0, i + 1)}.*$`);
  }
  return result;
}

function isPlainSource(source: string): boolean {
  return !/[|()[\]\\]/.test(source.split(PARAM_TOKEN).join(""));
}

// --- 5. path patterns ------------------------------------------------------

function checkPath({ rule }: AnalysedRule): Diagnostic[] {
  const { path, where } = rule;
  const quoted = `path "${path}"`;
  switch (path) {
    case "/*":
      return [warning(where, `${quoted} matches every request path, including routes added later`)];
    case "*":
      return [warning(where, `${quoted} matches every request path and every key-management resource (${MANAGEMENT_RESOURCES.join(", ")})`)];
    case "/":
      return [warning(where, `${quoted} matches only the root path "/", not the paths below it ("/*" does)`)];
  }
  const found: Diagnostic[] = [];
  const star = path.indexOf("*");
  if (star !== -1 && !(star === path.length - 1 && path.endsWith("/*"))) {
    found.push(
      warning(
        where,
        path[star - 1] === "/"
          ? `${quoted}: "/*" before the end matches any number of segments (it becomes ".*"); use ":name" for exactly one`
          : `${quoted}: a "*" that is not a final "/*" segment is a regular-expression quantifier ("${path.slice(Math.max(0, star - 1), star + 1)}" = zero or more "${path[star - 1] ?? ""}"), not a wildcard`,
      ),
    );
  }
  if (!path.startsWith("/")) {
    const compiled = compileKeyMatch2(path);
    if (compiled.ok && !MANAGEMENT_EXAMPLES.some((resource) => compiled.value.test(resource))) {
      found.push(
        warning(where, `${quoted} has no leading "/", so it is not a request path, and it matches none of the key-management resources (${MANAGEMENT_RESOURCES.join(", ")})`),
      );
    }
  }
  if (path.length > 1 && path.endsWith("/")) {
    found.push(warning(where, `${quoted} ends with "/": paths are matched without a trailing "/", so it matches nothing`));
  } else if (path.includes("//")) {
    found.push(warning(where, `${quoted} contains "//": paths are matched with repeated "/" collapsed, so it matches nothing`));
  }
  return found;
}

/** A rule that would grant reset-all only through a ":param" ("keys/:id" with POST): it does not (management.ts). */
function checkResetAllParam({ rule, methods }: AnalysedRule): Diagnostic[] {
  if (!methods.has("POST") || resetAllReach(rule.path) !== "param") return [];
  return [
    warning(
      rule.where,
      `path "${rule.path}" with POST no longer grants reset-all (a ":param" never matches reset-all, "keys/:id" means one key); name ${RESET_ALL_RESOURCE} to grant it`,
    ),
  ];
}

// --- 6 and 7. method patterns ---------------------------------------------

function checkMethod({ rule, methodPattern, methods }: AnalysedRule): Diagnostic[] {
  const { method, where } = rule;
  const quoted = `method pattern "${method}"`;
  const anchored = isAnchored(method);
  const unknown = literalAlternatives(method).filter(
    // Unanchored, a literal that is part of a known method ("ET") is the anchoring warning's business.
    (literal) => !KNOWN.has(literal) && (anchored || !KNOWN_METHODS.some((m) => m.includes(literal))),
  );
  const unknownText = unknown.map((l) => (KNOWN.has(l.toUpperCase()) ? `"${l}" (methods are matched upper-case)` : `"${l}"`)).join(", ");
  if (methods.size === 0) {
    const names = unknown.length > 0 ? `; it names ${unknownText}, which ${unknown.length === 1 ? "is" : "are"} not among them` : "";
    return [error(where, `${quoted} matches none of the methods a request can have (${KNOWN_LIST})${names}: the rule never applies`)];
  }
  const found: Diagnostic[] = [];
  if (unknown.length > 0) {
    found.push(warning(where, `${quoted} names ${unknownText}: not a method keygate accepts (${KNOWN_LIST}), so that part never matches`));
  }
  if (!anchored) {
    const exact = new RegExp(`^(?:${method})$`);
    const extra = [...methods].filter((m) => !exact.test(m));
    const alternatives = splitTopLevel(method).map((alt) => alt.replace(/^\^/, "").replace(/(?<!\\)\$$/, ""));
    const suggestion = alternatives.length > 1 ? `^(${alternatives.join("|")})$` : `^${alternatives[0]}$`;
    found.push(
      warning(
        where,
        extra.length > 0
          ? `${quoted} is not anchored (^…$), so it matches any method containing a match: it also matches ${extra.join(", ")}`
          : `${quoted} is not anchored (^…$): today it matches the same methods as "${suggestion}", but it means "contains a match"; write "${suggestion}"`,
      ),
    );
  }
  return found;
}

/** Every top-level alternative starts with "^" and ends with an unescaped "$". */
function isAnchored(pattern: string): boolean {
  return splitTopLevel(pattern).every((alt) => alt.startsWith("^") && endsWithAnchor(alt));
}

function endsWithAnchor(text: string): boolean {
  if (!text.endsWith("$")) return false;
  let backslashes = 0;
  for (let i = text.length - 2; i >= 0 && text[i] === "\\"; i--) backslashes++;
  return backslashes % 2 === 0;
}

/** The letters-only alternatives of a pattern such as "^(GET|HEAD)$" or "^GET$|^POST$". */
function literalAlternatives(pattern: string): string[] {
  const result: string[] = [];
  for (const alternative of splitTopLevel(pattern)) {
    let alt = alternative.startsWith("^") ? alternative.slice(1) : alternative;
    if (endsWithAnchor(alt)) alt = alt.slice(0, -1);
    const inner = wholeGroup(alt);
    if (inner !== undefined) result.push(...literalAlternatives(inner));
    else if (/^[A-Za-z]+$/.test(alt)) result.push(alt);
  }
  return result;
}

/** The content of "(…)" or "(?:…)" when that group is the whole text. */
function wholeGroup(text: string): string | undefined {
  if (!text.startsWith("(") || !text.endsWith(")")) return undefined;
  const body = text.startsWith("(?:") ? text.slice(3, -1) : text.startsWith("(?") ? undefined : text.slice(1, -1);
  // "(A)|(B)" starts and ends with brackets but is not one group.
  if (body === undefined || splitTopLevel(`(${body})`).length !== 1 || !balanced(body)) return undefined;
  return body;
}

function balanced(text: string): boolean {
  let depth = 0;
  for (const { char, plain } of scan(text)) {
    if (!plain) continue;
    if (char === "(") depth++;
    else if (char === ")" && --depth < 0) return false;
  }
  return depth === 0;
}

/** Splits at "|" outside groups, character classes and escapes. */
function splitTopLevel(pattern: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let start = 0;
  for (const { char, plain, at } of scan(pattern)) {
    if (!plain) continue;
    if (char === "(") depth++;
    else if (char === ")") depth--;
    else if (char === "|" && depth === 0) {
      parts.push(pattern.slice(start, at));
      start = at + 1;
    }
  }
  parts.push(pattern.slice(start));
  return parts;
}

/** Characters of a regex with whether each is outside escapes and character classes. */
function* scan(pattern: string): Generator<{ char: string; plain: boolean; at: number }> {
  let inClass = false;
  for (let i = 0; i < pattern.length; i++) {
    const char = pattern[i]!;
    if (char === "\\") {
      yield { char, plain: false, at: i };
      i++;
      continue;
    }
    if (inClass) {
      if (char === "]") inClass = false;
      yield { char, plain: false, at: i };
      continue;
    }
    if (char === "[") {
      inClass = true;
      yield { char, plain: false, at: i };
      continue;
    }
    yield { char, plain: true, at: i };
  }
}
