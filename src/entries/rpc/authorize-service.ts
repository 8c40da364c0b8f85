import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { Authorize } from "../../core/authorize/authorizer.js";
import {
  AuthorizeRequestSchema,
  AuthorizeResponseSchema,
  AuthorizeService,
  AuthorizeStreamResponseSchema,
  Reason,
  type AuthorizeStreamRequest,
  type AuthorizeStreamResponse,
} from "../../../gen/keygate/v1/authorize_pb.js";
import { mapUnordered, STREAM_MAX_IN_FLIGHT } from "./authorize-stream.js";
import { createRequestDecider, unaryResponse } from "./authorize-call.js";
import { decisionToProto } from "./convert.js";
import { kRequestIdValue } from "../../http/request-id.js";
import { kSource } from "../../http/rpc-context.js";

const EMPTY_REQUEST = create(AuthorizeRequestSchema);

/**
 * AuthorizeService over the core authorizer. A deny is a response; an outage
 * is UNAVAILABLE for Authorize, and an UNAVAILABLE decision for one id on
 * AuthorizeStream (the stream outlives it). `explain` is honoured only for
 * the local operator (control socket, CLI): an explanation shows policy rule
 * text and scans every rule, so on the public port any key holder could read
 * the policy or make each call cost a full scan.
 *
 * The core turns outages into decisions, so anything thrown while deciding is
 * a bug: it is reported (onError, with the request id) and the call fails
 * closed: unary Authorize with `internal`, as the direct path answers it; on
 * AuthorizeStream only that id is denied, the stream goes on.
 */
export interface AuthorizeServiceDeps {
  authorize: Authorize;
  /** Honour `explain`: only for the local operator. */
  allowExplain: boolean;
  /** A bug caught while deciding, with the call's request id. */
  onError?: (error: unknown, requestId: string | undefined) => void;
}

export function createAuthorizeService({ authorize, allowExplain, onError }: AuthorizeServiceDeps): ServiceImpl<typeof AuthorizeService> {
  const decide = createRequestDecider(authorize, allowExplain);

  async function decideOne({ id, request }: AuthorizeStreamRequest, source: string | undefined, context: HandlerContext): Promise<AuthorizeStreamResponse> {
    let response;
    try {
      response = decisionToProto(await decide(request ?? EMPTY_REQUEST, source));
    } catch (error) {
      onError?.(error, context.values.get(kRequestIdValue));
      response = create(AuthorizeResponseSchema, { allowed: false, reason: Reason.UNAVAILABLE, message: "authorization unavailable: the decision failed, request denied" });
    }
    return create(AuthorizeStreamResponseSchema, { id, response });
  }

  return {
    async authorize(request, context) {
      let decision;
      try {
        decision = await decide(request, context.values.get(kSource));
      } catch (error) {
        onError?.(error, context.values.get(kRequestIdValue));
        throw new ConnectError("internal error", Code.Internal, undefined, undefined, error);
      }
      return unaryResponse(decision);
    },

    authorizeStream(requests, context) {
      const source = context.values.get(kSource);
      return mapUnordered(requests, STREAM_MAX_IN_FLIGHT, (message) => decideOne(message, source, context), context.signal);
    },
  };
}
