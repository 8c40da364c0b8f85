import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { ClientIpRules } from "../config/config.js";
import { canonicalIp } from "../core/request/address.js";
import { requestSource } from "./client-ip.js";

/** The client's address of an RPC, for the failed-auth guard (undefined: a Unix socket peer). */
export const kSource = createContextKey<string | undefined>(undefined, { description: "client address" });

/**
 * The TCP peer of an RPC itself (undefined: a Unix socket peer): Envoy's
 * ext_authz calls carry the client's address in the message, believed only
 * from a trusted peer.
 */
export const kPeer = createContextKey<string | undefined>(undefined, { description: "peer address" });

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
