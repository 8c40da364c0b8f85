import type { Policy } from "../policy/policy.js";
import { formatRateLimit, isHigherRate } from "../ratelimit/rate-limit.js";
import { ALL_NAMESPACES, type KeyRecord } from "../keys/key-record.js";
import { managementDecision, paramRuleHint } from "./management.js";

/**
 * Who may do what to which key. Every management action runs for a
 * principal: the local operator (the CLI on the machine that holds the data)
 * or a key. A key caller is checked twice: by the policy (resource paths
 * "keys", "keys/:id", … in management.ts) and here in code, where org
 * isolation and no-escalation hold whatever the policy says.
 */

export type Principal = { kind: "local" } | { kind: "key"; key: KeyRecord };

export type ManageErrorCode = "invalid_argument" | "not_found" | "permission_denied" | "already_exists";
export type ManageFailure = { ok: false; code: ManageErrorCode; message: string };
/** A management outcome: a refusal is data (with the RPC code it maps to), not an exception. */
export type ManageResult<T> = { ok: true; value: T } | ManageFailure;

export const ok = <T>(value: T): ManageResult<T> => ({ ok: true, value });
export const fail = (code: ManageErrorCode, message: string): ManageFailure => ({ ok: false, code, message });

/** What the audit log and created_by record for a principal: a key id, or "local". */
export function actorOf(principal: Principal): string {
  return principal.kind === "local" ? "local" : principal.key.id;
}

/** The power a key being made or changed would have. */
export type KeyPowers = Pick<KeyRecord, "org" | "namespace" | "roles" | "expiresAt" | "rateLimit" | "maxSandboxes">;

export interface AccessRules {
  /** The policy check for a key caller on a management resource; the operator always passes. */
  allowedByPolicy(principal: Principal, method: string, resource: string): ManageResult<void>;
  /** A key outside the caller's org or namespace does not exist for it. */
  visible(principal: Principal, target: KeyRecord): boolean;
  /** Why `target` would have more power than the caller, or undefined. */
  escalation(principal: Principal, target: KeyPowers): Promise<string | undefined>;
  /** Roles of `target` the caller does not hold (directly or by inheritance): a key may not manage such a key. */
  rolesBeyond(principal: Principal, target: KeyRecord): Promise<string[]>;
}

export function createAccessRules(policy: () => Policy): AccessRules {
  return {
    allowedByPolicy(principal, method, resource) {
      if (principal.kind === "local") return ok(undefined);
      const decision = managementDecision(policy(), principal.key, method, resource);
      return decision.allowed ? ok(undefined) : fail("permission_denied", `API key is not allowed to ${method} ${resource}${paramRuleHint(decision)}`);
    },

    visible(principal, target) {
      if (principal.kind === "local") return true;
      const { key } = principal;
      return target.org === key.org && (key.namespace === ALL_NAMESPACES || target.namespace === key.namespace);
    },

    async escalation(principal, target) {
      if (principal.kind === "local") return undefined;
      const { key } = principal;
      if (target.org !== key.org) return `a key may not act on another org ("${target.org}")`;
      if (key.namespace !== ALL_NAMESPACES && target.namespace !== key.namespace) {
        return `a key scoped to namespace "${key.namespace}" may not act on namespace "${target.namespace}"`;
      }
      const mine = await policy().inheritedRoles(key.roles, key.org);
      const extra = target.roles.filter((role) => !mine.has(role));
      if (extra.length > 0) return `a key may not grant roles it does not hold: ${extra.join(", ")}`;
      if (key.expiresAt && (!target.expiresAt || target.expiresAt > key.expiresAt)) {
        return `a key may not grant an expiry later than its own (${key.expiresAt.toISOString()})`;
      }
      if (key.rateLimit) {
        if (!target.rateLimit) return `a key with a rate limit (${formatRateLimit(key.rateLimit)}) may not grant a key without one`;
        if (isHigherRate(target.rateLimit, key.rateLimit)) {
          return `a key may not grant a rate limit higher than its own (${formatRateLimit(target.rateLimit)} is more requests per second than ${formatRateLimit(key.rateLimit)})`;
        }
      }
      if (key.maxSandboxes !== null && (target.maxSandboxes === null || target.maxSandboxes > key.maxSandboxes)) {
        return target.maxSandboxes === null
          ? `a key with a live sandbox limit (${key.maxSandboxes}) may not grant a key without one`
          : `a key may not grant a live sandbox limit higher than its own (${target.maxSandboxes} > ${key.maxSandboxes})`;
      }
      return undefined;
    },

    async rolesBeyond(principal, target) {
      if (principal.kind === "local") return [];
      const mine = await policy().inheritedRoles(principal.key.roles, principal.key.org);
      return target.roles.filter((role) => !mine.has(role));
    },
  };
}
