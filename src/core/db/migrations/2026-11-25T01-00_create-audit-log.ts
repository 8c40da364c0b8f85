import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// The audit log: one row per key change (written in the change's own
// transaction) and per refused ManageKey attempt. It never holds a key or a hash.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("audit_log")
    .addColumn("id", "bigserial", (c) => c.primaryKey())
    .addColumn("at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    // A key id, or "local" for the operator.
    .addColumn("actor", "text", (c) => c.notNull())
    .addColumn("action", "text", (c) => c.notNull())
    .addColumn("target", "text")
    // rotate: the new key.
    .addColumn("new_target", "text")
    // null: not known, or every org (an operator's reset of every org).
    .addColumn("org", "text")
    // "ok", "denied: <code>: <message>" or "invalid: <message>".
    .addColumn("outcome", "text", (c) => c.notNull())
    .addColumn("detail", "jsonb", (c) => c.notNull().defaultTo(sql`'{}'::jsonb`))
    .execute();
  // `keygate audit` lists newest first, by org or by key.
  await db.schema.createIndex("audit_log_org_at_idx").on("audit_log").columns(["org", "at"]).execute();
  await db.schema.createIndex("audit_log_target_at_idx").on("audit_log").columns(["target", "at"]).execute();
  await db.schema.createIndex("audit_log_new_target_idx").on("audit_log").column("new_target").execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable("audit_log").execute();
}
