import type { Owner, ResourceRef } from "./resource.js";

/**
 * Owners by resource, so a warm sandbox is checked without the database,
 * and the live ids each (kind, org, namespace) owns, so a list is filtered
 * without one:
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
  /** The live ids of a kind a scope owns (lists), when cached. */
  getIds(kind: string, org: string, namespace: string): ReadonlySet<string> | undefined;
  setIds(kind: string, org: string, namespace: string, ids: ReadonlySet<string>, readAtVersion: number): void;
  /** Forgets the resource, and every cached list (a change names no org). */
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
  /** Few: one per (kind, org, namespace) listed within a TTL; dropped whole on any change. */
  const lists = new Map<string, { ids: ReadonlySet<string>; expires: number }>();
  let version = 0;
  let trusted = true;
  const clear = () => {
    version++;
    entries.clear();
    lists.clear();
  };
  const listKey = (kind: string, org: string, namespace: string) => `${kind}\0${org}\0${namespace}`;
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
    getIds(kind, org, namespace) {
      if (!trusted) return undefined;
      const key = listKey(kind, org, namespace);
      const entry = lists.get(key);
      if (!entry) return undefined;
      if (entry.expires <= now()) {
        lists.delete(key);
        return undefined;
      }
      return entry.ids;
    },
    setIds(kind, org, namespace, ids, readAtVersion) {
      if (!trusted || ttlMs <= 0 || readAtVersion !== version) return;
      if (lists.size >= maxEntries) lists.clear();
      lists.set(listKey(kind, org, namespace), { ids, expires: now() + ttlMs });
    },
    get version() {
      return version;
    },
    invalidate(ref) {
      version++;
      entries.delete(keyOf(ref));
      lists.clear();
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
