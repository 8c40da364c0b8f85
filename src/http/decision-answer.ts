import type { ServerResponse } from "node:http";
import type { Http2ServerResponse } from "node:http2";
import { httpStatusFor, type Decision } from "../core/authorize/decision.js";
import { identityHeaders } from "./identity-headers.js";
import { requestIdOfResponse } from "./request-id.js";

/**
 * A decision as an HTTP answer, shared by the Cube callback, the gateway
 * endpoints and (as headers) Envoy's ext_authz. Allow: 200 with X-Auth-User
 * and X-User-ID (the key's id), X-User-Name (its name; identity-headers.ts)
 * and an empty JSON object. Deny: the reason's status (401/403/429/503) with
 * {"code": STATUS, "message": "..."}; a 429 says when to retry.
 */

type Response = ServerResponse | Http2ServerResponse;

/**
 * RateLimit-Limit / -Remaining / -Reset (seconds), as the IETF RateLimit
 * header fields draft and most gateways spell them, for any limited key.
 */
export function rateLimitHeaders(decision: Decision): Record<string, string> {
  const limit = decision.rateLimit;
  if (!limit) return {};
  return { "ratelimit-limit": String(limit.limit), "ratelimit-remaining": String(limit.remaining), "ratelimit-reset": String(limit.resetSeconds) };
}

/** The headers of a deny with this status: Retry-After (whole seconds, at least 1) and RateLimit-* on a 429, none otherwise. */
export function denyHeaders(status: number, decision: Decision): Record<string, string> {
  if (status !== 429) return {};
  return { "retry-after": String(Math.max(1, decision.rateLimit?.resetSeconds ?? 1)), ...rateLimitHeaders(decision) };
}

const ALLOW_BODY = "{}";

export function writeDecision(res: Response, decision: Decision): void {
  if (decision.allowed) {
    writeRaw(res, 200, ALLOW_BODY, { ...identityHeaders(decision.key), ...rateLimitHeaders(decision) });
    return;
  }
  const status = httpStatusFor(decision.reason);
  writeJson(res, status, { code: status, message: decision.message }, denyHeaders(status, decision));
}

export function writeJson(res: Response, status: number, body: unknown, headers: Record<string, string>): void {
  writeRaw(res, status, JSON.stringify(body), headers);
}

function writeRaw(res: Response, status: number, body: string, headers: Record<string, string>): void {
  if (res.headersSent) return;
  const out: Record<string, string> = { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), "cache-control": "no-store", ...headers };
  const requestId = requestIdOfResponse(res);
  if (requestId !== undefined) out["x-request-id"] = requestId;
  (res as ServerResponse).writeHead(status, out);
  (res as ServerResponse).end(body);
}
