import { isIP } from "node:net";
import type { AuthorizeInput } from "../../core/authorize/decision.js";
import type { ClientIpRules, CredentialSource } from "../../config/config.js";
import { canonicalIp } from "../../core/request/address.js";
import { isTrusted } from "../../http/client-ip.js";
import { credentialFromHeaders } from "../../http/credentials.js";
import type { AttributeContext_HttpRequest } from "../../../gen/envoy/service/auth/v3/attribute_context_pb.js";
import type { CheckRequest } from "../../../gen/envoy/service/auth/v3/external_auth_pb.js";

/**
 * An Envoy CheckRequest as keygate's question: method and path from the
 * HTTP attributes, the credential from the request's headers, and the
 * client's address for the failed-auth guard.
 */

export interface CheckRequestRules {
  credentialPriority: readonly CredentialSource[];
  /** Whose word is taken for the client's address: only a trusted peer's (Envoy's) source attribute is believed. */
  clientIp: ClientIpRules;
}

/**
 * Optional namespace and org: an operator sets them per route in Envoy
 * (`check_settings.context_extensions`), which a client cannot touch; without
 * them, the X-Request-Namespace / X-Request-Org request headers (as for the
 * Cube shim) are read.
 */
export const CONTEXT_NAMESPACE = "namespace";
export const CONTEXT_ORG = "org";

/** `peer`: the TCP peer of the Check call (Envoy), undefined for a Unix socket. */
export function checkRequestInput(request: CheckRequest, rules: CheckRequestRules, peer: string | undefined): AuthorizeInput {
  const attributes = request.attributes;
  const http = attributes?.request?.http;
  const header = headerReader(http);
  const context = attributes?.contextExtensions ?? {};
  const source = clientAddress(rules.clientIp, peer, sourceAttribute(request));
  return {
    entry: "ext_authz",
    ...(source !== undefined && { source }),
    credential: credentialFromHeaders(header, rules.credentialPriority),
    path: pathOnly(http?.path ?? ""),
    method: http?.method ?? "",
    namespace: context[CONTEXT_NAMESPACE] ?? header("x-request-namespace") ?? "",
    org: context[CONTEXT_ORG] ?? header("x-request-org") ?? "",
  };
}

/**
 * The path Envoy sends is the raw request target: the query string (and a
 * fragment, which clients should not send) are cut off before matching;
 * what remains is normalized, or denied, by the authorizer.
 */
export function pathOnly(target: string): string {
  for (let i = 0; i < target.length; i++) {
    const c = target.charCodeAt(i);
    if (c === 0x3f /* ? */ || c === 0x23 /* # */) return target.slice(0, i);
  }
  return target;
}

/**
 * Header values by lower-case name, from the `headers` map (Envoy merges a
 * repeated header into one value) and from `header_map` (sent instead when
 * the filter sets `encode_raw_headers`, one entry per occurrence). A name seen
 * more than once is joined with ", " as Fetch does, so a duplicated
 * credential header is never a well-formed key.
 */
export function headerReader(http: AttributeContext_HttpRequest | undefined): (name: string) => string | undefined {
  const values = new Map<string, string>();
  const add = (name: string, value: string) => {
    const key = name.toLowerCase();
    const seen = values.get(key);
    values.set(key, seen === undefined ? value : `${seen}, ${value}`);
  };
  if (http) {
    for (const [name, value] of Object.entries(http.headers)) add(name, value);
    const decoder = new TextDecoder();
    for (const entry of http.headerMap?.headers ?? []) add(entry.key, entry.rawValue.length > 0 ? decoder.decode(entry.rawValue) : entry.value);
  }
  return (name) => values.get(name);
}

/** The downstream client's IP as Envoy saw it (attributes.source.address.socket_address.address). */
function sourceAttribute(request: CheckRequest): string | undefined {
  const address = request.attributes?.source?.address?.address;
  return address?.case === "socketAddress" ? address.value.address : undefined;
}

/**
 * Envoy is the caller of every Check: the client's address is its source
 * attribute, but only when Envoy is a trusted proxy (KEYGATE_TRUSTED_PROXIES);
 * from any other peer the attribute could be anything, so the peer itself
 * counts, as for a direct caller.
 */
export function clientAddress(rules: ClientIpRules, peer: string | undefined, attribute: string | undefined): string | undefined {
  if (peer === undefined || peer === "") return undefined;
  const self = canonicalIp(peer);
  if (attribute === undefined || !isTrusted(rules, self)) return self;
  const claimed = canonicalIp(attribute);
  return isIP(claimed) !== 0 ? claimed : self;
}
