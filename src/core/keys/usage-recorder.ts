import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import { recordUsage, type DayCount } from "./key-usage.repository.js";

/**
 * Keeps `last_used_at` and the per-day request counts without a database
 * write per decision: decisions note them in memory, and a timer writes the
 * batch in one statement. A crash loses at most one interval of last-used
 * times and counts, never a decision; a failed write keeps them for the next.
 */
export interface UsageRecorder {
  /** A request allowed for the key: its last-used time and allowed count. */
  touch(keyId: string, at: Date): void;
  /** A request denied for a known key (forbidden, rate limited, revoked, expired, …). */
  countDenied(keyId: string, at: Date): void;
  flush(): Promise<void>;
  /** Last time seen in memory and not yet written (for get/list freshness). */
  pending(keyId: string): Date | undefined;
  /** Counts noted in memory and not yet written, by UTC day ("YYYY-MM-DD"). */
  pendingCounts(keyId: string): ReadonlyMap<string, DayCount> | undefined;
  stop(): Promise<void>;
}

let dayMemo = { start: 0, end: 0, day: "" };

/** The UTC day of a time, "YYYY-MM-DD". */
export function utcDay(at: Date): string {
  const ms = at.getTime();
  // Called per decision: the day changes once a day, so remember the last one.
  if (ms >= dayMemo.start && ms < dayMemo.end) return dayMemo.day;
  const day = at.toISOString().slice(0, 10);
  const start = Date.parse(`${day}T00:00:00.000Z`);
  dayMemo = { start, end: start + 86_400_000, day };
  return day;
}


type Counts = Map<string, Map<string, DayCount>>;

function add(counts: Counts, keyId: string, day: string, allowed: number, denied: number): void {
  let days = counts.get(keyId);
  if (!days) counts.set(keyId, (days = new Map()));
  const count = days.get(day);
  if (count) {
    count.allowed += allowed;
    count.denied += denied;
  } else days.set(day, { allowed, denied });
}

/**
 * Keys per statement. PGlite runs in-process: one statement for thousands of
 * keys held every decision behind it for ~100 ms. Smaller statements, with
 * the event loop given a turn between them, let decisions through.
 */
export const FLUSH_CHUNK_KEYS = 100;

export function createUsageRecorder(db: Kysely<Database>, intervalMs: number, onError: (error: unknown) => void, chunkKeys = FLUSH_CHUNK_KEYS): UsageRecorder {
  let lastUsed = new Map<string, Date>();
  let counts: Counts = new Map();
  let flushing: Promise<void> = Promise.resolve();

  /** Keeps a batch's unwritten keys for the next attempt: times newest wins, counts add up. */
  function keep(ids: readonly string[], times: ReadonlyMap<string, Date>, batch: Counts): void {
    for (const id of ids) {
      const at = times.get(id);
      const newer = lastUsed.get(id);
      if (at && (!newer || newer < at)) lastUsed.set(id, at);
      for (const [day, c] of batch.get(id) ?? []) add(counts, id, day, c.allowed, c.denied);
    }
  }

  /** Each chunk is one statement (all or nothing); a failed chunk and those after it are kept. */
  async function write(times: ReadonlyMap<string, Date>, batch: Counts): Promise<void> {
    const ids = [...new Set([...times.keys(), ...batch.keys()])];
    for (let start = 0; start < ids.length; start += chunkKeys) {
      if (start > 0) await new Promise((resolve) => setImmediate(resolve));
      const chunkTimes = new Map<string, Date>();
      const chunkCounts: Counts = new Map();
      for (const id of ids.slice(start, start + chunkKeys)) {
        const at = times.get(id);
        if (at) chunkTimes.set(id, at);
        const days = batch.get(id);
        if (days) chunkCounts.set(id, days);
      }
      try {
        await recordUsage(db, chunkTimes, chunkCounts);
      } catch (error) {
        keep(ids.slice(start), times, batch);
        onError(error);
        return;
      }
    }
  }

  async function flush(): Promise<void> {
    await flushing;
    if (lastUsed.size === 0 && counts.size === 0) return;
    const times = lastUsed;
    const batch = counts;
    lastUsed = new Map();
    counts = new Map();
    flushing = write(times, batch);
    await flushing;
  }

  const timer = setInterval(() => void flush(), intervalMs);
  timer.unref();

  return {
    touch(keyId, at) {
      lastUsed.set(keyId, at);
      add(counts, keyId, utcDay(at), 1, 0);
    },
    countDenied(keyId, at) {
      add(counts, keyId, utcDay(at), 0, 1);
    },
    flush,
    pending: (keyId) => lastUsed.get(keyId),
    pendingCounts: (keyId) => counts.get(keyId),
    async stop() {
      clearInterval(timer);
      await flush();
    },
  };
}
