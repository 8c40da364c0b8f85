import { sql, type Kysely } from "kysely";

// Frozen: never edit a migration once it has shipped; add a new one.
// Per-key rate limits: at most rate_limit_points requests per
// rate_limit_window_seconds. Both null = the server default (or unlimited).

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function up(db: Kysely<any>): Promise<void> {
  await db.schema
    .alterTable("api_keys")
    .addColumn("rate_limit_points", "integer")
    .addColumn("rate_limit_window_seconds", "integer")
    .execute();
  await db.schema
    .alterTable("api_keys")
    .addCheckConstraint(
      "api_keys_rate_limit_check",
      sql`(rate_limit_points is null and rate_limit_window_seconds is null) or (rate_limit_points > 0 and rate_limit_window_seconds > 0)`,
    )
    .execute();
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function down(db: Kysely<any>): Promise<void> {
  await db.schema.alterTable("api_keys").dropConstraint("api_keys_rate_limit_check").execute();
  await db.schema.alterTable("api_keys").dropColumn("rate_limit_points").dropColumn("rate_limit_window_seconds").execute();
}
