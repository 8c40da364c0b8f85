import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// The ownership ledger: which org and namespace own each resource (a
// sandbox) and which key created it. A released row stays for the record;
// at most one live row per (kind, id).

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .createTable("owned_resources")
    .addColumn("seq", "bigserial", (c) => c.primaryKey())
    .addColumn("kind", "text", (c) => c.notNull())
    .addColumn("id", "text", (c) => c.notNull())
    .addColumn("org", "text", (c) => c.notNull())
    .addColumn("namespace", "text", (c) => c.notNull())
    .addColumn("key_id", "text", (c) => c.notNull())
    .addColumn("created_at", "timestamptz", (c) => c.notNull())
    .addColumn("released_at", "timestamptz")
    .execute();
  await sql`create unique index owned_resources_live on owned_resources (kind, id) where released_at is null`.execute(db);
  await db.schema.createIndex("owned_resources_org").on("owned_resources").columns(["kind", "org", "namespace"]).where(sql.ref("released_at"), "is", null).execute();
  await db.schema.createIndex("owned_resources_key").on("owned_resources").columns(["key_id"]).where(sql.ref("released_at"), "is", null).execute();
  await db.schema.createIndex("owned_resources_page").on("owned_resources").columns(["created_at", "seq"]).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropTable("owned_resources").execute();
}
