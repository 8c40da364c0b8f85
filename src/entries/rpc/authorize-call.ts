import { Code, ConnectError } from "@connectrpc/connect";
import type { Authorize } from "../../core/authorize/authorizer.js";
import type { Decision } from "../../core/authorize/decision.js";
import type { AuthorizeRequest, AuthorizeResponse } from "../../../gen/keygate/v1/authorize_pb.js";
import { authorizeInputFromProto, decisionToProto } from "./convert.js";

/** The core decision for one Authorize request message from a caller's address. */
export type DecideRequest = (request: AuthorizeRequest, source: string | undefined) => Promise<Decision>;

/** One unary Authorize call: the response, or UNAVAILABLE thrown. */
export type AuthorizeCall = (request: AuthorizeRequest, source: string | undefined) => Promise<AuthorizeResponse>;

/**
 * The RPC's request semantics over the core authorizer, shared by unary
 * Authorize (through the adapter or answered directly) and AuthorizeStream.
 * `explain` is honoured only for the local operator (control socket, CLI):
 * an explanation shows policy rule text and scans every rule, so on the
 * public port any key holder could read the policy or make each call cost a
 * full scan.
 */
export function createRequestDecider(authorize: Authorize, allowExplain: boolean): DecideRequest {
  return (request, source) => {
    const input = authorizeInputFromProto(request);
    if (!allowExplain) input.explain = false;
    input.entry = "rpc";
    if (source !== undefined) input.source = source;
    return authorize(input);
  };
}

/** A unary answer: a deny is a response; an outage is UNAVAILABLE. */
export function unaryResponse(decision: Decision): AuthorizeResponse {
  if (decision.reason === "unavailable") throw new ConnectError(decision.message, Code.Unavailable);
  return decisionToProto(decision);
}

export function createAuthorizeCall(authorize: Authorize, allowExplain: boolean): AuthorizeCall {
  const decide = createRequestDecider(authorize, allowExplain);
  return async (request, source) => unaryResponse(await decide(request, source));
}
