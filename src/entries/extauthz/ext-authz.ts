import { BlockList } from "node:net";
import type { ServiceImpl } from "@connectrpc/connect";
import type { Authorize } from "../../core/authorize/authorizer.js";
import type { Decision } from "../../core/authorize/decision.js";
import type { ClientIpRules, CredentialSource } from "../../config/config.js";
import { kPeer } from "../../http/rpc-context.js";
import { Authorization } from "../../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { checkRequestInput } from "./check-request.js";
import { checkResponseFor } from "./check-response.js";

/**
 * Envoy's external authorization service (envoy.service.auth.v3.Authorization/Check),
 * for the ext_authz HTTP filter with a gRPC service: Envoy asks once per
 * request, keygate decides as for the Cube callback (entry "ext_authz" in the
 * decision log) and answers allow or deny with the HTTP response to send.
 * A deny, an outage included, is an answer, never an RPC error: an error
 * would leave the outcome to the filter's failure_mode_allow.
 */

export interface ExtAuthzDeps {
  authorize: Authorize;
  credentialPriority: readonly CredentialSource[];
  /** Which peers' source attribute is believed (KEYGATE_TRUSTED_PROXIES); unset: none, the peer counts. */
  clientIp?: ClientIpRules;
  /** Unexpected failures (never a deny or an outage, which are answers). */
  onError?: (error: unknown) => void;
}

const NO_PROXIES: ClientIpRules = { header: undefined, trusted: new BlockList() };

export function createExtAuthzService({ authorize, credentialPriority, clientIp = NO_PROXIES, onError }: ExtAuthzDeps): ServiceImpl<typeof Authorization> {
  const rules = { credentialPriority, clientIp };
  return {
    async check(request, context) {
      let decision: Decision;
      try {
        decision = await authorize(checkRequestInput(request, rules, context.values.get(kPeer)));
      } catch (error) {
        onError?.(error);
        decision = { allowed: false, reason: "unavailable", message: "authorization unavailable, request denied", matchedRule: "" };
      }
      return checkResponseFor(decision);
    },
  };
}
