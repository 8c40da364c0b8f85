import type { Kysely } from "kysely";
import { decodePageToken, encodePageToken, type PageCursor } from "../db/page-token.js";
import type { Database } from "../db/schema.js";
import { actorOf, type ManageResult, type Principal } from "./access.js";
import { managementDecision } from "./management.js";
import type { Policy } from "../policy/policy.js";
import { refusedOutcome, type AuditEvent } from "../audit/audit-event.js";
import * as repo from "../audit/audit.repository.js";

/**
 * Reading the audit log. The local operator sees every org; a key caller
 * needs the policy's GET on resource "audit" and sees only its own org (asking
 * for another is refused, and that refusal is itself recorded).
 */

export interface ListAuditInput {
  org?: string;
  keyId?: string;
  since?: Date;
  pageSize?: number;
  pageToken?: string;
}

export interface AuditPage {
  events: AuditEvent[];
  nextPageToken: string;
}

export interface AuditLogDeps {
  db: Kysely<Database>;
  policy: () => Policy;
  now: () => Date;
}

/** Audit rows are numbered by a bigint sequence. */
const AUDIT_ID = /^\d{1,19}$/;
const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;

export type AuditLog = ReturnType<typeof createAuditLog>;

export function createAuditLog({ db, policy, now }: AuditLogDeps) {
  async function refuse(principal: Principal, code: "invalid_argument" | "permission_denied", message: string, input: ListAuditInput): Promise<ManageResult<AuditPage>> {
    await repo.insertAuditEvent(db, {
      at: now(),
      actor: actorOf(principal),
      action: "audit",
      target: null,
      newTarget: null,
      org: principal.kind === "key" ? principal.key.org : (input.org ?? null),
      outcome: refusedOutcome(code, message),
      detail: { ...(input.org && { org: input.org }), ...(input.keyId && { key_id: input.keyId }) },
    });
    return { ok: false, code, message };
  }

  return {
    async list(principal: Principal, input: ListAuditInput): Promise<ManageResult<AuditPage>> {
      const filter: repo.AuditFilter = {};
      if (principal.kind === "key") {
        const { key } = principal;
        if (!managementDecision(policy(), key, "GET", "audit").allowed) return refuse(principal, "permission_denied", "API key is not allowed to GET audit", input);
        if (input.org && input.org !== key.org) return refuse(principal, "permission_denied", "a key may read only its own org's audit events", input);
        filter.org = key.org;
      } else if (input.org) filter.org = input.org;
      if (input.keyId) filter.keyId = input.keyId;
      if (input.since) {
        if (Number.isNaN(input.since.getTime())) return refuse(principal, "invalid_argument", "invalid since time", input);
        filter.since = input.since;
      }
      let before: PageCursor | undefined;
      if (input.pageToken) {
        before = decodePageToken(input.pageToken, AUDIT_ID);
        if (!before) return refuse(principal, "invalid_argument", "invalid page_token: pass the next_page_token of a previous page", input);
      }
      const pageSize = input.pageSize ? Math.min(input.pageSize, MAX_PAGE_SIZE) : DEFAULT_PAGE_SIZE;
      const rows = await repo.listAuditEvents(db, filter, pageSize + 1, before);
      const events = rows.slice(0, pageSize);
      const last = events[events.length - 1];
      return { ok: true, value: { events, nextPageToken: rows.length > pageSize && last ? encodePageToken(last) : "" } };
    },
  };
}
