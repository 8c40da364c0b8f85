import pg from "pg";
import type { KeyCache } from "../core/keys/key-cache.js";
import { applyKeyChange, KEY_CHANGES_CHANNEL } from "../core/keys/key-changes.js";
import type { ResourceCache } from "../core/resources/resource-cache.js";
import { applyResourceChange, RESOURCE_CHANGES_CHANNEL } from "../core/resources/resource-ledger.js";
import type { Logger } from "../telemetry/logger.js";
import { errorFields } from "../telemetry/logger.js";

/**
 * A server's ear for key changes made elsewhere (core/keys/key-changes.ts):
 * LISTEN on a dedicated connection, reconnecting with backoff when it drops;
 * while it is down the key cache is distrusted.
 */

export interface KeyChangeListenerOptions {
  url: string;
  /** The Postgres user when the URL names none. */
  defaultUser: string;
  cache: KeyCache;
  /** The owners cache, kept by the same connection (its own channel); unset = keys only. */
  resourceCache?: ResourceCache;
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
export async function listenForKeyChanges({ url, defaultUser, cache, resourceCache, log }: KeyChangeListenerOptions): Promise<KeyChangeListener> {
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
      else if (message.channel === RESOURCE_CHANGES_CHANNEL && resourceCache) applyResourceChange(resourceCache, message.payload ?? "");
    });
    next.on("error", (error) => lost(next, error));
    next.on("end", () => lost(next, new Error("connection ended")));
    try {
      await next.connect();
      await next.query(`LISTEN ${KEY_CHANGES_CHANNEL}`);
      if (resourceCache) await next.query(`LISTEN ${RESOURCE_CHANGES_CHANNEL}`);
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
    resourceCache?.trust();
  }

  function lost(which: pg.Client, error: unknown): void {
    if (closed || client !== which) return;
    client = undefined;
    cache.distrust();
    resourceCache?.distrust();
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
  resourceCache?.distrust();
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
