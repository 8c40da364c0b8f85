import type { Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// Requests decided per key and UTC day. Written in batches by the usage
// recorder (one upsert per flush), never once per decision; a key's rows go
// with the key.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("key_usage")
    .addColumn("key_id", "text", (c) => c.notNull().references("api_keys.id").onDelete("cascade"))
    .addColumn("day", "date", (c) => c.notNull())
    .addColumn("allowed", "bigint", (c) => c.notNull().defaultTo(0))
    .addColumn("denied", "bigint", (c) => c.notNull().defaultTo(0))
    .addPrimaryKeyConstraint("key_usage_pkey", ["key_id", "day"])
    .execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable("key_usage").execute();
}
