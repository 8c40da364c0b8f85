import type { Transaction } from "kysely";
import { OUTCOME_OK, refusedOutcome, type AuditAction, type NewAuditEvent } from "../audit/audit-event.js";
import type { AuditRecorder } from "../audit/audit-recorder.js";
import * as audit from "../audit/audit.repository.js";
import type { Database } from "../db/schema.js";
import { ALL_NAMESPACES } from "../keys/key-record.js";
import { actorOf, type ManageResult, type Principal } from "./access.js";

/**
 * The audit bookkeeping of key actions: every change commits together with
 * its audit row (if the row cannot be written, the change rolls back), and
 * every refused attempt, of any action, goes to the recorder, which writes it
 * in the background, collapsing repeats (audit-recorder.ts).
 */

/** The audit row an action is building: filled in as the action learns its org, target and changes. */
export interface AuditNote {
  action: AuditAction;
  target: string | null;
  newTarget: string | null;
  org: string | null;
  /** The namespace of the key acted on, once known; null: org-wide. */
  namespace: string | null;
  detail: Record<string, unknown>;
}

export interface KeyAudit {
  /**
   * Runs an action with a fresh note (a key caller acts in its own org, and
   * in its own namespace when scoped to one; the operator in none yet). A
   * successful change writes its own row inside its transaction (`recordIn`);
   * a refusal is handed to the recorder here.
   */
  audited<T>(principal: Principal, action: AuditAction, target: string | null, run: (note: AuditNote) => Promise<ManageResult<T>>): Promise<ManageResult<T>>;
  /** The audit row of a change, in the change's transaction. */
  recordIn(trx: Transaction<Database>, principal: Principal, note: AuditNote, at: Date): Promise<void>;
}

/** A scoped key's own namespace: its refused attempts are rows of that namespace. */
export function namespaceOf(principal: Principal): string | null {
  return principal.kind === "key" && principal.key.namespace !== ALL_NAMESPACES ? principal.key.namespace : null;
}

export function createKeyAudit(recorder: AuditRecorder, now: () => Date): KeyAudit {
  const row = (principal: Principal, n: AuditNote, outcome: string, at: Date): NewAuditEvent => ({
    at,
    actor: actorOf(principal),
    action: n.action,
    target: n.target,
    newTarget: n.newTarget,
    org: n.org,
    namespace: n.namespace,
    outcome,
    detail: n.detail,
  });
  return {
    async audited(principal, action, target, run) {
      const note: AuditNote = { action, target, newTarget: null, org: principal.kind === "key" ? principal.key.org : null, namespace: namespaceOf(principal), detail: {} };
      const result = await run(note);
      if (!result.ok) recorder.refused(row(principal, note, refusedOutcome(result.code, result.message), now()));
      return result;
    },
    recordIn: (trx, principal, note, at) => audit.insertAuditEvent(trx, row(principal, note, OUTCOME_OK, at)),
  };
}
