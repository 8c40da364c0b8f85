import type { Kysely } from "kysely";
import { decodePageToken, encodePageToken, type PageCursor } from "../db/page-token.js";
import type { Database } from "../db/schema.js";
import { actorOf, type ManageResult, type Principal } from "./access.js";
import { managementDecision } from "./management.js";
import type { Policy } from "../policy/policy.js";
import { refusedOutcome, type AuditEvent } from "../audit/audit-event.js";
import type { AuditRecorder } from "../audit/audit-recorder.js";
import * as repo from "../audit/audit.repository.js";
import { KEY_ID_PATTERN } from "../keys/key-format.js";
import { ALL_NAMESPACES, isValidName, NAME_RULE } from "../keys/key-record.js";
import { printable } from "../time/duration.js";
import { namespaceOf } from "./key-audit.js";

/**
 * Reading the audit log. The local operator sees every org; a key caller
 * needs the policy's GET on resource "audit" and sees only its own org, and
 * only its own namespace when scoped to one: rows about keys it cannot `get`
 * (and org-wide rows) are invisible to it. Asking for another org or
 * namespace is refused, and that refusal is itself recorded (filters are
 * checked first, so what is recorded follows the rules).
 */

export interface ListAuditInput {
  org?: string;
  namespace?: string;
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
  recorder: AuditRecorder;
}

/** Audit rows are numbered by a bigint sequence. */
const AUDIT_ID = /^\d{1,19}$/;
const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;

export type AuditLog = ReturnType<typeof createAuditLog>;

type Refusal = { code: "invalid_argument" | "permission_denied"; message: string };

/** The filters' own rules, before anything is recorded or read. */
function invalidFilter(input: ListAuditInput): Refusal | undefined {
  const invalid = (message: string): Refusal => ({ code: "invalid_argument", message });
  if (input.org && !isValidName(input.org)) return invalid(`invalid org "${printable(input.org)}": ${NAME_RULE}`);
  if (input.namespace && !isValidName(input.namespace)) return invalid(`invalid namespace "${printable(input.namespace)}": ${NAME_RULE}`);
  if (input.keyId && !KEY_ID_PATTERN.test(input.keyId)) return invalid(`invalid key_id "${printable(input.keyId)}" (expected key_ and 20 letters or digits)`);
  if (input.since && Number.isNaN(input.since.getTime())) return invalid("invalid since time");
  return undefined;
}

export function createAuditLog({ db, policy, now, recorder }: AuditLogDeps) {
  function refuse(principal: Principal, { code, message }: Refusal, input: ListAuditInput, checked: boolean): ManageResult<AuditPage> {
    recorder.refused({
      at: now(),
      actor: actorOf(principal),
      action: "audit",
      target: null,
      newTarget: null,
      org: principal.kind === "key" ? principal.key.org : checked ? (input.org ?? null) : null,
      namespace: namespaceOf(principal),
      outcome: refusedOutcome(code, message),
      // Only filters that passed their rules are quoted.
      detail: checked ? { ...(input.org && { org: input.org }), ...(input.namespace && { namespace: input.namespace }), ...(input.keyId && { key_id: input.keyId }) } : {},
    });
    return { ok: false, code, message };
  }

  return {
    async list(principal: Principal, input: ListAuditInput): Promise<ManageResult<AuditPage>> {
      const invalid = invalidFilter(input);
      if (invalid) return refuse(principal, invalid, input, false);
      const filter: repo.AuditFilter = {};
      if (principal.kind === "key") {
        const { key } = principal;
        const denied = (message: string) => refuse(principal, { code: "permission_denied", message }, input, true);
        if (!managementDecision(policy(), key, "GET", "audit").allowed) return denied("API key is not allowed to GET audit");
        if (input.org && input.org !== key.org) return denied("a key may read only its own org's audit events");
        filter.org = key.org;
        if (key.namespace !== ALL_NAMESPACES) {
          if (input.namespace && input.namespace !== key.namespace) return denied(`a key scoped to namespace "${key.namespace}" may read only that namespace's audit events`);
          filter.namespace = key.namespace;
        } else if (input.namespace) filter.namespace = input.namespace;
      } else {
        if (input.org) filter.org = input.org;
        if (input.namespace) filter.namespace = input.namespace;
      }
      if (input.keyId) filter.keyId = input.keyId;
      if (input.since) filter.since = input.since;
      let before: PageCursor | undefined;
      if (input.pageToken) {
        before = decodePageToken(input.pageToken, AUDIT_ID);
        if (!before) return refuse(principal, { code: "invalid_argument", message: "invalid page_token: pass the next_page_token of a previous page" }, input, true);
      }
      // Refusals are written in the background: a reader sees those already made.
      await recorder.flush();
      const pageSize = input.pageSize ? Math.min(input.pageSize, MAX_PAGE_SIZE) : DEFAULT_PAGE_SIZE;
      const rows = await repo.listAuditEvents(db, filter, pageSize + 1, before);
      const events = rows.slice(0, pageSize);
      const last = events[events.length - 1];
      return { ok: true, value: { events, nextPageToken: rows.length > pageSize && last ? encodePageToken(last) : "" } };
    },
  };
}
