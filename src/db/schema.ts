import type { ColumnType, Insertable, Selectable, Updateable } from "kysely";

/** The database as Kysely sees it. Migrations never import this file. */
export interface Database {
  api_keys: ApiKeyTable;
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
}

export type ApiKeyRow = Selectable<ApiKeyTable>;
export type NewApiKeyRow = Insertable<ApiKeyTable>;
export type ApiKeyUpdate = Updateable<ApiKeyTable>;
