import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// Per-key limit on live sandboxes (proxy mode counts them in owned_resources).
// Null = no limit of the key's own (the org default, if any, still applies).

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("api_keys").addColumn("max_sandboxes", "integer").execute();
  await db.schema.alterTable("api_keys").addCheckConstraint("api_keys_max_sandboxes_check", sql`max_sandboxes is null or max_sandboxes >= 0`).execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("api_keys").dropConstraint("api_keys_max_sandboxes_check").execute();
  await db.schema.alterTable("api_keys").dropColumn("max_sandboxes").execute();
}
