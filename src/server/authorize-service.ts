import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Authorize } from "../authorize/authorizer.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { authorizeInputFromProto, decisionToProto } from "./convert.js";

/** AuthorizeService over the core authorizer. A deny is a response; an outage is UNAVAILABLE. */
export function createAuthorizeService(authorize: Authorize): ServiceImpl<typeof AuthorizeService> {
  return {
    async authorize(request) {
      const decision = await authorize(authorizeInputFromProto(request));
      if (decision.reason === "unavailable") throw new ConnectError(decision.message, Code.Unavailable);
      return decisionToProto(decision);
    },
  };
}
