import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { AuthorizeInput, Decision, KeyIdentity, Reason as CoreReason } from "../../core/authorize/decision.js";
import type { KeyRecord } from "../../core/keys/key-record.js";
import type { RuleMiss as CoreRuleMiss } from "../../core/policy/policy-request.js";
import { formatRateLimit } from "../../core/ratelimit/rate-limit.js";
import {
  AuthorizeResponseSchema,
  KeyIdentitySchema,
  RateLimitStatusSchema,
  Reason,
  RuleMissSchema,
  type AuthorizeRequest,
  type AuthorizeResponse,
  type RuleMiss,
} from "../../../gen/keygate/v1/authorize_pb.js";
import { ApiKeySchema, DailyUsageSchema, type ApiKey } from "../../../gen/keygate/v1/key_pb.js";
import { ResourceSchema, type Resource } from "../../../gen/keygate/v1/resource_pb.js";
import type { OwnedResource } from "../../core/resources/resource.js";

/** Core values ↔ protobuf messages, at the edge only (the core never imports gen/). */

const REASON_TO_PROTO: Record<CoreReason, Reason> = {
  allowed: Reason.ALLOWED,
  missing_credential: Reason.MISSING_CREDENTIAL,
  invalid_key: Reason.INVALID_KEY,
  revoked: Reason.REVOKED,
  expired: Reason.EXPIRED,
  forbidden: Reason.FORBIDDEN,
  rate_limited: Reason.RATE_LIMITED,
  bad_request: Reason.BAD_REQUEST,
  unavailable: Reason.UNAVAILABLE,
  not_found: Reason.NOT_FOUND,
};

const REASON_FROM_PROTO = new Map<Reason, CoreReason>(Object.entries(REASON_TO_PROTO).map(([core, proto]) => [proto, core as CoreReason]));

export function reasonToProto(reason: CoreReason): Reason {
  return REASON_TO_PROTO[reason];
}

export function reasonFromProto(reason: Reason): CoreReason | undefined {
  return REASON_FROM_PROTO.get(reason);
}

export function authorizeInputFromProto(request: AuthorizeRequest): AuthorizeInput {
  return {
    credential: request.credential,
    path: request.path,
    method: request.method,
    namespace: request.namespace,
    org: request.org,
    ...(request.explain && { explain: true }),
  };
}

export function decisionToProto(decision: Decision): AuthorizeResponse {
  return create(AuthorizeResponseSchema, {
    allowed: decision.allowed,
    reason: reasonToProto(decision.reason),
    message: decision.message,
    matchedRule: decision.matchedRule,
    ...(decision.key && { key: create(KeyIdentitySchema, decision.key) }),
    ...(decision.rateLimit && { rateLimit: create(RateLimitStatusSchema, decision.rateLimit) }),
    explanation: decision.allowed ? [] : (decision.explanation ?? []).map(ruleMissToProto),
  });
}

export function ruleMissToProto(miss: CoreRuleMiss): RuleMiss {
  return create(RuleMissSchema, { rule: miss.rule, text: miss.text, reasons: miss.reasons });
}

export function ruleMissFromProto(miss: RuleMiss): CoreRuleMiss {
  return { rule: miss.rule, text: miss.text, reasons: [...miss.reasons] };
}

export function decisionFromProto(response: AuthorizeResponse): Decision {
  const reason = reasonFromProto(response.reason) ?? "unavailable";
  const key: KeyIdentity | undefined = response.key && {
    id: response.key.id,
    name: response.key.name,
    org: response.key.org,
    namespace: response.key.namespace,
    roles: [...response.key.roles],
  };
  const fields = {
    message: response.message,
    matchedRule: response.matchedRule,
    ...(key && { key }),
    ...(response.rateLimit && {
      rateLimit: { limit: response.rateLimit.limit, remaining: response.rateLimit.remaining, resetSeconds: response.rateLimit.resetSeconds },
    }),
  };
  // Fail closed: only an explicit allow with the allowed reason allows.
  if (response.allowed && reason === "allowed") return { allowed: true, reason, ...fields };
  return {
    allowed: false,
    reason: reason === "allowed" ? "unavailable" : reason,
    ...fields,
    ...(response.explanation.length > 0 && { explanation: response.explanation.map(ruleMissFromProto) }),
  };
}

export function keyToProto(key: KeyRecord): ApiKey {
  return create(ApiKeySchema, {
    id: key.id,
    name: key.name,
    org: key.org,
    namespace: key.namespace,
    roles: key.roles,
    enabled: key.enabled,
    displayPrefix: key.displayPrefix,
    createdAt: timestampFromDate(key.createdAt),
    updatedAt: timestampFromDate(key.updatedAt),
    ...(key.expiresAt && { expiresAt: timestampFromDate(key.expiresAt) }),
    ...(key.revokedAt && { revokedAt: timestampFromDate(key.revokedAt) }),
    ...(key.lastUsedAt && { lastUsedAt: timestampFromDate(key.lastUsedAt) }),
    rotatedFrom: key.rotatedFrom ?? "",
    createdBy: key.createdBy,
    rateLimit: key.rateLimit ? formatRateLimit(key.rateLimit) : "",
    ...(key.usage && {
      usage: key.usage.days.map((d) => create(DailyUsageSchema, { day: d.day, allowed: BigInt(d.allowed), denied: BigInt(d.denied) })),
      requestsAllowed7d: BigInt(key.usage.allowed7d),
      requestsDenied7d: BigInt(key.usage.denied7d),
    }),
  });
}

export function resourceToProto(resource: OwnedResource): Resource {
  return create(ResourceSchema, {
    kind: resource.kind,
    id: resource.id,
    org: resource.org,
    namespace: resource.namespace,
    keyId: resource.keyId,
    createdAt: timestampFromDate(resource.createdAt),
    ...(resource.releasedAt && { releasedAt: timestampFromDate(resource.releasedAt) }),
  });
}
