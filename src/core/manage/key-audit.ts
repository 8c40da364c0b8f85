import type { Kysely, Transaction } from "kysely";
import { OUTCOME_OK, refusedOutcome, type AuditAction, type NewAuditEvent } from "../audit/audit-event.js";
import * as audit from "../audit/audit.repository.js";
import type { Database } from "../db/schema.js";
import { actorOf, type ManageResult, type Principal } from "./access.js";

/**
 * The audit bookkeeping of key actions: every change commits together with
 * its audit row (if the row cannot be written, the change rolls back), and
 * every refused attempt, of any action, is recorded on its own.
 */

/** The audit row an action is building: filled in as the action learns its org, target and changes. */
export interface AuditNote {
  action: AuditAction;
  target: string | null;
  newTarget: string | null;
  org: string | null;
  detail: Record<string, unknown>;
}

export interface KeyAudit {
  /**
   * Runs an action with a fresh note (a key caller acts in its own org, the
   * operator in none yet). A successful change writes its own row inside its
   * transaction (`recordIn`); a refusal is recorded here.
   */
  audited<T>(principal: Principal, action: AuditAction, target: string | null, run: (note: AuditNote) => Promise<ManageResult<T>>): Promise<ManageResult<T>>;
  /** The audit row of a change, in the change's transaction. */
  recordIn(trx: Transaction<Database>, principal: Principal, note: AuditNote, at: Date): Promise<void>;
}

export function createKeyAudit(db: Kysely<Database>, now: () => Date): KeyAudit {
  const row = (principal: Principal, n: AuditNote, outcome: string, at: Date): NewAuditEvent => ({
    at,
    actor: actorOf(principal),
    action: n.action,
    target: n.target,
    newTarget: n.newTarget,
    org: n.org,
    outcome,
    detail: n.detail,
  });
  return {
    async audited(principal, action, target, run) {
      const note: AuditNote = { action, target, newTarget: null, org: principal.kind === "key" ? principal.key.org : null, detail: {} };
      const result = await run(note);
      if (!result.ok) await audit.insertAuditEvent(db, row(principal, note, refusedOutcome(result.code, result.message), now()));
      return result;
    },
    recordIn: (trx, principal, note, at) => audit.insertAuditEvent(trx, row(principal, note, OUTCOME_OK, at)),
  };
}
