import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import type { ConsumeBudgets } from "../../core/authorize/consume-budgets.js";
import { MESSAGES, type Decision } from "../../core/authorize/decision.js";
import type { FailedAuthGuard } from "../../core/authorize/failed-auth-guard.js";
import type { CredentialSource } from "../../config/config.js";
import type { KnownKey, LookupKey } from "../../core/keys/key-lookup.js";
import type { Principal } from "../../core/manage/access.js";
import { credentialFromHeaders } from "../../http/credentials.js";
import { kSource } from "../../http/rpc-context.js";

export interface PrincipalDeps {
  lookupKey: LookupKey;
  /** The lookup's answer without the database (cache, malformed), asked before the guard's counter. */
  knownKey?: KnownKey;
  /** The failed-auth guard Authorize uses: the same count per address, the same refusal. */
  guard?: FailedAuthGuard;
  credentialPriority: readonly CredentialSource[];
  dev: boolean;
  /** Every caller is the local operator (control socket, in-process CLI). */
  localOperator: boolean;
  /**
   * Takes each call a key makes from its budgets, as a decision would: a
   * key over its limit gets RESOURCE_EXHAUSTED. Unset = calls are not counted.
   */
  consumeBudgets?: ConsumeBudgets;
}

export type PrincipalOf = (context: HandlerContext) => Promise<Principal>;

/**
 * Who calls a management RPC (ManageKey, AuditService, ResourceService): the
 * local operator, or the key in its request headers. A caller's credential
 * goes through the failed-auth guard as on Authorize: a blocked address is
 * refused before any lookup reaches the database, an invalid key counts.
 * A key's call then costs it a point of every budget it is held to (the
 * local operator and dev mode are never limited).
 */
export function createPrincipalOf({ lookupKey, knownKey, guard, credentialPriority, dev, localOperator, consumeBudgets }: PrincipalDeps): PrincipalOf {
  return async (context) => {
    if (localOperator || dev) return { kind: "local" };
    const credential = credentialFromHeaders((name) => context.requestHeader.get(name) ?? undefined, credentialPriority);
    if (credential === "") throw new ConnectError(MESSAGES.missing_credential, Code.Unauthenticated);
    const source = context.values.get(kSource);
    const guarded = guard && source !== undefined && guard.applies(source) ? { guard, source } : undefined;
    let found = knownKey?.(credential);
    if (found === undefined && guarded) {
      const refused = await guarded.guard.blocked(guarded.source);
      if (refused) throw guardError(refused);
    }
    found ??= await lookupKey(credential);
    switch (found.status) {
      case "ok":
        break;
      case "invalid":
        throw guarded ? guardError(await guarded.guard.failed(guarded.source)) : new ConnectError(MESSAGES.invalid_key, Code.Unauthenticated);
      case "revoked":
        throw new ConnectError(MESSAGES.revoked, Code.Unauthenticated);
      case "expired":
        throw new ConnectError(MESSAGES.expired, Code.Unauthenticated);
    }
    if (consumeBudgets) {
      let consumed;
      try {
        consumed = await consumeBudgets(found.key);
      } catch (error) {
        // Fail closed, as a decision does.
        throw new ConnectError("the rate limiter failed, request refused", Code.Unavailable, undefined, undefined, error);
      }
      if (consumed && !consumed.allowed) {
        const reset = String(consumed.status.resetSeconds);
        throw new ConnectError(MESSAGES.rate_limited, Code.ResourceExhausted, {
          "retry-after": reset,
          "ratelimit-limit": String(consumed.status.limit),
          "ratelimit-remaining": "0",
          "ratelimit-reset": reset,
        });
      }
    }
    return { kind: "key", key: found.key };
  };
}

/** The guard's answer as an RPC error: invalid_key (perhaps after its delay), or the refusal. */
function guardError(decision: Decision): ConnectError {
  if (decision.reason !== "rate_limited") return new ConnectError(decision.message, Code.Unauthenticated);
  const retryAfter = decision.rateLimit ? { "retry-after": String(decision.rateLimit.resetSeconds) } : undefined;
  return new ConnectError(decision.message, Code.ResourceExhausted, retryAfter);
}
