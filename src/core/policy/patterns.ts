import { KNOWN_METHODS } from "../request/normalize.js";

/**
 * Casbin's pattern functions, compiled once per rule instead of once per
 * decision. The regular expressions are built exactly as Casbin builds them
 * (util.keyMatch2 and util.regexMatch), so a compiled rule matches what
 * Casbin's matcher would.
 */

export type Compiled<T> = { ok: true; value: T } | { ok: false; error: string };

const PARAM = /(.*):[^/]+(.*)/g;

/** What a ":name" parameter becomes in keyMatch2's regular expression. */
export const KEYMATCH2_PARAM = "[^/]+";

/**
 * The regular expression keyMatch2(key1, pattern) tests key1 against.
 * `param` replaces what a ":name" parameter matches (it must contain no ":"
 * and no "$"): management.ts asks whether a pattern matches a resource
 * without a parameter standing for part of it.
 */
export function keyMatch2Source(pattern: string, param: string = KEYMATCH2_PARAM): Compiled<string> {
  let key2 = pattern.replace(/\/\*/g, "/.*");
  // Casbin loops while "/:" remains; a "/:" with nothing after it never
  // changes and would spin forever (a hung decision): refuse such a pattern.
  while (key2.includes("/:")) {
    const next = key2.replace(PARAM, `$1${param}$2`);
    if (next === key2) return { ok: false, error: 'a ":" parameter needs a name (e.g. "/:id")' };
    key2 = next;
  }
  if (key2 === "*") key2 = "(.*)";
  return { ok: true, value: `^${key2}$` };
}

export function compileKeyMatch2(pattern: string, param?: string): Compiled<RegExp> {
  const source = keyMatch2Source(pattern, param);
  if (!source.ok) return source;
  try {
    return { ok: true, value: new RegExp(source.value) };
  } catch (error) {
    return { ok: false, error: (error as Error).message };
  }
}

/** regexMatch(r.method, p.method): the pattern is used as written, unanchored. */
export function compileMethodPattern(pattern: string): Compiled<RegExp> {
  try {
    return { ok: true, value: new RegExp(pattern) };
  } catch (error) {
    return { ok: false, error: (error as Error).message };
  }
}

/** Which of the known HTTP methods a method pattern matches (requests never carry others). */
export function methodsMatched(pattern: RegExp): string[] {
  return KNOWN_METHODS.filter((method) => pattern.test(method));
}

const LITERAL_SEGMENT = /^[A-Za-z0-9_~-]*$/;

/**
 * The first segment of a path pattern when every path the pattern matches
 * must start with it ("/sandboxes" for "/sandboxes/:id", "keys" for
 * "keys/:id"), used to index rules; undefined when the pattern could match a
 * path with another first segment (a parameter or wildcard there, regex
 * characters, an alternation, an optional "/" after it), so the rule goes in
 * the bucket that is always checked. Conservative by design: a rule in the
 * wrong bucket would be a wrong decision, a rule in the checked-always bucket
 * only costs time.
 */
export function literalFirstSegment(pattern: string): string | undefined {
  const compiled = keyMatch2Source(pattern);
  if (!compiled.ok) return undefined;
  const source = compiled.value;
  if (source.includes("|")) return undefined;
  const body = source.slice(1, -1); // without ^ and $
  const start = body.startsWith("/") ? 1 : 0;
  let end = start;
  while (end < body.length && body[end] !== "/") end++;
  const segment = body.slice(start, end);
  if (!LITERAL_SEGMENT.test(segment)) return undefined;
  if (end < body.length && /[?*+{]/.test(body[end + 1] ?? "")) return undefined;
  return body.slice(0, end);
}

/** The same key for a request path: its leading "/" (if any) and first segment. */
export function firstSegmentOf(path: string): string {
  const start = path.startsWith("/") ? 1 : 0;
  const end = path.indexOf("/", start);
  return end === -1 ? path : path.slice(0, end);
}
