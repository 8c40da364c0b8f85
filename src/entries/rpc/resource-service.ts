import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import type { ManageResult } from "../../core/manage/access.js";
import type { ResourceManager } from "../../core/manage/resource-manager.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";
import { kRequestIdValue } from "../../http/request-id.js";
import {
  ClaimResponseSchema,
  GetResponseSchema,
  ListResponseSchema,
  ReleaseResponseSchema,
  ResourceService,
} from "../../../gen/keygate/v1/resource_pb.js";
import { resourceToProto } from "./convert.js";
import type { PrincipalOf } from "./principal.js";

/**
 * ResourceService (Claim, Release, Get, List) over gRPC, Connect and
 * gRPC-Web: the caller becomes a principal as for ManageKey, the rules are
 * the core's (core/manage/resource-manager.ts), a refusal becomes its code.
 */

export interface ResourceServiceDeps {
  resources: ResourceManager;
  principalOf: PrincipalOf;
  log: Logger;
}

const CODES = {
  invalid_argument: Code.InvalidArgument,
  not_found: Code.NotFound,
  permission_denied: Code.PermissionDenied,
  already_exists: Code.AlreadyExists,
} as const;

function unwrap<T>(result: ManageResult<T>): T {
  if (!result.ok) throw new ConnectError(result.message, CODES[result.code]);
  return result.value;
}

export function createResourceService({ resources, principalOf, log }: ResourceServiceDeps): ServiceImpl<typeof ResourceService> {
  /** One call: who asks, then the action; an outage is UNAVAILABLE (nothing was changed, or the retry is idempotent). */
  async function run<T>(method: string, request: object, context: HandlerContext, action: (principal: Awaited<ReturnType<PrincipalOf>>) => Promise<T>): Promise<T> {
    const requestId = context.values.get(kRequestIdValue);
    try {
      const principal = await principalOf(context);
      // Postgres text cannot hold NUL: the caller's error, not an outage.
      const nul = Object.entries(request).find(([name, value]) => name !== "$typeName" && typeof value === "string" && value.includes("\u0000"));
      if (nul) throw new ConnectError(`${nul[0]} contains a NUL character`, Code.InvalidArgument);
      const response = await action(principal);
      log.info("resource action", { action: method, request_id: requestId, actor: principal.kind === "local" ? "local" : principal.key.id });
      return response;
    } catch (error) {
      if (error instanceof ConnectError) throw error;
      log.error("resource action failed", { action: method, request_id: requestId, ...errorFields(error) });
      throw new ConnectError("resource ledger unavailable; retry (claims and releases are idempotent)", Code.Unavailable, undefined, undefined, error);
    }
  }

  return {
    claim: (request, context) =>
      run("claim", request, context, async (principal) => {
        const { resource, created } = unwrap(await resources.claim(principal, { kind: request.kind, id: request.id, org: request.org, namespace: request.namespace }));
        return create(ClaimResponseSchema, { resource: resourceToProto(resource), created });
      }),
    release: (request, context) =>
      run("release", request, context, async (principal) => {
        const { resource, released } = unwrap(await resources.release(principal, request.kind, request.id));
        return create(ReleaseResponseSchema, { resource: resourceToProto(resource), released });
      }),
    get: (request, context) =>
      run("get", request, context, async (principal) => create(GetResponseSchema, { resource: resourceToProto(unwrap(await resources.get(principal, request.kind, request.id))) })),
    list: (request, context) =>
      run("list", request, context, async (principal) => {
        const page = unwrap(
          await resources.list(principal, {
            kind: request.kind,
            org: request.org,
            namespace: request.namespace,
            keyId: request.keyId,
            includeReleased: request.includeReleased,
            pageSize: request.pageSize,
            pageToken: request.pageToken,
          }),
        );
        return create(ListResponseSchema, { resources: page.resources.map(resourceToProto), nextPageToken: page.nextPageToken });
      }),
  };
}
