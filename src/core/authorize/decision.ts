import type { RuleMiss } from "../policy/policy-request.js";
import type { RateLimitStatus } from "../ratelimit/rate-limit.js";

/**
 * Where a request came in: the RPC services, the Cube callback, Envoy's
 * ext_authz, an nginx auth_request / Traefik forwardAuth endpoint, or the proxy.
 */
export type DecisionEntry = "rpc" | "shim" | "ext_authz" | "forward_auth" | "proxy";

/** Why a decision came out as it did. A deny is data, not an exception. */
export type Reason =
  | "allowed"
  | "missing_credential"
  | "invalid_key"
  | "revoked"
  | "expired"
  | "forbidden"
  | "not_found"
  | "rate_limited"
  | "bad_request"
  | "unavailable";

export interface KeyIdentity {
  id: string;
  name: string;
  org: string;
  namespace: string;
  roles: string[];
}

export type DenyReason = Exclude<Reason, "allowed">;

interface DecisionFields {
  message: string;
  key?: KeyIdentity;
  /** "policy.csv:12", or "" when no rule decided. */
  matchedRule: string;
  /** The key's rate-limit budget, when the policy allowed and the key has a limit (its own or the default); on a rate-limited deny, the spent budget. */
  rateLimit?: RateLimitStatus;
}

export interface Allow extends DecisionFields {
  allowed: true;
  reason: "allowed";
}

export interface Deny extends DecisionFields {
  allowed: false;
  reason: DenyReason;
  /** On a policy deny, when asked: the closest rules that did not match, and why. */
  explanation?: RuleMiss[];
}

/** Allowed with reason "allowed", or denied with any other reason: `{ allowed: true, reason: "revoked" }` does not type-check. */
export type Decision = Allow | Deny;

export interface AuthorizeInput {
  credential: string;
  path: string;
  method: string;
  namespace: string;
  org: string;
  /**
   * The local operator's check (`keygate check`; the RPC entries honour it
   * only for the control socket and the in-process CLI): a policy deny is
   * explained (closest rules and why they did not match), and the request,
   * decided exactly as traffic is, is not counted: no usage counts, and the
   * rate-limit budgets are read, not drawn from.
   */
  explain?: boolean;
  /**
   * The client's address, set by the shim and the RPC service (the peer, or a
   * trusted proxy's header); counts invalid credentials per source. Unset = unknown.
   */
  source?: string;
  /** Which door the request came through, for the decision log. */
  entry?: DecisionEntry;
}

/** The messages clients see (SandBase wording where it has one). */
export const MESSAGES = {
  missing_credential: "missing API key in Authorization header",
  invalid_key: "invalid API key",
  revoked: "API key has been revoked",
  expired: "API key has expired",
  rate_limited: "rate limit exceeded",
  unavailable: "authorization unavailable: the key store cannot be reached, request denied",
} as const;

export function forbiddenMessage(method: string, path: string): string {
  return `API key is not allowed to ${method} ${path}`;
}

/**
 * An owned resource the key's org does not own, or that nobody owns: one
 * answer for both, so a key cannot learn that another org's sandbox exists.
 */
export function notFoundMessage(kind: string, id: string): string {
  return `${kind}/${id} not found`;
}

export function deny(reason: DenyReason, message: string, key?: KeyIdentity): Deny {
  return { allowed: false, reason, message, matchedRule: "", ...(key && { key }) };
}

/** The one place a reason becomes an HTTP status (shim, and later gateways). */
export function httpStatusFor(reason: Reason): number {
  switch (reason) {
    case "allowed":
      return 200;
    case "missing_credential":
    case "invalid_key":
    case "revoked":
    case "expired":
      return 401;
    case "forbidden":
    case "bad_request":
      // nginx auth_request treats anything but 401/403 as an error, so a
      // malformed request is a 403 too.
      return 403;
    case "not_found":
      return 404;
    case "rate_limited":
      return 429;
    case "unavailable":
      return 503;
  }
}
