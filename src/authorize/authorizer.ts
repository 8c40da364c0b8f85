import type { KeyRecord } from "../keys/key-record.js";
import { ALL_NAMESPACES, isValidName, isValidNamespace } from "../keys/key-record.js";
import type { LookupKey } from "../keys/key-lookup.js";
import type { Policy } from "../policy/policy.js";
import { deny, forbiddenMessage, MESSAGES, type AuthorizeInput, type Decision, type KeyIdentity } from "./decision.js";
import { KNOWN_METHODS, normalizeMethod, normalizePath } from "./normalize.js";

export interface AuthorizerDeps {
  lookupKey: LookupKey;
  /** The policy in force now (it may be swapped by a reload). */
  policy: () => Policy;
  now: () => Date;
  /** Called with each allowed key, to keep last_used_at. */
  onUsed?: (keyId: string, at: Date) => void;
  /** Called when a decision could not be made (an outage), before denying. */
  onError?: (error: unknown) => void;
  dev?: boolean;
}

export type Authorize = (input: AuthorizeInput) => Promise<Decision>;

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
 * shape, key state, org, namespace, policy. Any internal error denies.
 */
export function createAuthorizer({ lookupKey, policy, now, onUsed, onError, dev = false }: AuthorizerDeps): Authorize {
  return async function authorize(input) {
    if (dev) return DEV_DECISION;
    if (input.credential === "") return deny("missing_credential", MESSAGES.missing_credential);

    const method = normalizeMethod(input.method);
    if (!method.ok) return deny("bad_request", method.error);
    const path = normalizePath(input.path);
    if (!path.ok) return deny("bad_request", path.error);
    if (input.org !== "" && !isValidName(input.org)) return deny("bad_request", "invalid org");
    if (input.namespace !== "" && (!isValidNamespace(input.namespace) || input.namespace === ALL_NAMESPACES)) {
      return deny("bad_request", "invalid namespace");
    }

    let found;
    try {
      found = await lookupKey(input.credential);
    } catch (error) {
      onError?.(error);
      return deny("unavailable", MESSAGES.unavailable);
    }
    switch (found.status) {
      case "invalid":
        return deny("invalid_key", MESSAGES.invalid_key);
      case "revoked":
        return deny("revoked", MESSAGES.revoked, identityOf(found.key));
      case "expired":
        return deny("expired", MESSAGES.expired, identityOf(found.key));
      case "ok":
        break;
    }
    const key = found.key;
    const identity = identityOf(key);
    // With no method given, the key must be allowed every method on the path.
    const methods = method.value === "" ? KNOWN_METHODS : [method.value];
    const shownMethod = methods[0]!;

    if (input.org !== "" && input.org !== key.org) {
      return deny("forbidden", forbiddenMessage(shownMethod, path.value), identity);
    }
    const namespace = input.namespace === "" ? key.namespace : input.namespace;
    if (key.namespace !== ALL_NAMESPACES && namespace !== key.namespace) {
      return deny("forbidden", forbiddenMessage(shownMethod, path.value), identity);
    }

    let rule = "";
    try {
      const current = policy();
      for (const m of methods) {
        const decision = current.decide({ roles: key.roles, org: key.org, namespace, path: path.value, method: m });
        if (!decision.allowed) return deny("forbidden", forbiddenMessage(m, path.value), identity);
        rule ||= decision.rule;
      }
    } catch (error) {
      onError?.(error);
      return deny("unavailable", "authorization unavailable: the policy could not be evaluated, request denied", identity);
    }
    onUsed?.(key.id, now());
    return { allowed: true, reason: "allowed", message: "", key: identity, matchedRule: rule };
  };
}
