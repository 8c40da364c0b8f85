import type { Kysely } from "kysely";
import { withDeadline } from "../db/deadline.js";
import type { Database } from "../db/schema.js";
import type { KeyCache } from "./key-cache.js";
import { hashKey, isWellFormedKey, MAX_CREDENTIAL_LENGTH } from "./key-format.js";
import type { KeyRecord } from "./key-record.js";
import { findKeyByHash } from "./key.repository.js";

export type KeyLookup =
  | { status: "ok"; key: KeyRecord }
  | { status: "invalid" }
  | { status: "revoked"; key: KeyRecord }
  | { status: "expired"; key: KeyRecord };

export interface KeyLookupDeps {
  db: Kysely<Database>;
  cache: KeyCache;
  keyPrefix: string;
  now: () => Date;
  /** Cache hits and misses, database lookup times (metrics); unset = no clock is read. */
  metrics?: KeyLookupMetrics;
  /** A database lookup not answered in this long fails (default LOOKUP_TIMEOUT_MS). */
  timeoutMs?: number;
}

/**
 * A database that stopped answering (hung, partitioned) would otherwise hold
 * a decision until the connection dies, which may be never: past this, the
 * lookup fails and the decision is a prompt "unavailable" deny. The query
 * itself is left to finish or fail on its connection; its answer is dropped.
 */
export const LOOKUP_TIMEOUT_MS = 2_000;

/** The database did not answer a key lookup in time. */
export class KeyLookupTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`key lookup: no answer from the database in ${timeoutMs} ms`);
    this.name = "KeyLookupTimeoutError";
  }
}

/** What a lookup reports (a malformed credential reaches neither the cache nor the database: not counted). */
export interface KeyLookupMetrics {
  cacheHit(): void;
  /** A hash remembered as unknown. */
  cacheNegativeHit(): void;
  cacheMiss(): void;
  /** One database lookup (after a miss) took this long, in seconds, whether it answered or failed. */
  databaseLookup(seconds: number): void;
}

/**
 * From a presented credential to the key's state. A malformed credential
 * (wrong prefix, length, alphabet or checksum) is invalid without a database
 * query. Database errors (and a database too slow to answer) are thrown:
 * the caller must fail closed.
 */
export function createKeyLookup({ db, cache, keyPrefix, now, metrics, timeoutMs = LOOKUP_TIMEOUT_MS }: KeyLookupDeps) {
  return async function lookupKey(credential: string): Promise<KeyLookup> {
    if (credential.length > MAX_CREDENTIAL_LENGTH || !isWellFormedKey(credential, keyPrefix)) return { status: "invalid" };
    const hash = hashKey(credential);
    let record = cache.get(hash);
    if (record === undefined) {
      metrics?.cacheMiss();
      // A revoke or delete that lands while this query is in flight must not
      // be undone by caching what the query read before it.
      const version = cache.version;
      const started = metrics ? performance.now() : 0;
      try {
        record = (await withDeadline(findKeyByHash(db, hash), timeoutMs, () => new KeyLookupTimeoutError(timeoutMs))) ?? null;
      } finally {
        metrics?.databaseLookup((performance.now() - started) / 1000);
      }
      cache.set(hash, record, version);
    } else if (metrics) {
      if (record === null) metrics.cacheNegativeHit();
      else metrics.cacheHit();
    }
    return stateOf(record, now);
  };
}

export type LookupKey = ReturnType<typeof createKeyLookup>;

/** What a lookup would answer without the database, or undefined when it would have to ask. */
export type KnownKey = (credential: string) => KeyLookup | undefined;

/**
 * The lookup's answer when it costs no query: a malformed credential, or a
 * hash the cache holds (as a key or as unknown). The failed-auth guard asks
 * this first and consults its counter only for what it cannot answer.
 */
export function createKnownKey({ cache, keyPrefix, now, metrics }: Pick<KeyLookupDeps, "cache" | "keyPrefix" | "now" | "metrics">): KnownKey {
  return (credential) => {
    if (credential.length > MAX_CREDENTIAL_LENGTH || !isWellFormedKey(credential, keyPrefix)) return { status: "invalid" };
    const record = cache.get(hashKey(credential));
    if (record === undefined) return undefined;
    if (record === null) metrics?.cacheNegativeHit();
    else metrics?.cacheHit();
    return stateOf(record, now);
  };
}

function stateOf(record: KeyRecord | null, now: () => Date): KeyLookup {
  if (!record) return { status: "invalid" };
  if (!record.enabled) return { status: "revoked", key: record };
  if (record.expiresAt && record.expiresAt.getTime() <= now().getTime()) return { status: "expired", key: record };
  return { status: "ok", key: record };
}
