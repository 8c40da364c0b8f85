import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// Shared rate-limit budgets. budget_id: the bucket a key's own limit counts
// in; null = the key's own id (every key that exists, and rows written
// without it). A rotated key takes its predecessor's. parent_budgets: the
// budgets of every rate-limited key above it in the creation chain, as
// [{"id", "points", "window_seconds"}] (the limit when the key was made);
// a decision must fit in all of them.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable("api_keys")
    .addColumn("budget_id", "text")
    .addColumn("parent_budgets", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("api_keys").dropColumn("budget_id").dropColumn("parent_budgets").execute();
}
