import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import { canonicalIp, clientIp, type ClientIpRules } from "./client-ip.js";
import { headerReader } from "../entries/cube/cube-callback.js";

/** The client's address of an RPC, for the failed-auth guard (undefined: a Unix socket peer). */
export const kSource = createContextKey<string | undefined>(undefined, { description: "client address" });

/**
 * The TCP peer of an RPC itself (undefined: a Unix socket peer): Envoy's
 * ext_authz calls carry the client's address in the message, believed only
 * from a trusted peer.
 */
export const kPeer = createContextKey<string | undefined>(undefined, { description: "peer address" });

/** The client's address of a request: the peer, or a trusted proxy's client-IP header. */
export function requestSource(rules: ClientIpRules, req: IncomingMessage | Http2ServerRequest): string | undefined {
  return clientIp(rules, req.socket?.remoteAddress, headerReader(req));
}

/** connectNodeAdapter's `contextValues`: the request's source under kSource. */
export function sourceContextValues(rules: ClientIpRules) {
  return (req: IncomingMessage | Http2ServerRequest): ContextValues => {
    const values = createContextValues();
    const source = requestSource(rules, req);
    if (source !== undefined) values.set(kSource, source);
    const peer = req.socket?.remoteAddress;
    if (peer) values.set(kPeer, canonicalIp(peer));
    return values;
  };
}
