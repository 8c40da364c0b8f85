import { sql, type Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import type { KeyCache } from "./key-cache.js";

/**
 * Over Postgres, many processes share the keys: several servers, and the CLI,
 * which then changes keys in-process. Each server caches key records, so a
 * change made elsewhere (a revoke, a reset) would go unseen until the cache
 * entry expires. Every change is announced with NOTIFY and every server
 * LISTENs and drops what changed, so a revoked key stops working everywhere
 * at once. While the listening connection is down (not yet up, lost, being
 * retried) a change would go unheard, so the cache is distrusted: every
 * lookup asks the database until LISTEN is back, and the cache starts empty
 * then. Retries are frequent (at most 2 s apart) so the cache is back soon
 * after the database is.
 */
export const KEY_CHANGES_CHANNEL = "keygate_key_changes";

export type KeyChange = { kind: "key"; id: string } | { kind: "created" } | { kind: "all" };

export type AnnounceKeyChange = (change: KeyChange) => Promise<void>;

function encode(change: KeyChange): string {
  switch (change.kind) {
    case "key":
      return `key:${change.id}`;
    case "created":
      return "created";
    case "all":
      return "all";
  }
}

/** Applies one announced change to a cache; an unreadable payload clears it (fail safe). */
export function applyKeyChange(cache: KeyCache, payload: string): void {
  if (payload.startsWith("key:")) cache.invalidateId(payload.slice(4));
  else if (payload === "created") cache.dropNegatives();
  else cache.clear();
}

export function createKeyChangeAnnouncer(db: Kysely<Database>): AnnounceKeyChange {
  return async (change) => {
    await sql`select pg_notify(${KEY_CHANGES_CHANNEL}, ${encode(change)})`.execute(db);
  };
}
