/**
 * An audit event: who (actor) did what (action) to which key (target), in
 * which org, and how it ended. `detail` says what changed; it never holds a
 * key or a key hash.
 */

export type AuditAction =
  | "create"
  | "get"
  | "list"
  | "update"
  | "enable"
  | "revoke"
  | "rotate"
  | "delete"
  | "reset_all"
  | "audit"
  // ResourceService and the Cube webhook (target "KIND/ID"); get and list appear only when refused.
  | "resource.claim"
  | "resource.release"
  | "resource.get"
  | "resource.list";

export interface AuditEvent {
  id: string;
  at: Date;
  /** A key id, or "local" for the operator. */
  actor: string;
  action: string;
  target: string | null;
  /** rotate: the new key. */
  newTarget: string | null;
  /** null: unknown, or every org. */
  org: string | null;
  /**
   * The namespace of the key or resource acted on (a scoped caller's own for
   * its refused attempts); null: org-wide or unknown. A namespace-scoped
   * reader sees only rows of its namespace.
   */
  namespace: string | null;
  /** "ok", "denied: <code>: <message>" or "invalid: <message>". */
  outcome: string;
  detail: Record<string, unknown>;
}

export type NewAuditEvent = Omit<AuditEvent, "id">;

/** A refused attempt's row says how many identical refusals it stands for (audit-recorder.ts). */
export const REPEATED = "repeated";

export const OUTCOME_OK = "ok";

/** The outcome text of a refused attempt: a bad argument is "invalid", every other refusal "denied". */
export function refusedOutcome(code: string, message: string): string {
  return code === "invalid_argument" ? `invalid: ${message}` : `denied: ${code}: ${message}`;
}
