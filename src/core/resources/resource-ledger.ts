import { sql, type Kysely } from "kysely";
import { withDeadline } from "../db/deadline.js";
import type { Database } from "../db/schema.js";
import type { ResourceCache } from "./resource-cache.js";
import { countLiveBy, findLive, insertLive, listResources, liveIdsIn, releaseLive, type ResourceFilter } from "./resource.repository.js";
import type { OwnedResource, Owner, ResourceRef } from "./resource.js";

/**
 * The ownership ledger: who owns each resource, cached for decisions, with
 * every change announced (Postgres NOTIFY on RESOURCE_CHANGES_CHANNEL) so
 * every instance's cache drops it at once; a sandbox created through one
 * instance is owned in all of them.
 */

export const RESOURCE_CHANGES_CHANNEL = "keygate_resource_changes";

export type ClaimResult = { ok: true; resource: OwnedResource; created: boolean } | { ok: false; reason: "conflict"; resource: OwnedResource };

export interface ResourceLedger {
  /** Records the owner; the same org and namespace claiming again is a no-op, anyone else a conflict. */
  claim(ref: ResourceRef, owner: Owner): Promise<ClaimResult>;
  /** True when a live entry was released (idempotent). */
  release(ref: ResourceRef): Promise<boolean>;
  /** The live owner, from the cache when warm (decisions); null = nobody owns it. */
  owner(ref: ResourceRef): Promise<Owner | null>;
  /** The owner if the cache holds it (undefined: not cached; ask owner()). */
  cachedOwner(ref: ResourceRef): Owner | null | undefined;
  get(ref: ResourceRef): Promise<OwnedResource | null>;
  /** Undefined when the page token is not one this server made. */
  list(filter: ResourceFilter): Promise<{ resources: OwnedResource[]; nextPageToken: string } | undefined>;
  /** Ids of the live resources a scope may see (namespace "*" = the whole org). */
  liveIds(kind: string, scope: { org: string; namespace: string }): Promise<ReadonlySet<string>>;
  /** Live resources of a kind: in an org, made by a key, or all. */
  countLive(kind: string, by: { org: string } | { keyId: string } | { all: true }): Promise<number>;
  readonly cache: ResourceCache;
}

export interface ResourceLedgerDeps {
  db: Kysely<Database>;
  cache: ResourceCache;
  now: () => Date;
  /** Announce changes to other processes (Postgres); unset = this process is the only one (PGlite). */
  announce?: boolean;
  /** An owner lookup not answered in this long fails (the decision: unavailable). */
  timeoutMs?: number;
  /** A change committed but not announced: other instances see it when their cache entry expires. */
  onError?: (error: unknown) => void;
}

export class OwnerLookupTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`owner lookup: no answer from the database in ${timeoutMs} ms`);
    this.name = "OwnerLookupTimeoutError";
  }
}

/** Payload: "kind/id" (ids hold no "/"); anything else clears the cache. */
export function encodeResourceChange(ref: ResourceRef): string {
  return `${ref.kind}/${ref.id}`;
}

export function applyResourceChange(cache: ResourceCache, payload: string): void {
  const slash = payload.indexOf("/");
  if (slash > 0 && slash < payload.length - 1) cache.invalidate({ kind: payload.slice(0, slash), id: payload.slice(slash + 1) });
  else cache.clear();
}

export function createResourceLedger({ db, cache, now, announce = false, timeoutMs = 2_000, onError }: ResourceLedgerDeps): ResourceLedger {
  async function changed(ref: ResourceRef): Promise<void> {
    cache.invalidate(ref);
    if (!announce) return;
    try {
      await sql`select pg_notify(${RESOURCE_CHANGES_CHANNEL}, ${encodeResourceChange(ref)})`.execute(db);
    } catch (error) {
      onError?.(error);
    }
  }

  return {
    cache,
    async claim(ref, owner) {
      const { inserted, resource } = await insertLive(db, ref, owner, now());
      if (inserted) {
        await changed(ref);
        return { ok: true, resource, created: true };
      }
      if (resource.org === owner.org && resource.namespace === owner.namespace) return { ok: true, resource, created: false };
      return { ok: false, reason: "conflict", resource };
    },
    async release(ref) {
      const released = await releaseLive(db, ref, now());
      if (released) await changed(ref);
      return released;
    },
    cachedOwner: (ref) => cache.get(ref),
    async owner(ref) {
      const cached = cache.get(ref);
      if (cached !== undefined) return cached;
      const version = cache.version;
      const live = await withDeadline(findLive(db, ref), timeoutMs, () => new OwnerLookupTimeoutError(timeoutMs));
      const owner = live ? { org: live.org, namespace: live.namespace, keyId: live.keyId } : null;
      cache.set(ref, owner, version);
      return owner;
    },
    async get(ref) {
      return (await findLive(db, ref)) ?? null;
    },
    list: (filter) => listResources(db, filter),
    async liveIds(kind, scope) {
      const cached = cache.getIds(kind, scope.org, scope.namespace);
      if (cached) return cached;
      const version = cache.version;
      const ids = new Set(await withDeadline(liveIdsIn(db, kind, scope.org, scope.namespace), timeoutMs, () => new OwnerLookupTimeoutError(timeoutMs)));
      cache.setIds(kind, scope.org, scope.namespace, ids, version);
      return ids;
    },
    countLive: (kind, by) => countLiveBy(db, kind, by),
  };
}
