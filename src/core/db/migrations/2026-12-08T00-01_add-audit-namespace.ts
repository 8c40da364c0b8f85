import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// Audit rows learn the namespace of what they are about, so a namespace-scoped
// key reads only its namespace's rows. Old rows: the namespace their detail
// names, else their target key's current one, else null (org-wide: visible
// only to keys of every namespace). Retention prunes by "at" in id order.

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("audit_log").addColumn("namespace", "text").execute();
  await sql`update audit_log set namespace = detail->>'namespace' where jsonb_typeof(detail->'namespace') = 'string'`.execute(db);
  await sql`update audit_log a set namespace = k.namespace from api_keys k where a.namespace is null and a.target = k.id`.execute(db);
  await db.schema.createIndex("audit_log_org_namespace_at_idx").on("audit_log").columns(["org", "namespace", "at"]).execute();
  await db.schema.createIndex("audit_log_at_idx").on("audit_log").column("at").execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.dropIndex("audit_log_at_idx").execute();
  await db.schema.dropIndex("audit_log_org_namespace_at_idx").execute();
  await db.schema.alterTable("audit_log").dropColumn("namespace").execute();
}
