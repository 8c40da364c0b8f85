import { sql, type Kysely, type Transaction } from "kysely";
import type { PageCursor } from "../db/page-token.js";
import type { AuditLogRow, Database } from "../db/schema.js";
import type { AuditEvent, NewAuditEvent } from "./audit-event.js";
import { boundedEvent } from "./audit-text.js";

/** Repository functions take the database (or a transaction) first. */
type Db = Kysely<Database> | Transaction<Database>;

function toEvent(row: AuditLogRow): AuditEvent {
  return {
    id: String(row.id),
    at: row.at,
    actor: row.actor,
    action: row.action,
    target: row.target,
    newTarget: row.new_target,
    org: row.org,
    namespace: row.namespace,
    outcome: row.outcome,
    detail: typeof row.detail === "string" ? (JSON.parse(row.detail) as Record<string, unknown>) : row.detail,
  };
}

function toRow(input: NewAuditEvent) {
  // Every text field bounded, whatever the caller built (audit-text.ts).
  const event = boundedEvent(input);
  return {
    at: event.at,
    actor: event.actor,
    action: event.action,
    target: event.target,
    new_target: event.newTarget,
    org: event.org,
    namespace: event.namespace,
    outcome: event.outcome,
    detail: JSON.stringify(event.detail),
  };
}

export async function insertAuditEvent(db: Db, event: NewAuditEvent): Promise<void> {
  await db.insertInto("audit_log").values(toRow(event)).execute();
}

/** Many rows in one statement (the recorder's batches). */
export async function insertAuditEvents(db: Db, events: readonly NewAuditEvent[]): Promise<void> {
  if (events.length === 0) return;
  await db.insertInto("audit_log").values(events.map(toRow)).execute();
}

export interface AuditFilter {
  org?: string;
  /** Only rows of this namespace (rows with none, org-wide, are left out). */
  namespace?: string;
  /** Events whose target or new target is this key. */
  keyId?: string;
  since?: Date;
}

/** Newest first, ordered by (at, id) descending. */
export async function listAuditEvents(db: Db, filter: AuditFilter, limit: number, before?: PageCursor): Promise<AuditEvent[]> {
  let query = db.selectFrom("audit_log").selectAll();
  if (filter.org !== undefined) query = query.where("org", "=", filter.org);
  if (filter.namespace !== undefined) query = query.where("namespace", "=", filter.namespace);
  if (filter.keyId !== undefined) {
    const keyId = filter.keyId;
    query = query.where((eb) => eb.or([eb("target", "=", keyId), eb("new_target", "=", keyId)]));
  }
  if (filter.since !== undefined) query = query.where("at", ">=", filter.since);
  if (before) {
    query = query.where((eb) =>
      eb.or([eb("at", "<", before.at), eb.and([eb("at", "=", before.at), eb("id", "<", sql<string>`${before.id}::bigint`)])]),
    );
  }
  const rows = await query.orderBy("at", "desc").orderBy("id", "desc").limit(limit).execute();
  return rows.map(toEvent);
}

/** Deletes at most `limit` rows dated before `cutoff`, oldest first; answers how many went. */
export async function deleteAuditEventsBefore(db: Db, cutoff: Date, limit: number): Promise<number> {
  const result = await db
    .deleteFrom("audit_log")
    .where("id", "in", (eb) => eb.selectFrom("audit_log").select("id").where("at", "<", cutoff).orderBy("id").limit(limit))
    .executeTakeFirst();
  return Number(result.numDeletedRows);
}
