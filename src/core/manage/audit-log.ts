import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import type { ManageResult, Principal } from "./key-manager.js";
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

const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;

export type AuditLog = ReturnType<typeof createAuditLog>;

export function createAuditLog({ db, policy, now }: AuditLogDeps) {
  async function refuse(principal: Principal, code: "invalid_argument" | "permission_denied", message: string, input: ListAuditInput): Promise<ManageResult<AuditPage>> {
    await repo.insertAuditEvent(db, {
      at: now(),
      actor: principal.kind === "local" ? "local" : principal.key.id,
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
      let before: repo.AuditCursor | undefined;
      if (input.pageToken) {
        before = decodePageToken(input.pageToken);
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

function encodePageToken(last: AuditEvent): string {
  return Buffer.from(JSON.stringify([last.at.toISOString(), last.id])).toString("base64url");
}

function decodePageToken(token: string): repo.AuditCursor | undefined {
  if (token.length > 200) return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    if (!Array.isArray(parsed) || parsed.length !== 2) return undefined;
    const [time, id] = parsed as [unknown, unknown];
    if (typeof time !== "string" || typeof id !== "string" || !/^\d{1,19}$/.test(id)) return undefined;
    const at = new Date(time);
    return Number.isNaN(at.getTime()) ? undefined : { at, id };
  } catch {
    return undefined;
  }
}
