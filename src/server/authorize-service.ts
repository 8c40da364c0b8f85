import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Authorize } from "../authorize/authorizer.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { authorizeInputFromProto, decisionToProto } from "./convert.js";
import { kSource } from "./request-source.js";

/**
 * AuthorizeService over the core authorizer. A deny is a response; an outage
 * is UNAVAILABLE. `explain` is honoured only for the local operator (control
 * socket, CLI): an explanation shows policy rule text and scans every rule,
 * so on the public port any key holder could read the policy or make each
 * call cost a full scan.
 */
export function createAuthorizeService(authorize: Authorize, allowExplain: boolean): ServiceImpl<typeof AuthorizeService> {
  return {
    async authorize(request, context) {
      const input = authorizeInputFromProto(request);
      if (!allowExplain) input.explain = false;
      input.entry = "rpc";
      const source = context.values.get(kSource);
      if (source !== undefined) input.source = source;
      const decision = await authorize(input);
      if (decision.reason === "unavailable") throw new ConnectError(decision.message, Code.Unavailable);
      return decisionToProto(decision);
    },
  };
}
