import type { Owner, OwnedResource, ResourceRef } from "../../src/core/resources/resource.js";
import type { ResourceLedger } from "../../src/core/resources/resource-ledger.js";

/**
 * A ResourceLedger in memory, as the contract describes it (claim idempotent
 * for the same org, release idempotent, list newest first in pages): for unit
 * tests of code built on the ledger, where the database is not the point.
 */
export function createMemoryResourceLedger(now: () => Date = () => new Date()): ResourceLedger {
  const rows = new Map<string, OwnedResource>();
  const k = (ref: ResourceRef) => `${ref.kind}/${ref.id}`;
  const live = (r: OwnedResource | undefined) => (r && r.releasedAt === null ? r : undefined);
  return {
    async claim(ref, owner) {
      const existing = live(rows.get(k(ref)));
      if (existing) return existing.org === owner.org ? { ok: true, resource: existing } : { ok: false, reason: "conflict", resource: existing };
      const resource: OwnedResource = { ...ref, ...owner, createdAt: now(), releasedAt: null };
      rows.set(k(ref), resource);
      return { ok: true, resource };
    },
    async release(ref) {
      const existing = live(rows.get(k(ref)));
      if (!existing) return false;
      rows.set(k(ref), { ...existing, releasedAt: now() });
      return true;
    },
    async owner(ref) {
      const r = live(rows.get(k(ref)));
      return r ? { org: r.org, namespace: r.namespace, keyId: r.keyId } : null;
    },
    async get(ref) { return rows.get(k(ref)) ?? null; },
    async list(f) {
      const all = [...rows.values()]
        .filter((r) => (f.kind === undefined || r.kind === f.kind) && (f.org === undefined || r.org === f.org) && (f.namespace === undefined || r.namespace === f.namespace) && (f.keyId === undefined || r.keyId === f.keyId) && (f.includeReleased || r.releasedAt === null))
        .sort((a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : -1));
      const start = f.pageToken ? Number(f.pageToken) : 0;
      const page = all.slice(start, start + f.pageSize);
      return { resources: page, nextPageToken: start + f.pageSize < all.length ? String(start + f.pageSize) : "" };
    },
    async liveIds(kind, scope) {
      return new Set([...rows.values()].filter((r) => r.releasedAt === null && r.kind === kind && (scope.org === "*" || (r.org === scope.org && (scope.namespace === "*" || r.namespace === scope.namespace)))).map((r) => r.id));
    },
    async countLive(kind, by) {
      return [...rows.values()].filter((r) => r.releasedAt === null && r.kind === kind && ("org" in by ? r.org === by.org : r.keyId === by.keyId)).length;
    },
  };
}
