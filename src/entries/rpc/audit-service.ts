import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuditEvent } from "../../core/audit/audit-event.js";
import type { AuditLog } from "../../core/manage/audit-log.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";
import { kRequestIdValue } from "../../http/request-id.js";
import { AuditEventSchema, AuditService, ListAuditEventsResponseSchema, type AuditEvent as AuditEventProto } from "../../../gen/keygate/v1/audit_pb.js";
import type { PrincipalOf } from "./principal.js";

export interface AuditServiceDeps {
  audit: AuditLog;
  principalOf: PrincipalOf;
  log: Logger;
}

const CODES = { invalid_argument: Code.InvalidArgument, not_found: Code.NotFound, permission_denied: Code.PermissionDenied, already_exists: Code.AlreadyExists } as const;

export function createAuditService({ audit, principalOf, log }: AuditServiceDeps): ServiceImpl<typeof AuditService> {
  return {
    async listAuditEvents(request, context) {
      const principal = await principalOf(context);
      try {
        const result = await audit.list(principal, {
          org: request.org,
          namespace: request.namespace,
          keyId: request.keyId,
          ...(request.since && { since: timestampDate(request.since) }),
          pageSize: request.pageSize,
          pageToken: request.pageToken,
        });
        if (!result.ok) throw new ConnectError(result.message, CODES[result.code]);
        return create(ListAuditEventsResponseSchema, { events: result.value.events.map(auditEventToProto), nextPageToken: result.value.nextPageToken });
      } catch (error) {
        if (error instanceof ConnectError) throw error;
        log.error("audit read failed", { ...errorFields(error), request_id: context.values.get(kRequestIdValue) });
        throw new ConnectError("audit log unavailable", Code.Unavailable, undefined, undefined, error);
      }
    },
  };
}

export function auditEventToProto(event: AuditEvent): AuditEventProto {
  return create(AuditEventSchema, {
    id: event.id,
    at: timestampFromDate(event.at),
    actor: event.actor,
    action: event.action,
    target: event.target ?? "",
    newTarget: event.newTarget ?? "",
    org: event.org ?? "",
    namespace: event.namespace ?? "",
    outcome: event.outcome,
    detail: event.detail as AuditEventProto["detail"],
  });
}
