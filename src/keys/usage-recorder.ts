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

export function createUsageRecorder(db: Kysely<Database>, intervalMs: number, onError: (error: unknown) => void): UsageRecorder {
  let lastUsed = new Map<string, Date>();
  let counts: Counts = new Map();
  let flushing: Promise<void> = Promise.resolve();

  async function flush(): Promise<void> {
    await flushing;
    if (lastUsed.size === 0 && counts.size === 0) return;
    const times = lastUsed;
    const batch = counts;
    lastUsed = new Map();
    counts = new Map();
    flushing = recordUsage(db, times, batch).catch((error: unknown) => {
      // Keep everything for the next attempt: times newest wins, counts add up.
      for (const [id, at] of times) {
        const newer = lastUsed.get(id);
        if (!newer || newer < at) lastUsed.set(id, at);
      }
      for (const [id, days] of batch) for (const [day, c] of days) add(counts, id, day, c.allowed, c.denied);
      onError(error);
    });
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
