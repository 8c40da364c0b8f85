import { isMap, isScalar, isSeq, LineCounter, parseDocument, type Node } from "yaml";
import { isValidResourceKind, type ResourceRef } from "../resources/resource.js";

/**
 * `routes.yaml` beside the CSV: what the policy author knows about the
 * upstream's routes beyond methods and roles.
 *
 *   prefixes: [/cubeapi/v1]      # every route is also served under these; decided without them
 *   owned:                       # paths that address one owned resource, named by their ":id"
 *     - kind: sandboxes
 *       paths: [/sandboxes/:id, /sandboxes/:id/*]
 *
 * No file: no prefixes, nothing owned (every route decided by the CSV alone).
 */

export const ROUTES_FILE = "routes.yaml";

/** Same shape as policy-source's Diagnostic (which reads this file). */
interface Diagnostic {
  where: string;
  severity: "error" | "warning";
  message: string;
}

export interface OwnedRoute {
  kind: string;
  /** The pattern as written. */
  pattern: string;
  /** "routes.yaml:7" */
  where: string;
  regex: RegExp;
}

export interface PolicyRoutes {
  readonly prefixes: readonly string[];
  readonly owned: readonly OwnedRoute[];
  /** The path without a leading prefix (once); other paths as they are. */
  strip(path: string): string;
  /** The owned resource a stripped path addresses, if any (first matching route). */
  resourceOf(path: string): (ResourceRef & { route: OwnedRoute }) | undefined;
}

const PREFIX_PATTERN = /^(\/[A-Za-z0-9._~-]+)+$/;
const LITERAL_SEGMENT = /^[A-Za-z0-9._~-]+$/;
const PARAM_SEGMENT = /^:[A-Za-z][A-Za-z0-9_]*$/;

export function createPolicyRoutes(prefixes: readonly string[], owned: readonly OwnedRoute[]): PolicyRoutes {
  return {
    prefixes,
    owned,
    strip(path) {
      for (const prefix of prefixes) {
        if (path === prefix) return "/";
        if (path.startsWith(prefix) && path.charCodeAt(prefix.length) === 47 /* / */) return path.slice(prefix.length);
      }
      return path;
    },
    resourceOf(path) {
      if (owned.length === 0 || !path.startsWith("/")) return undefined;
      for (const route of owned) {
        const match = route.regex.exec(path);
        // An id no upstream makes (200 characters, odd bytes) is still that route's resource: nobody owns it.
        if (match) return { kind: route.kind, id: match[1]!, route };
      }
      return undefined;
    },
  };
}

export const NO_ROUTES: PolicyRoutes = createPolicyRoutes([], []);

/** An owned-path pattern as a regular expression whose one group is the ":id" segment; or why it is not one. */
export function compileOwnedPath(pattern: string): { ok: true; regex: RegExp } | { ok: false; error: string } {
  if (!pattern.startsWith("/")) return { ok: false, error: 'a path starts with "/"' };
  const segments = pattern.slice(1).split("/");
  let source = "^";
  let ids = 0;
  for (let i = 0; i < segments.length; i++) {
    const segment = segments[i]!;
    if (segment === "*" && i === segments.length - 1 && i > 0) {
      source += "/.+";
      continue;
    }
    if (segment === ":id") {
      ids++;
      source += "/([^/]+)";
    } else if (PARAM_SEGMENT.test(segment)) {
      source += "/[^/]+";
    } else if (LITERAL_SEGMENT.test(segment)) {
      source += `/${segment.replace(/[.~-]/g, "\\$&")}`;
    } else {
      return { ok: false, error: `segment "${segment}" is not a literal, a ":name" parameter or a final "*"` };
    }
  }
  if (ids !== 1) return { ok: false, error: `an owned path names its resource with exactly one ":id" segment (found ${ids})` };
  return { ok: true, regex: new RegExp(`${source}$`) };
}

/** Parses routes.yaml's text; problems become diagnostics naming routes.yaml:line. */
export function parseRoutes(text: string): { routes: PolicyRoutes; diagnostics: Diagnostic[] } {
  const diagnostics: Diagnostic[] = [];
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true });
  const at = (node: Node | null | undefined) => (node?.range ? `${ROUTES_FILE}:${lineCounter.linePos(node.range[0]).line}` : ROUTES_FILE);
  const error = (where: string, message: string) => diagnostics.push({ where, severity: "error", message });
  for (const e of doc.errors) error(`${ROUTES_FILE}:${e.linePos?.[0]?.line ?? 1}`, e.message.split("\n")[0]!);
  if (doc.errors.length > 0) return { routes: NO_ROUTES, diagnostics };
  const root = doc.contents;
  if (root === null || (isScalar(root) && root.value === null)) return { routes: NO_ROUTES, diagnostics };
  if (!isMap(root)) {
    error(ROUTES_FILE, "expected a mapping with \"prefixes\" and/or \"owned\"");
    return { routes: NO_ROUTES, diagnostics };
  }
  const prefixes: string[] = [];
  const owned: OwnedRoute[] = [];
  for (const pair of root.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    const value = pair.value as Node | null;
    if (key === "prefixes") {
      if (!isSeq(value)) {
        error(at(value), "prefixes: expected a list of paths, e.g. [/cubeapi/v1]");
        continue;
      }
      for (const item of value.items as Node[]) {
        const prefix = isScalar(item) ? item.value : undefined;
        if (typeof prefix !== "string" || !PREFIX_PATTERN.test(prefix)) {
          error(at(item), `prefix ${JSON.stringify(prefix ?? null)}: expected "/" and literal segments, e.g. /cubeapi/v1`);
        } else if (prefixes.includes(prefix)) {
          error(at(item), `prefix ${prefix} is listed twice`);
        } else {
          prefixes.push(prefix);
        }
      }
    } else if (key === "owned") {
      if (!isSeq(value)) {
        error(at(value), "owned: expected a list of { kind, paths }");
        continue;
      }
      for (const item of value.items as Node[]) parseOwned(item, owned, at, error);
    } else {
      error(at(pair.key as Node), `unknown key "${key}" (expected "prefixes" or "owned")`);
    }
  }
  // A longer prefix first: "/a/b" must not lose to "/a".
  prefixes.sort((a, b) => b.length - a.length);
  return { routes: createPolicyRoutes(prefixes, owned), diagnostics };
}

function parseOwned(item: Node, owned: OwnedRoute[], at: (node: Node | null | undefined) => string, error: (where: string, message: string) => void): void {
  if (!isMap(item)) {
    error(at(item), "an owned entry is { kind: NAME, paths: [PATTERN, …] }");
    return;
  }
  const kindNode = item.get("kind", true) as Node | undefined;
  const pathsNode = item.get("paths", true) as Node | undefined;
  for (const pair of item.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : "";
    if (key !== "kind" && key !== "paths") error(at(pair.key as Node), `unknown key "${key}" in an owned entry (expected "kind" and "paths")`);
  }
  const kind = isScalar(kindNode) ? kindNode.value : undefined;
  if (typeof kind !== "string" || !isValidResourceKind(kind)) {
    error(at(kindNode ?? item), `kind ${JSON.stringify(kind ?? null)}: expected a lower-case word such as "sandboxes"`);
    return;
  }
  if (!isSeq(pathsNode) || pathsNode.items.length === 0) {
    error(at(pathsNode ?? item), `kind ${kind}: paths: expected a non-empty list of patterns, e.g. [/${kind}/:id, /${kind}/:id/*]`);
    return;
  }
  for (const pathNode of pathsNode.items as Node[]) {
    const pattern = isScalar(pathNode) ? pathNode.value : undefined;
    if (typeof pattern !== "string") {
      error(at(pathNode), `kind ${kind}: a path pattern is a string`);
      continue;
    }
    const compiled = compileOwnedPath(pattern);
    if (!compiled.ok) {
      error(at(pathNode), `owned path "${pattern}": ${compiled.error}`);
      continue;
    }
    const clash = owned.find((route) => route.pattern === pattern);
    if (clash) {
      error(at(pathNode), `owned path "${pattern}" is already declared at ${clash.where}`);
      continue;
    }
    owned.push({ kind, pattern, where: at(pathNode), regex: compiled.regex });
  }
}
