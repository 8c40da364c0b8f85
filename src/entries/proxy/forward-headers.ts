import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http";
import type { KeyIdentity } from "../../core/authorize/decision.js";
import { identityHeaders } from "../../http/identity-headers.js";

/**
 * What crosses the proxy in each direction. Hop-by-hop headers (RFC 9110
 * 7.6.1: Connection and every header it names, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade, and the Proxy-* pair) belong to one connection
 * and are never forwarded. The client's credential headers stop here; the
 * identity keygate decided on goes upstream as X-User-ID and X-User-Name
 * (what CubeAPI's audit log reads), never a copy the client wrote (nor an
 * X-Auth-User of its own).
 */
const HOP_BY_HOP = new Set(["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate"]);

/** Request headers the proxy drops and, where it has them, writes itself. */
const REPLACED = new Set([
  "host",
  "expect",
  "authorization",
  "x-api-key",
  "x-user-id",
  "x-user-name",
  "x-auth-user",
  "x-forwarded-for",
  "x-forwarded-proto",
  "x-forwarded-host",
  "forwarded",
]);

/** The header names a Connection header lists (lower case). */
function connectionListed(value: string | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const names = value.split(",").map((name) => name.trim().toLowerCase()).filter((name) => name !== "" && name !== "close" && name !== "keep-alive");
  return names.length > 0 ? new Set(names) : undefined;
}

export interface ForwardedFor {
  /** The TCP peer (the client, or a proxy in front). */
  peer: string | undefined;
  /** Whether the peer is a trusted proxy, whose X-Forwarded-Proto and -Host are kept. */
  trustedPeer: boolean;
  /** The key decided on; undefined in dev mode (then X-User-ID is "dev-mode", as the callback says). */
  key: KeyIdentity | undefined;
  /** Set for the bodies the proxy rewrote or buffered. */
  contentLength?: number;
  /** Headers to set (lower-case names), e.g. accept-encoding: identity for a body the proxy must read. */
  extra?: Record<string, string>;
}

/**
 * The upstream request's headers, as a flat name/value list (duplicates kept
 * in order, as undici takes them). X-Forwarded-For gets the peer appended;
 * X-Forwarded-Proto and -Host are the client's as this proxy saw them, unless
 * a trusted proxy in front already set them.
 */
export function upstreamRequestHeaders(raw: readonly string[], fwd: ForwardedFor): string[] {
  const out: string[] = [];
  let connection: string | undefined;
  let host: string | undefined;
  let xff: string | undefined;
  let xfp: string | undefined;
  let xfh: string | undefined;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (lower === "connection") connection = connection === undefined ? raw[i + 1]! : `${connection}, ${raw[i + 1]!}`;
  }
  const listed = connectionListed(connection);
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    const lower = name.toLowerCase();
    // HTTP/2 pseudo-headers (:path, :authority) are the request line, not headers.
    if (HOP_BY_HOP.has(lower) || listed?.has(lower) || lower.startsWith(":")) continue;
    if (REPLACED.has(lower)) {
      if (lower === "host") host ??= value;
      else if (lower === "x-forwarded-for") xff = xff === undefined ? value : `${xff}, ${value}`;
      else if (lower === "x-forwarded-proto") xfp ??= value;
      else if (lower === "x-forwarded-host") xfh ??= value;
      continue;
    }
    if (lower === "content-length" && fwd.contentLength !== undefined) continue;
    if (fwd.extra?.[lower] !== undefined) continue;
    out.push(name, value);
  }
  if (fwd.contentLength !== undefined) out.push("content-length", String(fwd.contentLength));
  for (const [name, value] of Object.entries(fwd.extra ?? {})) out.push(name, value);
  if (fwd.peer !== undefined) out.push("x-forwarded-for", xff !== undefined && fwd.trustedPeer ? `${xff}, ${fwd.peer}` : fwd.peer);
  out.push("x-forwarded-proto", (fwd.trustedPeer && xfp) || "http");
  const forwardedHost = (fwd.trustedPeer && xfh) || host;
  if (forwardedHost !== undefined) out.push("x-forwarded-host", forwardedHost);
  // As the callback answers Cube (http/identity-headers.ts): the same encoding, no name when it is empty.
  const identity = identityHeaders(fwd.key);
  out.push("x-user-id", identity["x-user-id"]!);
  if (identity["x-user-name"] !== undefined) out.push("x-user-name", identity["x-user-name"]);
  return out;
}

/** The answer's headers for the client: hop-by-hop ones dropped (Node frames the body itself). */
export function clientResponseHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>, drop?: readonly string[]): OutgoingHttpHeaders {
  const listed = connectionListed(typeof headers["connection"] === "string" ? headers["connection"] : undefined);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || HOP_BY_HOP.has(name) || listed?.has(name) || drop?.includes(name)) continue;
    out[name] = value;
  }
  return out;
}

/** The query credential parameters a browser's WebSocket sends (it cannot set headers), as Cube reads them. */
export interface QueryCredentials {
  /** `?api_key=`: read as X-API-Key. */
  apiKey: string | undefined;
  /** `?access_token=`: read as Authorization: Bearer. */
  accessToken: string | undefined;
  /** The query without either parameter, every other parameter byte for byte; "" when none is left. */
  query: string;
}

/**
 * `api_key` and `access_token` taken out of a query string (form-encoded,
 * as CubeAPI's websocket_auth parses it; the first of each counts). The rest
 * is kept exactly as sent, not re-encoded.
 */
export function takeQueryCredentials(query: string): QueryCredentials {
  let apiKey: string | undefined;
  let accessToken: string | undefined;
  // The common case costs three scans: no parameter can be named api_key or access_token, even encoded.
  if (!query.includes("api_key") && !query.includes("access_token") && !query.includes("%")) return { apiKey, accessToken, query };
  const kept: string[] = [];
  for (const part of query.split("&")) {
    const eq = part.indexOf("=");
    const name = formDecode(eq === -1 ? part : part.slice(0, eq));
    const value = eq === -1 ? "" : formDecode(part.slice(eq + 1));
    if (name === "api_key") apiKey ??= value;
    else if (name === "access_token") accessToken ??= value;
    else if (part !== "") kept.push(part);
  }
  return { apiKey, accessToken, query: kept.join("&") };
}

function formDecode(text: string): string {
  const plus = text.replace(/\+/g, " ");
  try {
    return decodeURIComponent(plus);
  } catch {
    return plus;
  }
}
