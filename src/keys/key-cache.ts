import type { KeyRecord } from "./key-record.js";

/**
 * Key records by key hash, so a warm key is decided without the database.
 * Bounded (least recently inserted goes first) and short-lived: another
 * process (the CLI on Postgres, another instance) may change a key, and the
 * TTL bounds how long this one can miss it. Lookups of unknown hashes are
 * cached too ("negative" entries, shorter TTL) so a flood of made-up keys
 * cannot become a database flood; any key creation drops them at once.
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

export function createKeyCache({ ttlMs, negativeTtlMs, maxEntries, now }: KeyCacheOptions): KeyCache {
  const byHash = new Map<string, Entry>();
  const hashById = new Map<string, string>();
  let version = 0;

  function remove(hash: string): void {
    const entry = byHash.get(hash);
    if (!entry) return;
    byHash.delete(hash);
    if (entry.record) hashById.delete(entry.record.id);
  }

  return {
    get(hash) {
      const entry = byHash.get(hash);
      if (!entry) return undefined;
      if (entry.expires <= now()) {
        remove(hash);
        return undefined;
      }
      return entry.record;
    },
    set(hash, record, readAtVersion) {
      if (ttlMs <= 0) return;
      if (readAtVersion !== undefined && readAtVersion !== version) return;
      remove(hash);
      while (byHash.size >= maxEntries) {
        const oldest = byHash.keys().next().value;
        if (oldest === undefined) break;
        remove(oldest);
      }
      byHash.set(hash, { record, expires: now() + (record ? ttlMs : negativeTtlMs) });
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
    clear() {
      version++;
      byHash.clear();
      hashById.clear();
    },
    get size() {
      return byHash.size;
    },
    get version() {
      return version;
    },
  };
}
