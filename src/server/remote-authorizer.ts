import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Authorize } from "../core/authorize/authorizer.js";
import { deny } from "../core/authorize/decision.js";
import { decisionFromProto } from "../entries/rpc/convert.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";

/** Cube waits up to 10 s; answer well before that. */
const UPSTREAM_TIMEOUT_MS = 5_000;

/**
 * Authorize over gRPC against a remote keygate, for `keygate shim`. Any
 * failure to get an answer is a deny with the "unavailable" reason.
 */
export function createRemoteAuthorizer(upstream: string, onError: (error: unknown) => void): Authorize {
  const client = createClient(AuthorizeService, createGrpcTransport({ baseUrl: upstream }));
  return async (input) => {
    try {
      // The client's address, for the server's failed-auth guard: honoured only when the server
      // trusts this shim (KEYGATE_TRUSTED_PROXIES) and reads X-Forwarded-For (--trusted-proxy-header).
      const headers = input.source ? { "x-forwarded-for": input.source } : undefined;
      return decisionFromProto(await client.authorize(input, { timeoutMs: UPSTREAM_TIMEOUT_MS, ...(headers && { headers }) }));
    } catch (error) {
      onError(error);
      const reason = error instanceof ConnectError && error.code === Code.Unavailable ? error.rawMessage : "keygate upstream unreachable";
      return deny("unavailable", `authorization unavailable: ${reason}, request denied`);
    }
  };
}
