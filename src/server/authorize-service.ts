import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Authorize } from "../authorize/authorizer.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { decisionToProto } from "./convert.js";

/** AuthorizeService over the core authorizer. A deny is a response; an outage is UNAVAILABLE. */
export function createAuthorizeService(authorize: Authorize): ServiceImpl<typeof AuthorizeService> {
  return {
    async authorize(request) {
      const decision = await authorize({
        credential: request.credential,
        path: request.path,
        method: request.method,
        namespace: request.namespace,
        org: request.org,
      });
      if (decision.reason === "unavailable") throw new ConnectError(decision.message, Code.Unavailable);
      return decisionToProto(decision);
    },
  };
}
