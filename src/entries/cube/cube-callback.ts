import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { Authorize } from "../../core/authorize/authorizer.js";
import { httpStatusFor, type Decision } from "../../core/authorize/decision.js";
import type { CredentialSource } from "../../config/config.js";
import { clientIp, PEER_ONLY, type ClientIpRules } from "../../http/client-ip.js";
import { urlPath } from "../../http/listener.js";
import { requestIdOfResponse } from "../../http/request-id.js";
import { credentialFromHeaders } from "../../http/credentials.js";
import { utf8HeaderValue } from "../../http/header-reader.js";

/**
 * The Cube API Server auth callback: POST, no body, one credential header,
 * X-Request-Path and (in newer releases) X-Request-Method. Only an exact 200
 * allows. Allow answers 200 with X-Auth-User (the key id, which Cube logs);
 * deny answers 401/403/429/503 with {"code": STATUS, "message": "..."}.
 */

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

export interface CubeCallbackDeps {
  authorize: Authorize;
  credentialPriority: readonly CredentialSource[];
  /** How the client's address is found; unset = the TCP peer. */
  clientIp?: ClientIpRules;
  /** Unexpected failures (a bug: the core turns outages into decisions), with the request they broke. */
  onError?: (error: unknown, req: Request) => void;
}

/**
 * Every value of a header (name in lower case), joined as Fetch does; so
 * duplicates show as a malformed value. Read from the raw header list: Node
 * builds `headers` and `headersDistinct` lazily, and the shim needs only a
 * handful of names, so building neither object is the cheaper way.
 */
export function headerReader(req: Request): (name: string) => string | undefined {
  const raw = req.rawHeaders;
  return (name) => {
    let value: string | undefined;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const key = raw[i]!;
      if (key.length !== name.length || key.toLowerCase() !== name) continue;
      value = value === undefined ? raw[i + 1]! : `${value}, ${raw[i + 1]!}`;
    }
    return value;
  };
}


export function createCubeCallbackHandler({ authorize, credentialPriority, clientIp: rules = PEER_ONLY, onError }: CubeCallbackDeps) {
  return async function handleCubeCallback(req: Request, res: Response): Promise<void> {
    // Cube sends no body; never wait for or buffer one.
    req.resume();
    if (req.method !== "POST" && req.method !== "GET") {
      writeJson(res, 405, { code: 405, message: "use POST (the Cube auth callback)" }, { allow: "POST, GET" });
      return;
    }
    const header = headerReader(req);
    const source = clientIp(rules, req.socket?.remoteAddress, header);
    let decision: Decision;
    try {
      decision = await authorize({
        entry: "shim",
        ...(source !== undefined && { source }),
        credential: credentialFromHeaders(header, credentialPriority),
        path: utf8HeaderValue(header("x-request-path")) ?? "",
        method: header("x-request-method") ?? "",
        namespace: header("x-request-namespace") ?? "",
        org: header("x-request-org") ?? "",
      });
    } catch (error) {
      onError?.(error, req);
      decision = { allowed: false, reason: "unavailable", message: "authorization unavailable, request denied", matchedRule: "" };
    }
    writeDecision(res, decision);
  };
}

/** True when a request URL (path and query) addresses the callback path; the query is ignored. */
export function isCallbackUrl(url: string | undefined, shimPath: string): boolean {
  return urlPath(url) === shimPath;
}

const ALLOW_BODY = "{}";

/**
 * RateLimit-Limit / -Remaining / -Reset (seconds), as the IETF RateLimit
 * header fields draft and most gateways spell them, for any limited key.
 */
export function rateLimitHeaders(decision: Decision): Record<string, string> {
  const limit = decision.rateLimit;
  if (!limit) return {};
  return { "ratelimit-limit": String(limit.limit), "ratelimit-remaining": String(limit.remaining), "ratelimit-reset": String(limit.resetSeconds) };
}

export function writeDecision(res: Response, decision: Decision): void {
  if (decision.allowed) {
    writeRaw(res, 200, ALLOW_BODY, { "x-auth-user": decision.key?.id ?? "dev-mode", ...rateLimitHeaders(decision) });
    return;
  }
  const status = httpStatusFor(decision.reason);
  const headers = status === 429 ? { "retry-after": String(Math.max(1, decision.rateLimit?.resetSeconds ?? 1)), ...rateLimitHeaders(decision) } : {};
  writeJson(res, status, { code: status, message: decision.message }, headers);
}

function writeJson(res: Response, status: number, body: unknown, headers: Record<string, string>): void {
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
