import type { KeyRecord } from "./key-record.js";

/**
 * Key records by key hash, so a warm key is decided without the database.
 * Bounded (least recently inserted goes first) and short-lived: another
 * process (the CLI on Postgres, another instance) may change a key, and the
 * TTL bounds how long this one can miss it. Lookups of unknown hashes are
 * cached too ("negative" entries, shorter TTL) so a flood of made-up keys
 * cannot become a database flood; any key creation drops them at once.
 *
 * Where changes are announced (Postgres NOTIFY, see server/key-changes.ts),
 * the cache is only as good as the feed: while the feed is down a revoke
 * elsewhere would go unheard, so the cache is distrusted (serves nothing,
 * keeps nothing) until the feed is back, and starts empty then.
 */
export interface KeyCache {
  get(hash: string): KeyRecord | null | undefined;
  /**
   * Remember a lookup. Pass the `version` read before the database was
   * asked: if any invalidation happened meanwhile, the answer may predate a
   * revoke, delete or create, and is not kept.
   */
  set(hash: string, record: KeyRecord | null, readAtVersion?: number): void;
  /** Changes on every invalidation (invalidateId, dropNegatives, clear). */
  readonly version: number;
  /** Forget a key by id (after it changed). */
  invalidateId(id: string): void;
  /** Forget all negative entries (after a key was created). */
  dropNegatives(): void;
  clear(): void;
  /**
   * Stop serving and keeping entries (the change feed is down), forgetting
   * all: every lookup goes to the database until trust() is called.
   */
  distrust(): void;
  /** Serve and keep entries again (the change feed is back), starting empty. */
  trust(): void;
  /** False between distrust() and trust(); a new cache is trusted. */
  readonly trusted: boolean;
  readonly size: number;
}

export interface KeyCacheOptions {
  ttlMs: number;
  negativeTtlMs: number;
  maxEntries: number;
  now: () => number;
}

interface Entry {
  record: KeyRecord | null;
  expires: number;
}

/** Expired entries dropped from the front on each insert (amortized; bounds memory to what was used within a TTL). */
const SWEEP_PER_SET = 4;

export function createKeyCache({ ttlMs, negativeTtlMs, maxEntries, now }: KeyCacheOptions): KeyCache {
  const byHash = new Map<string, Entry>();
  const hashById = new Map<string, string>();
  let version = 0;
  let trusted = true;

  function clear(): void {
    version++;
    byHash.clear();
    hashById.clear();
  }

  function remove(hash: string): void {
    const entry = byHash.get(hash);
    if (!entry) return;
    byHash.delete(hash);
    if (entry.record) hashById.delete(entry.record.id);
  }

  return {
    get(hash) {
      if (!trusted) return undefined;
      const entry = byHash.get(hash);
      if (!entry) return undefined;
      if (entry.expires <= now()) {
        remove(hash);
        return undefined;
      }
      return entry.record;
    },
    set(hash, record, readAtVersion) {
      if (ttlMs <= 0 || !trusted) return;
      if (readAtVersion !== undefined && readAtVersion !== version) return;
      remove(hash);
      const at = now();
      // Entries sit in insertion order, so the expired ones are mostly at the
      // front: drop a few per insert, or a key looked up once (then revoked,
      // or never again) would hold its record until the size bound is reached.
      for (let i = 0; i < SWEEP_PER_SET; i++) {
        const first = byHash.entries().next().value;
        if (first === undefined || first[1].expires > at) break;
        remove(first[0]);
      }
      while (byHash.size >= maxEntries) {
        const oldest = byHash.keys().next().value;
        if (oldest === undefined) break;
        remove(oldest);
      }
      byHash.set(hash, { record, expires: at + (record ? ttlMs : negativeTtlMs) });
      if (record) hashById.set(record.id, hash);
    },
    invalidateId(id) {
      version++;
      const hash = hashById.get(id);
      if (hash !== undefined) remove(hash);
    },
    dropNegatives() {
      version++;
      for (const [hash, entry] of byHash) if (!entry.record) byHash.delete(hash);
    },
    clear,
    distrust() {
      trusted = false;
      clear();
    },
    trust() {
      // Cleared (the version moves on): a lookup begun before now may have read what the feed did not cover.
      clear();
      trusted = true;
    },
    get trusted() {
      return trusted;
    },
    get size() {
      return byHash.size;
    },
    get version() {
      return version;
    },
  };
}
