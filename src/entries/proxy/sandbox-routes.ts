import { normalizeMethod, normalizePath } from "../../core/request/normalize.js";

/**
 * The few Cube/E2B routes the proxy does more than forward: creates (the body
 * is stamped and the new id claimed), lists (filtered to the caller's
 * sandboxes) and deletes (the entry released). Read from the path as the core
 * decides on it (decoded once, slashes collapsed, the policy's routes.yaml
 * prefixes such as `/cubeapi/v1` stripped): a path the policy takes for a
 * list is filtered as one, whatever its spelling.
 */
export type SandboxRoute =
  | { kind: "create" }
  | { kind: "fork"; id: string }
  | { kind: "list" }
  | { kind: "delete"; id: string }
  | { kind: "other" };

const OTHER: SandboxRoute = { kind: "other" };

/** `strip`: the policy's prefix stripping (PolicyRoutes.strip), so the proxy reads a path as the core decides on it. */
export function sandboxRoute(method: string, rawPath: string, strip: (path: string) => string): SandboxRoute {
  const m = normalizeMethod(method);
  const p = normalizePath(rawPath);
  if (!m.ok || !p.ok) return OTHER;
  const path = strip(p.value);
  const segments = path.split("/").slice(1);
  const collection = segments[0] === "sandboxes" ? 1 : segments[0] === "v2" && segments[1] === "sandboxes" ? 2 : 0;
  if (collection === 0) return OTHER;
  const rest = segments.slice(collection);
  if (rest.length === 0) {
    if (m.value === "POST") return { kind: "create" };
    if (m.value === "GET") return { kind: "list" };
    return OTHER;
  }
  // A delete releases under either prefix (an upstream that serves a v2 delete must not leave live entries behind).
  if (rest.length === 1 && m.value === "DELETE") return { kind: "delete", id: rest[0]! };
  // Fork exists only at the v1 path (the SDK's and Cube's route tables).
  if (collection === 1 && rest.length === 2 && rest[1] === "fork" && m.value === "POST") return { kind: "fork", id: rest[0]! };
  return OTHER;
}
