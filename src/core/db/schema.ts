import type { ColumnType, Insertable, Selectable, Updateable } from "kysely";

/** The database as Kysely sees it. Migrations never import this file. */
export interface Database {
  api_keys: ApiKeyTable;
  key_usage: KeyUsageTable;
  audit_log: AuditLogTable;
  owned_resources: OwnedResourceTable;
}

export interface ApiKeyTable {
  id: string;
  name: string;
  org: string;
  /** "*" = every namespace. */
  namespace: string;
  /** JSON array of role names. */
  roles: ColumnType<string[], string, string>;
  /** SHA-256 of the key, hex. The plaintext is never stored. */
  key_hash: string;
  display_prefix: string;
  enabled: ColumnType<boolean, boolean | undefined, boolean>;
  expires_at: Date | null;
  created_at: ColumnType<Date, Date | undefined, never>;
  updated_at: ColumnType<Date, Date | undefined, Date>;
  revoked_at: Date | null;
  last_used_at: Date | null;
  rotated_from: string | null;
  created_by: string;
  /** Requests per window; null (with the window) = the server default. */
  rate_limit_points: ColumnType<number | null, number | null | undefined, number | null>;
  rate_limit_window_seconds: ColumnType<number | null, number | null | undefined, number | null>;
  /** Live sandboxes the key may hold (proxy mode); null = no limit of its own. */
  max_sandboxes: ColumnType<number | null, number | null | undefined, number | null>;
  /** The rate-limit bucket of the key's own limit; null = its id. A rotated key takes its predecessor's. */
  budget_id: ColumnType<string | null, string | null | undefined, never>;
  /** JSON array of {id, points, window_seconds}: every rate-limited budget above the key in its creation chain. */
  parent_budgets: ColumnType<ParentBudgetJson[] | string, string | undefined, never>;
}

export interface ParentBudgetJson {
  id: string;
  points: number;
  window_seconds: number;
}

/** Requests decided per key and UTC day; rows go with their key (ON DELETE CASCADE). */
export interface KeyUsageTable {
  key_id: string;
  /** A UTC day; read it as text ("YYYY-MM-DD"), drivers turn dates into local-time Dates. */
  day: ColumnType<Date | string, string, never>;
  /** bigint: drivers may return a string. */
  allowed: ColumnType<string | number | bigint, number, number>;
  denied: ColumnType<string | number | bigint, number, number>;
}

export type ApiKeyRow = Selectable<ApiKeyTable>;
export type NewApiKeyRow = Insertable<ApiKeyTable>;
export type ApiKeyUpdate = Updateable<ApiKeyTable>;

/** One key change or refused ManageKey attempt. Never a key or a hash. */
export interface AuditLogTable {
  /** bigserial: a string, as int8 comes back. */
  id: ColumnType<string, never, never>;
  at: ColumnType<Date, Date, never>;
  /** A key id, or "local" for the operator. */
  actor: string;
  action: string;
  target: string | null;
  /** rotate: the new key. */
  new_target: string | null;
  /** null: unknown, or every org. */
  org: string | null;
  /** The namespace of the key or resource acted on; null: org-wide or unknown. */
  namespace: ColumnType<string | null, string | null | undefined, never>;
  /** "ok", "denied: <code>: <message>" or "invalid: <message>". */
  outcome: string;
  detail: ColumnType<Record<string, unknown>, string, never>;
}

export type AuditLogRow = Selectable<AuditLogTable>;
export type NewAuditLogRow = Insertable<AuditLogTable>;

/** The ownership ledger: one live row per (kind, id); released rows stay for the record. */
export interface OwnedResourceTable {
  /** bigserial: a string, as int8 comes back. */
  seq: ColumnType<string, never, never>;
  kind: string;
  id: string;
  org: string;
  namespace: string;
  key_id: string;
  created_at: Date;
  released_at: Date | null;
}

export type OwnedResourceRow = Selectable<OwnedResourceTable>;
