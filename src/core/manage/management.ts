import type { Policy } from "../policy/policy.js";
import type { PolicyDecision } from "../policy/policy-request.js";
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
 *   reset-all POST keys/reset-all
 *   AuditService/ListAuditEvents GET audit (the audit log, own org only)
 *   ResourceService: claim POST resources · list GET resources
 *   get GET resources/:kind/:id · release DELETE resources/:kind/:id
 */
export const MANAGEMENT_RESOURCES = ["keys", "keys/:id", "keys/:id/revoke", "keys/:id/rotate", "keys/reset-all", "audit", "resources", "resources/:kind/:id"] as const;

const RESOURCE = /^((keys|resources)(\/[A-Za-z0-9_.~:-]+)*|audit)$/;

export function isManagementResource(path: string): boolean {
  return RESOURCE.test(path);
}

/**
 * ManageKey's policy check: the caller key's roles in its own org and
 * namespace (a key scoped to every namespace asks as "*"), on the resource.
 */
export function managementDecision(
  policy: Policy,
  caller: { roles: readonly string[]; org: string; namespace: string },
  method: string,
  resource: string,
): PolicyDecision {
  return policy.decide({ roles: caller.roles, org: caller.org, namespace: caller.namespace || ALL_NAMESPACES, path: resource, method });
}
