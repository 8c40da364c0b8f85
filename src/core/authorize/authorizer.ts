import type { KeyRecord } from "../keys/key-record.js";
import { ALL_NAMESPACES, isValidName, isValidNamespace } from "../keys/key-record.js";
import type { KeyLookup, KnownKey, LookupKey } from "../keys/key-lookup.js";
import type { Policy } from "../policy/policy.js";
import type { RuleMiss } from "../policy/policy-request.js";
import type { FailedAuthGuard } from "./failed-auth-guard.js";
import type { RateLimit } from "../ratelimit/rate-limit.js";
import type { RateLimiter } from "../ratelimit/rate-limiter.js";
import { createBudgetConsumer, createBudgetPeeker } from "./consume-budgets.js";
import { mayAccess, PLATFORM_ORG, type Owner, type ResourceRef } from "../resources/resource.js";
import { deny, forbiddenMessage, MESSAGES, notFoundMessage, type AuthorizeInput, type Decision, type DecisionEntry, type KeyIdentity } from "./decision.js";
import { KNOWN_METHODS, normalizeMethod, normalizePath, type HttpMethod } from "../request/normalize.js";

export interface AuthorizerDeps {
  lookupKey: LookupKey;
  /** The lookup's answer when it needs no database (cache, malformed); unset = every credential counts as needing one. */
  knownKey?: KnownKey;
  /** The policy in force now (it may be swapped by a reload). */
  policy: () => Policy;
  now: () => Date;
  /** Called with each allowed key, to keep last_used_at and the allowed count. */
  onUsed?: (keyId: string, at: Date) => void;
  /** Called with each known key denied a request (revoked, expired, forbidden, rate limited, …), to count it. */
  onDenied?: (keyId: string, at: Date) => void;
  /** Called when a decision could not be made (an outage), before denying. */
  onError?: (error: unknown) => void;
  dev?: boolean;
  /** Enforces per-key allocations (each key's budgets: consume-budgets.ts); unset = no rate limits at all. */
  rateLimiter?: RateLimiter;
  /** The allocation of keys without their own; null = unlimited. */
  defaultRateLimit?: RateLimit | null;
  /** Slows, then refuses, invalid credentials from one source; only applied when the input has a source. */
  guard?: FailedAuthGuard;
  /** Every decision as it leaves the core (the decision log). Must not throw or wait. */
  onDecision?: (input: AuthorizeInput, decision: Decision) => void;
  /** Counts and times every decision (metrics). Must not throw or wait; unset = no clock is read. */
  observe?: DecisionObserver;
  /** Traces decisions (OpenTelemetry); unset = no per-request work at all. */
  tracer?: DecisionTracer;
  /**
   * Ownership enforced: a path routes.yaml declares owned is allowed only to
   * keys of the owner's org and namespace (and platform keys, org "*").
   * Unset = the ledger is not consulted (single-tenant).
   */
  ownership?: {
    owner(ref: ResourceRef): Promise<Owner | null>;
    /** The owner when warm in memory (undefined = ask owner()): a warm check costs no promise. */
    cachedOwner?(ref: ResourceRef): Owner | null | undefined;
  };
}

export type Authorize = (input: AuthorizeInput) => Promise<Decision>;

/** A decision, where it came in (undefined counts as "rpc", as in the decision log) and how long it took, in seconds. */
export type DecisionObserver = (entry: DecisionEntry | undefined, decision: Decision, seconds: number) => void;

/** Starts a trace of one decision; the core calls its span at each step. */
export interface DecisionTracer {
  start(input: AuthorizeInput): DecisionSpan;
}

/**
 * One decision's trace: the decision itself, with the key lookup and the
 * policy evaluation as steps inside it. Never given the credential.
 */
export interface DecisionSpan {
  /** The request as the policy sees it (normalized path and method). */
  request(request: NormalizedRequest): void;
  lookupStarted(): void;
  /** `found` is undefined when the lookup failed with `error`. */
  lookupEnded(found: KeyLookup | undefined, error?: unknown): void;
  policyStarted(): void;
  policyEnded(decision: Decision | undefined, error?: unknown): void;
  /** The decision given; undefined when deciding threw `error` (a bug). */
  end(decision: Decision | undefined, error?: unknown): void;
}

export function identityOf(key: KeyRecord): KeyIdentity {
  return { id: key.id, name: key.name, org: key.org, namespace: key.namespace, roles: key.roles };
}

const DEV_DECISION: Decision = {
  allowed: true,
  reason: "allowed",
  message: "dev mode: every request is allowed",
  matchedRule: "",
};

/**
 * Request → Decision. Pure of transport: the RPC services and the HTTP shim
 * both call this. Order: credential present, credential shape, request
 * shape, key state, org, namespace, policy, then the key's rate limit.
 * Any internal error denies.
 */
export function createAuthorizer({
  lookupKey,
  knownKey,
  policy,
  now,
  onUsed,
  onDenied,
  onError,
  dev = false,
  rateLimiter,
  defaultRateLimit = null,
  guard,
  onDecision,
  observe,
  tracer,
  ownership,
}: AuthorizerDeps): Authorize {
  const consumeBudgets = rateLimiter ? createBudgetConsumer(rateLimiter, defaultRateLimit) : undefined;
  const peekBudgets = rateLimiter ? createBudgetPeeker(rateLimiter, defaultRateLimit) : undefined;
  return async function authorize(input) {
    const started = observe ? performance.now() : 0;
    const span = tracer?.start(input);
    let decision: Decision;
    try {
      decision = await decide(input, span);
    } catch (error) {
      span?.end(undefined, error);
      throw error;
    }
    // Metrics before the hooks below: the time is the decision's, not the decision log's.
    if (observe) observe(input.entry, decision, (performance.now() - started) / 1000);
    span?.end(decision);
    // A deny that names a key is about a known key; one without (no or invalid credential) is not.
    // The operator's check (explain) is not traffic: never counted.
    if (!decision.allowed && decision.key && input.explain !== true) onDenied?.(decision.key.id, now());
    if (onDecision) {
      try {
        onDecision(input, decision);
      } catch (error) {
        onError?.(error);
      }
    }
    return decision;
  };

  async function decide(input: AuthorizeInput, span: DecisionSpan | undefined): Promise<Decision> {
    if (dev) return DEV_DECISION;
    if (input.credential === "") return deny("missing_credential", MESSAGES.missing_credential);

    const request = normalizeRequest(input);
    if ("reason" in request) return request;
    span?.request(request);

    // Counted only for requests whose source is known (the shim, the RPC service) and not exempt.
    const guarded = guard && input.source && guard.applies(input.source) ? { guard, source: input.source } : undefined;
    let found = knownKey?.(input.credential);
    if (found === undefined && guarded) {
      // Before any database work: a blocked source's guesses never reach it (failed-auth-guard.ts).
      const refused = await guarded.guard.blocked(guarded.source);
      if (refused) return refused;
    }
    span?.lookupStarted();
    try {
      found ??= await lookupKey(input.credential);
    } catch (error) {
      span?.lookupEnded(undefined, error);
      onError?.(error);
      return deny("unavailable", MESSAGES.unavailable);
    }
    span?.lookupEnded(found);
    switch (found.status) {
      case "invalid":
        return guarded ? guarded.guard.failed(guarded.source) : deny("invalid_key", MESSAGES.invalid_key);
      case "revoked":
        return deny("revoked", MESSAGES.revoked, identityOf(found.key));
      case "expired":
        return deny("expired", MESSAGES.expired, identityOf(found.key));
      case "ok":
        break;
    }
    const key = found.key;
    let decision: Decision;
    const current = policy();
    span?.policyStarted();
    try {
      decision = decideForSubject(current, key, request, identityOf(key), input.explain === true);
    } catch (error) {
      span?.policyEnded(undefined, error);
      onError?.(error);
      return deny("unavailable", "authorization unavailable: the policy could not be evaluated, request denied", identityOf(key));
    }
    span?.policyEnded(decision);
    if (!decision.allowed) return decision;
    // After the policy (a forbidden route says so whoever owns what), before the rate limit.
    if (ownership && key.org !== PLATFORM_ORG) {
      const resource = current.routes.resourceOf(current.routes.strip(request.path));
      if (resource) {
        let owner: Owner | null | undefined = ownership.cachedOwner?.(resource);
        try {
          if (owner === undefined) owner = await ownership.owner(resource);
        } catch (error) {
          onError?.(error);
          return deny("unavailable", "authorization unavailable: the ownership ledger cannot be reached, request denied", identityOf(key));
        }
        const denied = ownershipDeny(key, request, resource, owner, identityOf(key), input.explain === true);
        if (denied) return denied;
      }
    }
    // Only a request the policy allows costs a point: denied requests never drain a budget.
    // Its own budget and every rate-limited ancestor's (a key and the keys it minted share them).
    // The operator's check (explain) is not traffic: it reads the budgets as they stand, taking nothing.
    const check = input.explain === true;
    if (consumeBudgets && peekBudgets && (key.parentBudgets.length > 0 || (key.rateLimit ?? defaultRateLimit))) {
      let consumed;
      try {
        consumed = await (check ? peekBudgets : consumeBudgets)(key);
      } catch (error) {
        onError?.(error);
        return deny("unavailable", "authorization unavailable: the rate limiter failed, request denied", identityOf(key));
      }
      if (consumed && !consumed.allowed) return { ...deny("rate_limited", MESSAGES.rate_limited, identityOf(key)), rateLimit: consumed.status };
      if (consumed) decision = { ...decision, rateLimit: consumed.status };
    }
    if (!check) onUsed?.(key.id, now());
    return decision;
  }
}

/**
 * The ownership check for a request the policy allowed on an owned path:
 * undefined when the subject may touch the resource, else the not_found deny
 * (the same for another org's resource and a missing one). Shared by
 * Authorize and `policy test`, which passes the owner a case states.
 */
export function ownershipDeny(
  subject: Subject,
  request: Pick<NormalizedRequest, "namespace">,
  resource: ResourceRef & { route?: { where: string; pattern: string } },
  owner: Owner | null,
  identity?: KeyIdentity,
  explain = false,
): Decision | undefined {
  // A key of every namespace asking in one namespace is held to that namespace's resources.
  const namespace = request.namespace === "" ? subject.namespace : request.namespace;
  if (mayAccess({ org: subject.org, namespace }, owner)) return undefined;
  const why = owner ? `owned by org "${owner.org}", namespace "${owner.namespace}"` : "no recorded owner";
  return {
    ...deny("not_found", notFoundMessage(resource.kind, resource.id), identity),
    ...(explain && { explanation: [{ rule: resource.route?.where ?? "", text: resource.route?.pattern ?? "", reasons: [`${resource.kind}/${resource.id}: ${why}; the key is in org "${subject.org}", namespace "${namespace}"`] }] }),
  };
}

/** A request after normalization: what the policy sees. */
export interface NormalizedRequest {
  path: string;
  /** One method, or every known method when none was given. */
  methods: readonly HttpMethod[];
  /** "" = the subject's own namespace. */
  namespace: string;
  /** "" = no org hint. */
  org: string;
}

/** Path, method, org and namespace checked and normalized, or the bad-request deny. */
export function normalizeRequest(input: Pick<AuthorizeInput, "path" | "method" | "namespace" | "org">): NormalizedRequest | Decision {
  const method = normalizeMethod(input.method);
  if (!method.ok) return deny("bad_request", method.error);
  const path = normalizePath(input.path);
  if (!path.ok) return deny("bad_request", path.error);
  if (input.org !== "" && !isValidName(input.org)) return deny("bad_request", "invalid org");
  if (input.namespace !== "" && (!isValidNamespace(input.namespace) || input.namespace === ALL_NAMESPACES)) {
    return deny("bad_request", "invalid namespace");
  }
  // With no method given, the key must be allowed every method on the path.
  return { path: path.value, methods: method.value === "" ? KNOWN_METHODS : [method.value], namespace: input.namespace, org: input.org };
}

/** Who is asking: a key's roles, org and namespace scope. */
export interface Subject {
  roles: readonly string[];
  org: string;
  /** "*" = every namespace. */
  namespace: string;
}

/**
 * The decision for a known, valid subject: org hint, namespace scope, then
 * the policy for every method asked. Shared by Authorize, `policy test` and
 * `policy diff`, so they all decide the same way.
 */
export function decideForSubject(policy: Policy, subject: Subject, request: NormalizedRequest, identity?: KeyIdentity, explain = false): Decision {
  const shownMethod = request.methods[0]!;
  const forbidden = (method: string, explanation?: RuleMiss[]): Decision => ({
    ...deny("forbidden", forbiddenMessage(method, request.path), identity),
    ...(explanation && { explanation }),
  });
  if (request.org !== "" && request.org !== subject.org) {
    return forbidden(shownMethod, explain ? [{ rule: "", text: "", reasons: [`wrong org: the key is in "${subject.org}", the request names "${request.org}"`] }] : undefined);
  }
  const namespace = request.namespace === "" ? subject.namespace : request.namespace;
  if (subject.namespace !== ALL_NAMESPACES && namespace !== subject.namespace) {
    return forbidden(shownMethod, explain ? [{ rule: "", text: "", reasons: [`wrong namespace: the key is scoped to "${subject.namespace}", the request is in "${namespace}"`] }] : undefined);
  }
  let rule = "";
  // A prefix every route is also served under (routes.yaml) is decided without it.
  const path = policy.routes.strip(request.path);
  for (const method of request.methods) {
    const asked = { roles: subject.roles, org: subject.org, namespace, path, method };
    const decision = policy.decide(asked);
    if (!decision.allowed) return forbidden(method, explain ? policy.explain(asked) : undefined);
    rule ||= decision.rule;
  }
  return { allowed: true, reason: "allowed", message: "", matchedRule: rule, ...(identity && { key: identity }) };
}
