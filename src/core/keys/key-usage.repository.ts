import { sql, type Kysely, type Transaction } from "kysely";
import type { Database } from "../db/schema.js";

/** Repository functions take the database (or a transaction) first. */
type Db = Kysely<Database> | Transaction<Database>;

/** Requests decided for one key on one UTC day. */
export interface DayCount {
  allowed: number;
  denied: number;
}

/** A batch of counts: key id → UTC day ("YYYY-MM-DD") → counts. */
export type UsageCounts = ReadonlyMap<string, ReadonlyMap<string, DayCount>>;

/**
 * One statement for a batch (the recorder sends a flush in chunks of keys):
 * last-used times (never moved backwards) and per-day counts added to what is
 * stored. One statement, so a batch is all or nothing. Counts of a key deleted since are dropped (the exists), so
 * one deleted key cannot fail the batch of every other.
 */
export async function recordUsage(db: Db, lastUsed: ReadonlyMap<string, Date>, counts: UsageCounts): Promise<void> {
  if (lastUsed.size === 0 && counts.size === 0) return;
  const times = JSON.stringify([...lastUsed].map(([id, at]) => ({ id, at: at.toISOString() })));
  const rows = JSON.stringify([...counts].flatMap(([keyId, days]) => [...days].map(([day, c]) => ({ key_id: keyId, day, allowed: c.allowed, denied: c.denied }))));
  await sql`
    with touched as (
      update api_keys as k
      set last_used_at = greatest(coalesce(k.last_used_at, v.at), v.at)
      from jsonb_to_recordset(${times}::jsonb) as v(id text, at timestamptz)
      where k.id = v.id
      returning k.id
    )
    insert into key_usage (key_id, day, allowed, denied)
    select v.key_id, v.day, v.allowed, v.denied
    from jsonb_to_recordset(${rows}::jsonb) as v(key_id text, day date, allowed bigint, denied bigint)
    where exists (select 1 from api_keys as k where k.id = v.key_id)
    on conflict (key_id, day) do update
    set allowed = key_usage.allowed + excluded.allowed, denied = key_usage.denied + excluded.denied`.execute(db);
}

export interface UsageRow extends DayCount {
  keyId: string;
  /** "YYYY-MM-DD", UTC. */
  day: string;
}

/** Stored counts of these keys from `fromDay` on (inclusive), oldest first. */
export async function readUsage(db: Db, keyIds: readonly string[], fromDay: string): Promise<UsageRow[]> {
  if (keyIds.length === 0) return [];
  const rows = await db
    .selectFrom("key_usage")
    // Read the day as text: drivers turn a date into a Date at local midnight.
    .select(["key_id", sql<string>`to_char(day, 'YYYY-MM-DD')`.as("day"), "allowed", "denied"])
    .where("key_id", "in", keyIds)
    .where("day", ">=", fromDay)
    .orderBy("key_id")
    .orderBy("day")
    .execute();
  return rows.map((row) => ({ keyId: row.key_id, day: row.day, allowed: Number(row.allowed), denied: Number(row.denied) }));
}
