import { BlockList, isIP } from "node:net";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { ClientIpRules } from "../config/config.js";
import { canonicalIp, inList } from "../core/request/address.js";
import { headerReader } from "./header-reader.js";

/**
 * Who is asking, for the failed-auth guard: the TCP peer, or — only when
 * the peer is a trusted proxy — the address a configured header names. A
 * header from any other peer is ignored, so a client cannot pick its own
 * address. X-Forwarded-For is read right to left: the right-most entry is
 * the one the trusted proxy added; entries further left are client-written.
 */

/** No client-IP header, no trusted proxy: the source is always the TCP peer. */
export const PEER_ONLY: ClientIpRules = { header: undefined, trusted: new BlockList() };

export function isTrusted(rules: ClientIpRules, peer: string): boolean {
  return inList(rules.trusted, canonicalIp(peer));
}

/**
 * The client's address, or undefined when nothing usable is known (a Unix
 * socket peer). A trusted peer whose header is missing or malformed is
 * the source itself: a broken proxy must not make every client anonymous.
 */
export function clientIp(rules: ClientIpRules, peer: string | undefined, header: (name: string) => string | undefined): string | undefined {
  if (peer === undefined || peer === "") return undefined;
  const self = canonicalIp(peer);
  if (!rules.header || !isTrusted(rules, self)) return self;
  const value = header(rules.header);
  if (value === undefined) return self;
  // Right-most entry: the one our trusted proxy appended (or, for X-Real-IP, the only one).
  const parts = value.split(",");
  const candidate = canonicalIp(parts[parts.length - 1] ?? "");
  return isIP(candidate) !== 0 ? candidate : self;
}

/** The client's address of a request: the peer, or a trusted proxy's client-IP header. */
export function requestSource(rules: ClientIpRules, req: IncomingMessage | Http2ServerRequest): string | undefined {
  return clientIp(rules, req.socket?.remoteAddress, headerReader(req));
}
