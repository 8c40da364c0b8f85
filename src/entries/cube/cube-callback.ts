import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import type { Authorize } from "../../core/authorize/authorizer.js";
import type { Decision } from "../../core/authorize/decision.js";
import type { ClientIpRules, CredentialSource } from "../../config/config.js";
import { clientIp, PEER_ONLY } from "../../http/client-ip.js";
import { urlPath } from "../../http/listener.js";
import { credentialFromHeaders } from "../../http/credentials.js";
import { writeDecision, writeJson } from "../../http/decision-answer.js";
import { headerReader, utf8HeaderValue } from "../../http/header-reader.js";

/**
 * The Cube API Server auth callback: POST, no body, one credential header,
 * X-Request-Path and (in newer releases) X-Request-Method. Only an exact 200
 * allows. Allow answers 200 with X-User-ID and X-User-Name (the key's id and
 * name, which Cube writes into its audit log) and X-Auth-User (the id);
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
