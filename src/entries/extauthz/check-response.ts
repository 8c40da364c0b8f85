import { create, type JsonObject } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { httpStatusFor, type Decision } from "../../core/authorize/decision.js";
import { denyHeaders, rateLimitHeaders } from "../../http/decision-answer.js";
import { HeaderValueOption_HeaderAppendAction, HeaderValueOptionSchema, type HeaderValueOption } from "../../../gen/envoy/config/core/v3/base_pb.js";
import { CheckResponseSchema, type CheckResponse } from "../../../gen/envoy/service/auth/v3/external_auth_pb.js";
import type { StatusCode } from "../../../gen/envoy/type/v3/http_status_pb.js";

/**
 * A decision as Envoy's ext_authz filter takes it. Allow: status OK, and the
 * request goes upstream with X-Auth-User set to the key's id (replacing any
 * the client sent). Deny: a non-OK status and the HTTP response Envoy sends
 * back instead — the status the Cube shim would answer (401, 403, 404, 429, 503)
 * and the same JSON body, {"code": STATUS, "message": "..."}. An outage is a
 * 503 deny: keygate fails closed whatever the filter's failure_mode_allow.
 */
export function checkResponseFor(decision: Decision): CheckResponse {
  if (decision.allowed) {
    return create(CheckResponseSchema, {
      status: { code: 0 }, // OK
      httpResponse: {
        case: "okResponse",
        value: {
          headers: [header("x-auth-user", decision.key?.id ?? "dev-mode")],
          responseHeadersToAdd: headerList(rateLimitHeaders(decision)),
        },
      },
      dynamicMetadata: allowMetadata(decision),
    });
  }
  const status = httpStatusFor(decision.reason);
  const body = JSON.stringify({ code: status, message: decision.message });
  const extra = denyHeaders(status, decision);
  return create(CheckResponseSchema, {
    status: { code: grpcCodeFor(status), message: decision.message },
    httpResponse: {
      case: "deniedResponse",
      value: {
        status: { code: status as StatusCode },
        headers: headerList({ "content-type": "application/json", "cache-control": "no-store", ...extra }),
        body,
      },
    },
  });
}

/** The google.rpc.Status code of a deny; Envoy only tells OK from not OK, the HTTP status is what the client sees. */
function grpcCodeFor(httpStatus: number): number {
  switch (httpStatus) {
    case 401:
      return Code.Unauthenticated;
    case 404:
      return Code.NotFound;
    case 429:
      return Code.ResourceExhausted;
    case 503:
      return Code.Unavailable;
    default:
      return Code.PermissionDenied;
  }
}

/**
 * Set, never appended: X-Auth-User must replace whatever the client sent.
 * append_action alone says so; the deprecated `append` stays unset (Envoy
 * rejects both set at once, and for ext_authz an unset `append` means false).
 */
function header(key: string, value: string): HeaderValueOption {
  return create(HeaderValueOptionSchema, { header: { key, value }, appendAction: HeaderValueOption_HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD });
}

function headerList(headers: Record<string, string>): HeaderValueOption[] {
  return Object.entries(headers).map(([key, value]) => header(key, value));
}

/**
 * Who was let in, for Envoy's access log and later filters
 * (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:key_id)%`): ids and
 * names only, never the credential.
 */
function allowMetadata(decision: Decision): JsonObject | undefined {
  if (!decision.key) return undefined;
  return { key_id: decision.key.id, org: decision.key.org, matched_rule: decision.matchedRule };
}
