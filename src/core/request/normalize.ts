/**
 * Normalizing what a gateway says it is about to serve, before any policy
 * sees it. Envoy (CVE-2019-9901, CVE-2021-29492), Oathkeeper and
 * fastify-middie all shipped bypasses where the policy and the upstream read
 * one path two ways; the rule here is to produce the one path the upstream
 * serves, or refuse.
 */

/**
 * The HTTP methods an API can be called with. Anything else (CONNECT, TRACE,
 * made-up verbs) is refused before the policy sees it.
 */
export const KNOWN_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] as const;
export type HttpMethod = (typeof KNOWN_METHODS)[number];

export const MAX_PATH_LENGTH = 4096;

export type Normalized<T> = { ok: true; value: T } | { ok: false; error: string };

const KNOWN = new Set<string>(KNOWN_METHODS);

/**
 * Upper-cases the method and refuses unknown ones. An empty method means
 * "not given" (older Cube releases), which the caller treats as "every method".
 */
export function normalizeMethod(method: string): Normalized<HttpMethod | ""> {
  if (method === "") return { ok: true, value: "" };
  // Only HTTP's own whitespace (OWS: space, tab) around a method is ignored; String#trim
  // would also drop no-break spaces, line separators and BOMs, which no upstream ignores.
  const trimmed = trimOws(method);
  // ASCII letters only: Unicode case mapping would turn "poſt" into "POST"
  // and "optıons" into "OPTIONS", methods the upstream never sees.
  const upper = /^[A-Za-z]+$/.test(trimmed) ? trimmed.toUpperCase() : "";
  if (!KNOWN.has(upper)) {
    return { ok: false, error: `unknown HTTP method "${printableShort(method)}"` };
  }
  return { ok: true, value: upper as HttpMethod };
}

// Raw bytes that have no business in a request path (controls, space, and
// the characters a proxy may read as a separator).
const FORBIDDEN_RAW = /[\u0000-\u0020\u007f\\#;]/;
const FORBIDDEN_DECODED = /[\u0000-\u001f\u007f-\u009f\\;]/;
const PERCENT_TRIPLE = /%[0-9A-Fa-f]{2}/;
const NON_ASCII = /[^\u0000-\u007f]/;
// What a compatibility look-alike may become under NFKC (or a Windows "best fit"
// code page): a separator, a ';' parameter, or part of a dot segment.
const FOLDS_TO_SEPARATOR = /[/\\;]/;

/**
 * Returns the path to match policies on:
 * - must start with "/"; a query string is dropped, never matched;
 * - percent-decoded exactly once (invalid escapes and invalid or overlong
 *   UTF-8 are refused);
 * - refused: encoded "/" or "\", any "\", ";" path parameters, "#",
 *   control characters, "." and ".." segments, and anything still
 *   percent-encoded after one decode (double encoding);
 * - repeated slashes collapse and a trailing slash is dropped, as the
 *   upstream router would.
 */
export function normalizePath(raw: string): Normalized<string> {
  if (raw.length === 0) return { ok: false, error: "missing path" };
  if (raw.length > MAX_PATH_LENGTH) return { ok: false, error: `path longer than ${MAX_PATH_LENGTH} characters` };
  const queryAt = raw.indexOf("?");
  const path = queryAt === -1 ? raw : raw.slice(0, queryAt);
  if (!path.startsWith("/")) return { ok: false, error: `path must start with "/"` };
  if (FORBIDDEN_RAW.test(path)) {
    return { ok: false, error: "path contains a forbidden character (control character, space, \\, ; or #)" };
  }

  const segments: string[] = [];
  for (const segment of path.split("/")) {
    if (segment === "") continue; // collapses "//" and drops a trailing "/"
    let decoded: string;
    if (segment.includes("%")) {
      if (/%2f|%5c/i.test(segment)) return { ok: false, error: "path contains an encoded / or \\" };
      try {
        decoded = decodeURIComponent(segment);
      } catch {
        return { ok: false, error: "path contains an invalid percent-encoding or invalid UTF-8" };
      }
      if (PERCENT_TRIPLE.test(decoded)) return { ok: false, error: "path is percent-encoded twice" };
    } else {
      decoded = segment;
    }
    if (decoded === "." || decoded === "..") return { ok: false, error: `path contains a "${decoded}" segment` };
    if (FORBIDDEN_DECODED.test(decoded) || decoded.includes("/")) {
      return { ok: false, error: "path contains a forbidden encoded character" };
    }
    if (decoded.includes("\ufffd")) return { ok: false, error: "path contains invalid UTF-8" };
    if (NON_ASCII.test(decoded) && isLookalike(decoded)) {
      return { ok: false, error: "path contains a Unicode look-alike of /, \\, ; or a dot segment" };
    }
    segments.push(decoded);
  }
  return { ok: true, value: "/" + segments.join("/") };
}

/**
 * True when a segment's compatibility form (NFKC: "．．" → "..", "／" → "/",
 * "﹔" → ";") is a dot segment or holds a separator: an upstream that folds
 * compatibility characters (some frameworks, Windows "best fit" conversions)
 * would read another path than the policy matched. Other non-ASCII characters
 * (fullwidth letters, accents) are ordinary characters of a name.
 */
function isLookalike(segment: string): boolean {
  const folded = segment.normalize("NFKC");
  if (folded === segment) return false;
  return folded === "." || folded === ".." || FOLDS_TO_SEPARATOR.test(folded);
}

/** HTTP's optional whitespace (space, tab) cut from both ends (a loop: a regex like /[ \t]+$/ backtracks quadratically). */
export function trimOws(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && (text.charCodeAt(start) === 0x20 || text.charCodeAt(start) === 0x09)) start++;
  while (end > start && (text.charCodeAt(end - 1) === 0x20 || text.charCodeAt(end - 1) === 0x09)) end--;
  return text.slice(start, end);
}

function printableShort(text: string): string {
  const clean = text.replace(/[^\u0021-\u007e]/g, "?");
  return clean.length > 32 ? `${clean.slice(0, 32)}…` : clean;
}
