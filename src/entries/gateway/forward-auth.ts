import type { Authorize } from "../../core/authorize/authorizer.js";
import { deny, httpStatusFor, type Decision } from "../../core/authorize/decision.js";
import type { ClientIpRules, CredentialSource } from "../../config/config.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";
import { clientIp, PEER_ONLY } from "../../http/client-ip.js";
import type { Handler } from "../../http/listener.js";
import { credentialFromHeaders } from "../../http/credentials.js";
import { writeDecision } from "../../http/decision-answer.js";
import { headerReader, utf8HeaderValue } from "../../http/header-reader.js";
import { NGINX_AUTH_PATH, TRAEFIK_AUTH_PATH } from "../../config/public-paths.js";

/**
 * Gateway sub-requests: nginx `auth_request` and Traefik `forwardAuth` ask,
 * before passing a client's request on, whether its credential may do that
 * method on that URI. Both forward the client's headers (so the key arrives
 * as the client sent it) and add what they are about to serve:
 *
 * - nginx: `X-Original-URI` ($request_uri: raw path and query) and
 *   `X-Original-Method`, set by the `proxy_set_header` lines of its config;
 * - Traefik: `X-Forwarded-Uri` (path and query) and `X-Forwarded-Method`,
 *   always set by Traefik itself (unless `trustForwardHeader`).
 *
 * The answer is one of 200, 401, 403 and 429 (nginx passes 401 and 403 on
 * and turns anything else into a 500 of its own; its documented config maps
 * the 429 back). Every deny that is not about the credential (401) or the
 * budget (429) is a 403: a malformed request, and an outage too, with
 * X-Keygate-Reason saying which. Only a 2xx lets either gateway pass the
 * request on, so every deny, whatever its status, keeps it from the upstream.
 */

/** Where a gateway puts the request it is about to serve. */
export interface GatewayHeaders {
  /** For messages and logs: "nginx", "traefik". */
  gateway: string;
  /** Path and query as the client sent them, e.g. "X-Original-URI". */
  uri: string;
  method: string;
}

export const NGINX_HEADERS: GatewayHeaders = { gateway: "nginx", uri: "X-Original-URI", method: "X-Original-Method" };
export const TRAEFIK_HEADERS: GatewayHeaders = { gateway: "traefik", uri: "X-Forwarded-Uri", method: "X-Forwarded-Method" };

/** The statuses a gateway understands; a decision that would be anything else is sent as a 403. */
const GATEWAY_STATUSES = new Set([200, 401, 403, 429]);

export interface ForwardAuthDeps {
  authorize: Authorize;
  credentialPriority: readonly CredentialSource[];
  /** How the client's address is found (X-Forwarded-For from a trusted proxy); unset = the TCP peer. */
  clientIp?: ClientIpRules;
  /** Unexpected failures (a bug: the core turns outages into decisions), with the request they broke. */
  onError?: (error: unknown, req: Parameters<Handler>[0]) => void;
  /** A sub-request without the URI or method header: the gateway's config lacks a line. */
  onMisconfigured?: (gateway: string, header: string) => void;
}


export function createForwardAuthHandler(headers: GatewayHeaders, { authorize, credentialPriority, clientIp: rules = PEER_ONLY, onError, onMisconfigured }: ForwardAuthDeps): Handler {
  const uriHeader = headers.uri.toLowerCase();
  const methodHeader = headers.method.toLowerCase();
  return (req, res) => {
    // Whatever the method (nginx sends GET, some Traefik versions the client's), a body is never read.
    req.resume();
    const header = headerReader(req);
    const uri = utf8HeaderValue(header(uriHeader));
    const method = header(methodHeader);
    // A gateway always knows the method; an empty one would mean "every method" to the core.
    if (uri === undefined || method === undefined || method === "") {
      const missing = uri === undefined ? headers.uri : headers.method;
      onMisconfigured?.(headers.gateway, missing);
      answer(res, deny("bad_request", `missing ${missing} header (the gateway's config sets it)`));
      return;
    }
    const source = clientIp(rules, req.socket?.remoteAddress, header);
    // The raw URI goes to the core as the path: it drops the query and applies every path rule,
    // and a URI that is not origin-form ("http://…", "*", "") fails them.
    authorize({
      entry: "forward_auth",
      ...(source !== undefined && { source }),
      credential: credentialFromHeaders(header, credentialPriority),
      path: uri,
      method,
      namespace: header("x-request-namespace") ?? "",
      org: header("x-request-org") ?? "",
    })
      .catch((error: unknown): Decision => {
        onError?.(error, req);
        return deny("unavailable", "authorization unavailable, request denied");
      })
      .then((decision) => answer(res, decision))
      .catch((error: unknown) => onError?.(error, req));
  };
}

/**
 * The shim's writer (X-Auth-User, X-User-ID and X-User-Name on allow,
 * RateLimit-* and Retry-After on 429, a small JSON body Traefik passes to the
 * client on deny, which nginx drops), with two additions: X-Keygate-Reason, so a gateway can log or
 * route on the reason (an outage is a 403 with reason "unavailable"), and
 * WWW-Authenticate on 401, which nginx copies to its client.
 */
function answer(res: Parameters<Handler>[1], decision: Decision): void {
  if (res.headersSent) return;
  const status = httpStatusFor(decision.reason);
  res.setHeader("x-keygate-reason", decision.reason);
  if (status === 401) res.setHeader("www-authenticate", 'Bearer realm="keygate"');
  writeDecision(res, decision.allowed || GATEWAY_STATUSES.has(status) ? decision : { ...decision, reason: "forbidden" });
}

/** The endpoints `serve` mounts next to the Cube callback: exact path → handler. */
export function forwardAuthEndpoints(
  config: { credentialPriority: readonly CredentialSource[]; clientIp: ClientIpRules },
  authorize: Authorize,
  log: Pick<Logger, "warn" | "error">,
): [string, Handler][] {
  const warned = new Set<string>();
  const deps: ForwardAuthDeps = {
    authorize,
    credentialPriority: config.credentialPriority,
    clientIp: config.clientIp,
    onError: (error) => log.error("forward auth error", errorFields(error)),
    // Once per header: a gateway missing a config line would otherwise log every request.
    onMisconfigured: (gateway, header) => {
      if (warned.has(`${gateway} ${header}`)) return;
      warned.add(`${gateway} ${header}`);
      log.warn("forward auth: request without a required header, denied; check the gateway's config", { gateway, header });
    },
  };
  return [
    [NGINX_AUTH_PATH, createForwardAuthHandler(NGINX_HEADERS, deps)],
    [TRAEFIK_AUTH_PATH, createForwardAuthHandler(TRAEFIK_HEADERS, deps)],
  ];
}
