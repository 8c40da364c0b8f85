import { sql, type Kysely } from "kysely";
import pg from "pg";
import type { Database } from "../db/schema.js";
import type { KeyCache } from "./key-cache.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";

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

export interface KeyChangeListenerOptions {
  url: string;
  /** The Postgres user when the URL names none. */
  defaultUser: string;
  cache: KeyCache;
  log: Logger;
}

export interface KeyChangeListener {
  /** Names the connection (application_name), now and after every reconnect; see server-registry.ts. */
  identify(applicationName: string): Promise<void>;
  close(): Promise<void>;
}

const RETRY_MIN_MS = 500;
/** Low: until LISTEN is back every lookup costs a query; a retry is one connection attempt. */
const RETRY_MAX_MS = 2_000;

/** LISTENs for key changes on a dedicated connection, reconnecting with backoff when it drops. */
export async function listenForKeyChanges({ url, defaultUser, cache, log }: KeyChangeListenerOptions): Promise<KeyChangeListener> {
  let client: pg.Client | undefined;
  let closed = false;
  let retryMs = RETRY_MIN_MS;
  let timer: NodeJS.Timeout | undefined;
  let applicationName: string | undefined;

  async function connect(): Promise<void> {
    const next = new pg.Client({
      connectionString: url,
      user: new URL(url).username ? undefined : defaultUser,
      connectionTimeoutMillis: 5_000,
      // A connection that died silently (a partition) is noticed, and the cache distrusted.
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      ...(applicationName !== undefined && { application_name: applicationName }),
    });
    next.on("notification", (message) => {
      if (message.channel === KEY_CHANGES_CHANNEL) applyKeyChange(cache, message.payload ?? "");
    });
    next.on("error", (error) => lost(next, error));
    next.on("end", () => lost(next, new Error("connection ended")));
    try {
      await next.connect();
      await next.query(`LISTEN ${KEY_CHANGES_CHANNEL}`);
    } catch (error) {
      await next.end().catch(() => {});
      throw error;
    }
    if (closed) {
      await next.end().catch(() => {});
      return;
    }
    client = next;
    retryMs = RETRY_MIN_MS;
    // Heard from now on; whatever changed while nobody listened is unknown, so the cache starts empty.
    cache.trust();
  }

  function lost(which: pg.Client, error: unknown): void {
    if (closed || client !== which) return;
    client = undefined;
    cache.distrust();
    log.warn("key change listener lost its connection; key cache off until it is back", errorFields(error));
    schedule();
  }

  function schedule(): void {
    if (closed || timer) return;
    timer = setTimeout(() => {
      timer = undefined;
      connect().then(
        () => {
          if (client) log.info("key change listener reconnected; key cache back on");
        },
        (error: unknown) => {
          log.warn("key change listener cannot connect; retrying", { retry_ms: retryMs, ...errorFields(error) });
          retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
          schedule();
        },
      );
    }, retryMs);
    timer.unref();
  }

  // Nothing is heard until LISTEN runs.
  cache.distrust();
  try {
    await connect();
  } catch (error) {
    log.warn("key change listener cannot connect; retrying", errorFields(error));
    schedule();
  }

  return {
    async identify(name) {
      applicationName = name;
      await client?.query("select set_config('application_name', $1, false)", [name]).catch((error: unknown) => {
        log.warn("cannot name the key change listener's connection", errorFields(error));
      });
    },
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      const current = client;
      client = undefined;
      await current?.end().catch(() => {});
    },
  };
}
