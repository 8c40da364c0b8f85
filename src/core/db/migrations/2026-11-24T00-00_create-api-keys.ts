import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// Migrations take Kysely<any> on purpose, so app types can change freely.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("api_keys")
    .addColumn("id", "text", (c) => c.primaryKey())
    .addColumn("name", "text", (c) => c.notNull().defaultTo(""))
    .addColumn("org", "text", (c) => c.notNull())
    .addColumn("namespace", "text", (c) => c.notNull().defaultTo("*"))
    .addColumn("roles", "jsonb", (c) => c.notNull().defaultTo(sql`'[]'::jsonb`))
    .addColumn("key_hash", "text", (c) => c.notNull().unique())
    .addColumn("display_prefix", "text", (c) => c.notNull())
    .addColumn("enabled", "boolean", (c) => c.notNull().defaultTo(true))
    .addColumn("expires_at", "timestamptz")
    .addColumn("created_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("updated_at", "timestamptz", (c) => c.notNull().defaultTo(sql`now()`))
    .addColumn("revoked_at", "timestamptz")
    .addColumn("last_used_at", "timestamptz")
    .addColumn("rotated_from", "text")
    .addColumn("created_by", "text", (c) => c.notNull())
    .execute();
  // Listing is paged by (created_at, id) within an org.
  await db.schema.createIndex("api_keys_org_created_idx").on("api_keys").columns(["org", "created_at", "id"]).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable("api_keys").execute();
}
