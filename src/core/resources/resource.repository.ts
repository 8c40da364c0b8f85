import type { Kysely, Transaction } from "kysely";
import { decodePageToken, encodePageToken } from "../db/page-token.js";
import type { Database, OwnedResourceRow } from "../db/schema.js";
import { ALL_NAMESPACES, type OwnedResource, type Owner, type ResourceRef } from "./resource.js";

/** Repository functions take the database (or a transaction) first. */
type Db = Kysely<Database> | Transaction<Database>;

function toResource(row: OwnedResourceRow): OwnedResource {
  return {
    kind: row.kind,
    id: row.id,
    org: row.org,
    namespace: row.namespace,
    keyId: row.key_id,
    createdAt: row.created_at,
    releasedAt: row.released_at,
  };
}

/** The live entry for a resource, if any. */
export async function findLive(db: Db, ref: ResourceRef): Promise<OwnedResource | undefined> {
  const row = await db
    .selectFrom("owned_resources")
    .selectAll()
    .where("kind", "=", ref.kind)
    .where("id", "=", ref.id)
    .where("released_at", "is", null)
    .executeTakeFirst();
  return row && toResource(row);
}

/** Inserts a live entry unless one exists; answers the live entry either way. */
export async function insertLive(db: Db, ref: ResourceRef, owner: Owner, at: Date): Promise<{ inserted: boolean; resource: OwnedResource }> {
  const inserted = await db
    .insertInto("owned_resources")
    .values({ kind: ref.kind, id: ref.id, org: owner.org, namespace: owner.namespace, key_id: owner.keyId, created_at: at, released_at: null })
    .onConflict((oc) => oc.columns(["kind", "id"]).where("released_at", "is", null).doNothing())
    .returningAll()
    .executeTakeFirst();
  if (inserted) return { inserted: true, resource: toResource(inserted) };
  const live = await findLive(db, ref);
  // Released between the insert and the read (a delete racing a re-claim): claim again.
  if (!live) return insertLive(db, ref, owner, at);
  return { inserted: false, resource: live };
}

/** Releases the live entry; true when there was one. */
export async function releaseLive(db: Db, ref: ResourceRef, at: Date): Promise<boolean> {
  const result = await db
    .updateTable("owned_resources")
    .set({ released_at: at })
    .where("kind", "=", ref.kind)
    .where("id", "=", ref.id)
    .where("released_at", "is", null)
    .executeTakeFirst();
  return Number(result.numUpdatedRows) > 0;
}

export interface ResourceFilter {
  kind?: string;
  org?: string;
  /** A namespace; "*" or unset = every namespace. */
  namespace?: string;
  keyId?: string;
  includeReleased?: boolean;
  pageSize: number;
  pageToken?: string;
}

const SEQ_PATTERN = /^[0-9]{1,19}$/;

/** Newest first, keyset-paged; undefined when the page token is not one this server made. */
export async function listResources(db: Db, filter: ResourceFilter): Promise<{ resources: OwnedResource[]; nextPageToken: string } | undefined> {
  let query = db.selectFrom("owned_resources").selectAll();
  if (filter.kind !== undefined) query = query.where("kind", "=", filter.kind);
  if (filter.org !== undefined) query = query.where("org", "=", filter.org);
  if (filter.namespace !== undefined && filter.namespace !== ALL_NAMESPACES) query = query.where("namespace", "=", filter.namespace);
  if (filter.keyId !== undefined) query = query.where("key_id", "=", filter.keyId);
  if (!filter.includeReleased) query = query.where("released_at", "is", null);
  if (filter.pageToken) {
    const cursor = decodePageToken(filter.pageToken, SEQ_PATTERN);
    if (!cursor) return undefined;
    query = query.where((eb) =>
      eb.or([eb("created_at", "<", cursor.at), eb.and([eb("created_at", "=", cursor.at), eb("seq", "<", cursor.id)])]),
    );
  }
  const rows = await query.orderBy("created_at", "desc").orderBy("seq", "desc").limit(filter.pageSize + 1).execute();
  const page = rows.slice(0, filter.pageSize);
  const last = page[page.length - 1];
  const nextPageToken = rows.length > filter.pageSize && last ? encodePageToken({ at: last.created_at, id: String(last.seq) }) : "";
  return { resources: page.map(toResource), nextPageToken };
}

/** Ids of the live resources of a kind in an org (and namespace, unless "*"). */
export async function liveIdsIn(db: Db, kind: string, org: string, namespace: string): Promise<string[]> {
  let query = db.selectFrom("owned_resources").select("id").where("kind", "=", kind).where("org", "=", org).where("released_at", "is", null);
  if (namespace !== ALL_NAMESPACES) query = query.where("namespace", "=", namespace);
  return (await query.execute()).map((row) => row.id);
}

export async function countLiveBy(db: Db, kind: string, by: { org: string } | { keyId: string } | { all: true }): Promise<number> {
  let query = db
    .selectFrom("owned_resources")
    .select((eb) => eb.fn.countAll<string | number>().as("n"))
    .where("kind", "=", kind)
    .where("released_at", "is", null);
  if ("org" in by) query = query.where("org", "=", by.org);
  else if ("keyId" in by) query = query.where("key_id", "=", by.keyId);
  const row = await query.executeTakeFirstOrThrow();
  return Number(row.n);
}

/** The newest entry for a resource, live or released (ResourceService's get, idempotent release). */
export async function findLatest(db: Db, ref: ResourceRef): Promise<OwnedResource | undefined> {
  const row = await db
    .selectFrom("owned_resources")
    .selectAll()
    .where("kind", "=", ref.kind)
    .where("id", "=", ref.id)
    .orderBy("created_at", "desc")
    .orderBy("seq", "desc")
    .limit(1)
    .executeTakeFirst();
  return row && toResource(row);
}
