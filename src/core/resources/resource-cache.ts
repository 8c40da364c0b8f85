import type { Owner, ResourceRef } from "./resource.js";

/**
 * Owners by resource, so a warm sandbox is checked without the database:
 * bounded, short-lived, with unowned answers cached shorter (a flood of
 * made-up ids is not a database flood). Like the key cache it is only as good
 * as the change feed: while the feed (Postgres LISTEN) is down it is
 * distrusted and serves nothing.
 */
export interface ResourceCache {
  get(ref: ResourceRef): Owner | null | undefined;
  /** Remember a lookup; not kept when anything was invalidated since `readAtVersion`. */
  set(ref: ResourceRef, owner: Owner | null, readAtVersion: number): void;
  readonly version: number;
  invalidate(ref: ResourceRef): void;
  clear(): void;
  distrust(): void;
  trust(): void;
  readonly size: number;
}

export interface ResourceCacheOptions {
  ttlMs: number;
  negativeTtlMs: number;
  maxEntries: number;
  now: () => number;
}

const keyOf = (ref: ResourceRef) => `${ref.kind}\0${ref.id}`;

export function createResourceCache({ ttlMs, negativeTtlMs, maxEntries, now }: ResourceCacheOptions): ResourceCache {
  const entries = new Map<string, { owner: Owner | null; expires: number }>();
  let version = 0;
  let trusted = true;
  const clear = () => {
    version++;
    entries.clear();
  };
  return {
    get(ref) {
      if (!trusted) return undefined;
      const key = keyOf(ref);
      const entry = entries.get(key);
      if (!entry) return undefined;
      if (entry.expires <= now()) {
        entries.delete(key);
        return undefined;
      }
      return entry.owner;
    },
    set(ref, owner, readAtVersion) {
      if (!trusted || ttlMs <= 0 || readAtVersion !== version) return;
      const key = keyOf(ref);
      entries.delete(key);
      const at = now();
      // Insertion order: expired entries gather at the front; drop a few per insert.
      for (let i = 0; i < 4; i++) {
        const first = entries.entries().next().value;
        if (first === undefined || first[1].expires > at) break;
        entries.delete(first[0]);
      }
      while (entries.size >= maxEntries) {
        const oldest = entries.keys().next().value;
        if (oldest === undefined) break;
        entries.delete(oldest);
      }
      entries.set(key, { owner, expires: at + (owner ? ttlMs : negativeTtlMs) });
    },
    get version() {
      return version;
    },
    invalidate(ref) {
      version++;
      entries.delete(keyOf(ref));
    },
    clear,
    distrust() {
      trusted = false;
      clear();
    },
    trust() {
      clear();
      trusted = true;
    },
    get size() {
      return entries.size;
    },
  };
}
