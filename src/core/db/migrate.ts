import type { Kysely } from "kysely";
import { Migrator, type Migration, type MigrationProvider, type MigrationResultSet } from "kysely/migration";
import * as createApiKeys from "./migrations/2026-11-24T00-00_create-api-keys.js";
import * as addKeyRateLimit from "./migrations/2026-11-25T00-00_add-key-rate-limit.js";
import * as createKeyUsage from "./migrations/2026-11-25T01-01_create-key-usage.js";
import * as createAuditLog from "./migrations/2026-11-25T01-00_create-audit-log.js";
import * as createOwnedResources from "./migrations/2026-12-07T00-00_create-owned-resources.js";
import * as addKeyMaxSandboxes from "./migrations/2026-12-07T00-02_add-key-max-sandboxes.js";
import * as addAuditNamespace from "./migrations/2026-12-08T00-01_add-audit-namespace.js";
import * as addKeyBudgets from "./migrations/2026-12-08T00-02_add-key-budgets.js";

/**
 * Migrations are imported statically (not read from a folder at run time), so
 * the compiled package carries them and their order is fixed by name.
 */
const MIGRATIONS: Record<string, Migration> = {
  "2026-11-24T00-00_create-api-keys": createApiKeys,
  "2026-11-25T00-00_add-key-rate-limit": addKeyRateLimit,
  "2026-11-25T01-01_create-key-usage": createKeyUsage,
  "2026-11-25T01-00_create-audit-log": createAuditLog,
  "2026-12-07T00-00_create-owned-resources": createOwnedResources,
  "2026-12-07T00-02_add-key-max-sandboxes": addKeyMaxSandboxes,
  "2026-12-08T00-01_add-audit-namespace": addAuditNamespace,
  "2026-12-08T00-02_add-key-budgets": addKeyBudgets,
};

const provider: MigrationProvider = { getMigrations: async () => MIGRATIONS };

export interface MigrateOutcome {
  applied: string[];
  current: string;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export async function migrateToLatest(db: Kysely<any>): Promise<MigrateOutcome> {
  const migrator = new Migrator({ db, provider, migrationTableName: "keygate_migrations", migrationLockTableName: "keygate_migrations_lock" });
  const result: MigrationResultSet = await migrator.migrateToLatest();
  if (result.error) {
    const failed = result.results?.find((r) => r.status === "Error");
    throw new Error(`migration ${failed?.migrationName ?? "(unknown)"} failed: ${(result.error as Error).message ?? result.error}`, { cause: result.error });
  }
  const applied = (result.results ?? []).filter((r) => r.status === "Success").map((r) => r.migrationName);
  const names = Object.keys(MIGRATIONS).sort();
  return { applied, current: names[names.length - 1] ?? "" };
}
