import type { Kysely, Transaction } from "kysely";
import type { PageCursor } from "../db/page-token.js";
import type { ApiKeyRow, Database, NewApiKeyRow, ParentBudgetJson } from "../db/schema.js";
import type { Budget, RateLimit } from "../ratelimit/rate-limit.js";
import type { KeyRecord } from "./key-record.js";

/** Repository functions take the database (or a transaction) first. */
type Db = Kysely<Database> | Transaction<Database>;

export function toRecord(row: ApiKeyRow): KeyRecord {
  return {
    id: row.id,
    name: row.name,
    org: row.org,
    namespace: row.namespace,
    roles: Array.isArray(row.roles) ? row.roles : (JSON.parse(String(row.roles)) as string[]),
    enabled: row.enabled,
    displayPrefix: row.display_prefix,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    expiresAt: row.expires_at,
    revokedAt: row.revoked_at,
    lastUsedAt: row.last_used_at,
    rotatedFrom: row.rotated_from,
    createdBy: row.created_by,
    rateLimit:
      row.rate_limit_points !== null && row.rate_limit_window_seconds !== null
        ? { points: Number(row.rate_limit_points), windowSeconds: Number(row.rate_limit_window_seconds) }
        : null,
    maxSandboxes: row.max_sandboxes === null || row.max_sandboxes === undefined ? null : Number(row.max_sandboxes),
    budgetId: row.budget_id ?? row.id,
    parentBudgets: parentBudgetsOf(row.parent_budgets),
  };
}

function parentBudgetsOf(value: ParentBudgetJson[] | string | null | undefined): Budget[] {
  if (value === null || value === undefined) return [];
  const list = Array.isArray(value) ? value : (JSON.parse(value) as ParentBudgetJson[]);
  return list.map((b) => ({ id: b.id, limit: { points: Number(b.points), windowSeconds: Number(b.window_seconds) } }));
}

export interface NewKey {
  id: string;
  name: string;
  org: string;
  namespace: string;
  roles: string[];
  keyHash: string;
  displayPrefix: string;
  expiresAt: Date | null;
  createdAt: Date;
  rotatedFrom: string | null;
  createdBy: string;
  rateLimit: RateLimit | null;
  maxSandboxes: number | null;
  /** Unset = its own id. */
  budgetId?: string;
  /** Unset = none. */
  parentBudgets?: readonly Budget[];
}

export async function insertKey(db: Db, key: NewKey): Promise<KeyRecord> {
  const row: NewApiKeyRow = {
    id: key.id,
    name: key.name,
    org: key.org,
    namespace: key.namespace,
    roles: JSON.stringify(key.roles),
    key_hash: key.keyHash,
    display_prefix: key.displayPrefix,
    enabled: true,
    expires_at: key.expiresAt,
    created_at: key.createdAt,
    updated_at: key.createdAt,
    rotated_from: key.rotatedFrom,
    created_by: key.createdBy,
    rate_limit_points: key.rateLimit?.points ?? null,
    rate_limit_window_seconds: key.rateLimit?.windowSeconds ?? null,
    max_sandboxes: key.maxSandboxes,
    ...(key.budgetId !== undefined && key.budgetId !== key.id && { budget_id: key.budgetId }),
    ...(key.parentBudgets &&
      key.parentBudgets.length > 0 && {
        parent_budgets: JSON.stringify(key.parentBudgets.map((b): ParentBudgetJson => ({ id: b.id, points: b.limit.points, window_seconds: b.limit.windowSeconds }))),
      }),
  };
  return toRecord(await db.insertInto("api_keys").values(row).returningAll().executeTakeFirstOrThrow());
}

export async function findKeyByHash(db: Db, keyHash: string): Promise<KeyRecord | undefined> {
  const row = await db.selectFrom("api_keys").selectAll().where("key_hash", "=", keyHash).executeTakeFirst();
  return row && toRecord(row);
}

export async function findKeyById(db: Db, id: string): Promise<KeyRecord | undefined> {
  const row = await db.selectFrom("api_keys").selectAll().where("id", "=", id).executeTakeFirst();
  return row && toRecord(row);
}

export interface KeyFilter {
  org?: string;
  namespace?: string;
  enabled?: boolean;
}

export async function listKeys(db: Db, filter: KeyFilter, limit: number, after?: PageCursor): Promise<KeyRecord[]> {
  let query = db.selectFrom("api_keys").selectAll();
  if (filter.org !== undefined) query = query.where("org", "=", filter.org);
  if (filter.namespace !== undefined) query = query.where("namespace", "=", filter.namespace);
  if (filter.enabled !== undefined) query = query.where("enabled", "=", filter.enabled);
  if (after) {
    query = query.where((eb) =>
      eb.or([eb("created_at", ">", after.at), eb.and([eb("created_at", "=", after.at), eb("id", ">", after.id)])]),
    );
  }
  const rows = await query.orderBy("created_at").orderBy("id").limit(limit).execute();
  return rows.map(toRecord);
}

export interface KeyChanges {
  name?: string;
  enabled?: boolean;
  expiresAt?: Date | null;
  roles?: string[];
  revokedAt?: Date | null;
  /** null removes the key's own limit. */
  rateLimit?: RateLimit | null;
  /** null removes the key's own live-sandbox limit. */
  maxSandboxes?: number | null;
}

export async function updateKey(db: Db, id: string, changes: KeyChanges, now: Date): Promise<KeyRecord | undefined> {
  const row = await db
    .updateTable("api_keys")
    .set({
      ...(changes.name !== undefined && { name: changes.name }),
      ...(changes.enabled !== undefined && { enabled: changes.enabled }),
      ...(changes.expiresAt !== undefined && { expires_at: changes.expiresAt }),
      ...(changes.roles !== undefined && { roles: JSON.stringify(changes.roles) }),
      ...(changes.revokedAt !== undefined && { revoked_at: changes.revokedAt }),
      ...(changes.rateLimit !== undefined && {
        rate_limit_points: changes.rateLimit?.points ?? null,
        rate_limit_window_seconds: changes.rateLimit?.windowSeconds ?? null,
      }),
      ...(changes.maxSandboxes !== undefined && { max_sandboxes: changes.maxSandboxes }),
      updated_at: now,
    })
    .where("id", "=", id)
    .returningAll()
    .executeTakeFirst();
  return row && toRecord(row);
}

export async function deleteKey(db: Db, id: string): Promise<boolean> {
  const result = await db.deleteFrom("api_keys").where("id", "=", id).executeTakeFirst();
  return Number(result.numDeletedRows) > 0;
}

/** Disables every enabled key in scope; returns how many. */
export async function revokeAll(db: Db, scope: { org?: string; namespace?: string }, now: Date): Promise<number> {
  let query = db.updateTable("api_keys").set({ enabled: false, revoked_at: now, updated_at: now }).where("enabled", "=", true);
  if (scope.org !== undefined) query = query.where("org", "=", scope.org);
  if (scope.namespace !== undefined) query = query.where("namespace", "=", scope.namespace);
  const result = await query.executeTakeFirst();
  return Number(result.numUpdatedRows);
}

/**
 * Revokes every enabled key in scope and returns the roles each revoked key
 * held (one entry per key), so the caller can check them and roll back in
 * the same transaction: the check covers exactly the keys revoked.
 */
export async function revokeAllReturningRoles(db: Db, scope: { org?: string; namespace?: string }, now: Date): Promise<string[][]> {
  let query = db.updateTable("api_keys").set({ enabled: false, revoked_at: now, updated_at: now }).where("enabled", "=", true);
  if (scope.org !== undefined) query = query.where("org", "=", scope.org);
  if (scope.namespace !== undefined) query = query.where("namespace", "=", scope.namespace);
  const rows = await query.returning("roles").execute();
  return rows.map((row) => (Array.isArray(row.roles) ? row.roles : (JSON.parse(String(row.roles)) as string[])));
}

export async function countKeys(db: Db): Promise<{ total: number; enabled: number }> {
  const row = await db
    .selectFrom("api_keys")
    .select((eb) => [eb.fn.countAll<string>().as("total"), eb.fn.count<string>("id").filterWhere("enabled", "=", true).as("enabled")])
    .executeTakeFirstOrThrow();
  return { total: Number(row.total), enabled: Number(row.enabled) };
}
