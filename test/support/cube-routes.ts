/**
 * The routes the default policy covers and who may use each, written from
 * SPEC.md ("Cube/E2B routes a default policy should cover") and the REST
 * calls in the e2b SDK's dist/ (2.51.0), not from policies/policy.csv: the
 * tests hold the CSV and the policy-test tables to it.
 *
 * Each method names the least role that may use it: "reader" (reads),
 * "writer" (sandbox writes, and the terminal: a shell, so no reader's),
 * "platform" (changes to what every org shares: templates, volumes,
 * secrets). HEAD goes with a GET that readers may use, and nowhere else.
 */

export type Tier = "reader" | "writer" | "platform";
export type Role = "reader" | "writer" | "platform" | "admin";

export interface CubeRoute {
  pattern: string;
  example: string;
  methods: Partial<Record<string, Tier>>;
  /** A wider pattern that also matches this route's path, whose lines may decide for it. */
  alsoMatches?: string;
}

const SANDBOX = "/sandboxes/sbx-1";

export const CUBE_ROUTES: CubeRoute[] = [
  // sandboxes
  { pattern: "/sandboxes", example: "/sandboxes", methods: { GET: "reader", POST: "writer" } },
  { pattern: "/v2/sandboxes", example: "/v2/sandboxes", methods: { GET: "reader", POST: "writer" } },
  { pattern: "/sandboxes/:id", example: SANDBOX, methods: { GET: "reader", DELETE: "writer" } },
  { pattern: "/sandboxes/:id/logs", example: `${SANDBOX}/logs`, methods: { GET: "reader" } },
  { pattern: "/v2/sandboxes/:id/logs", example: "/v2/sandboxes/sbx-1/logs", methods: { GET: "reader" } },
  { pattern: "/sandboxes/:id/metrics", example: `${SANDBOX}/metrics`, methods: { GET: "reader" } },
  ...["timeout", "refreshes", "pause", "resume", "connect", "snapshots", "rollback", "fork"].map(
    (action): CubeRoute => ({ pattern: `/sandboxes/:id/${action}`, example: `${SANDBOX}/${action}`, methods: { POST: "writer" } }),
  ),
  { pattern: "/v2/sandboxes/:id/connect", example: "/v2/sandboxes/sbx-1/connect", methods: { POST: "writer" } },
  { pattern: "/sandboxes/:id/network", example: `${SANDBOX}/network`, methods: { PUT: "writer" } },
  { pattern: "/sandboxes/:id/terminal/ws", example: `${SANDBOX}/terminal/ws`, methods: { GET: "writer" } },
  { pattern: "/snapshots", example: "/snapshots", methods: { GET: "reader" } },
  // templates (shared)
  { pattern: "/templates", example: "/templates", methods: { GET: "reader", POST: "platform" } },
  { pattern: "/v3/templates", example: "/v3/templates", methods: { POST: "platform" } },
  // "compat" and "tags" are also an id to /templates/:id (keyMatch2 cannot tell a literal
  // segment from a parameter), so that route's methods reach them too: the upstream answers
  // those as the template "compat" or "tags", or with a 405.
  { pattern: "/templates/compat", example: "/templates/compat", methods: { GET: "reader", POST: "platform", DELETE: "platform", PATCH: "platform" }, alsoMatches: "/templates/:id" },
  { pattern: "/templates/compat/:id/adopt-baseline", example: "/templates/compat/tpl-1/adopt-baseline", methods: { POST: "platform" } },
  { pattern: "/templates/aliases/:alias", example: "/templates/aliases/stable-python", methods: { GET: "reader" } },
  { pattern: "/templates/tags", example: "/templates/tags", methods: { GET: "reader", POST: "platform", DELETE: "platform", PATCH: "platform" }, alsoMatches: "/templates/:id" },
  { pattern: "/templates/:id", example: "/templates/tpl-1", methods: { GET: "reader", POST: "platform", DELETE: "platform", PATCH: "platform" } },
  { pattern: "/templates/:id/tags", example: "/templates/tpl-1/tags", methods: { GET: "reader" } },
  // An upload link for a build's files: a GET that writes.
  { pattern: "/templates/:id/files/:hash", example: "/templates/tpl-1/files/f00d", methods: { GET: "platform" } },
  { pattern: "/templates/:id/builds/:buildID", example: "/templates/tpl-1/builds/bld-1", methods: { POST: "platform" } },
  { pattern: "/v2/templates/:id/builds/:buildID", example: "/v2/templates/tpl-1/builds/bld-1", methods: { POST: "platform" } },
  { pattern: "/templates/:id/builds/:buildID/status", example: "/templates/tpl-1/builds/bld-1/status", methods: { GET: "reader" } },
  { pattern: "/templates/:id/builds/:buildID/logs", example: "/templates/tpl-1/builds/bld-1/logs", methods: { GET: "reader" } },
  // volumes and their content (shared)
  { pattern: "/volumes", example: "/volumes", methods: { GET: "reader", POST: "platform" } },
  { pattern: "/volumes/:id", example: "/volumes/vol-1", methods: { GET: "reader", DELETE: "platform" } },
  { pattern: "/volumecontent/:id/dir", example: "/volumecontent/vol-1/dir", methods: { GET: "reader", POST: "platform" } },
  { pattern: "/volumecontent/:id/path", example: "/volumecontent/vol-1/path", methods: { GET: "reader", PATCH: "platform", DELETE: "platform" } },
  { pattern: "/volumecontent/:id/file", example: "/volumecontent/vol-1/file", methods: { GET: "reader", PUT: "platform" } },
  // secrets (shared; the SDK's secrets API)
  { pattern: "/secrets", example: "/secrets", methods: { GET: "reader", POST: "platform" } },
  { pattern: "/secrets/:id", example: "/secrets/sec-1", methods: { GET: "reader", POST: "platform", DELETE: "platform" } },
];

export const ROLES: readonly Role[] = ["reader", "writer", "platform", "admin"];

/** The tiers each role reaches, itself and by inheritance; admin is not platform. */
export const TIERS: Record<Role, readonly Tier[]> = { reader: ["reader"], writer: ["reader", "writer"], platform: ["reader", "platform"], admin: ["reader", "writer"] };

/** The roles whose p lines each role may be decided by (itself and what it inherits). */
export const INHERITS: Record<Role, readonly string[]> = { reader: ["reader"], writer: ["writer", "reader"], platform: ["platform", "reader"], admin: ["admin", "writer", "reader"] };

/** The least role that may use a method on a route, or undefined for none. */
export function tierOf(route: CubeRoute, method: string): Tier | undefined {
  const tier = route.methods[method];
  if (tier !== undefined) return tier;
  return method === "HEAD" && route.methods.GET === "reader" ? "reader" : undefined;
}

/** What the spec says a key with these roles may do. */
export function may(roles: readonly Role[], route: CubeRoute, method: string): boolean {
  const tier = tierOf(route, method);
  return tier !== undefined && roles.some((role) => TIERS[role].includes(tier));
}
