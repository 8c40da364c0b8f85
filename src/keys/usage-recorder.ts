import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import { recordLastUsed } from "./key.repository.js";

/**
 * Keeps `last_used_at` without a database write per decision: decisions
 * note the time in memory, and a timer writes the batch. A crash loses at
 * most one interval of last-used times, never a decision.
 */
export interface UsageRecorder {
  touch(keyId: string, at: Date): void;
  flush(): Promise<void>;
  /** Last time seen in memory and not yet written (for get/list freshness). */
  pending(keyId: string): Date | undefined;
  stop(): Promise<void>;
}

export function createUsageRecorder(db: Kysely<Database>, intervalMs: number, onError: (error: unknown) => void): UsageRecorder {
  let batch = new Map<string, Date>();
  let flushing: Promise<void> = Promise.resolve();

  async function flush(): Promise<void> {
    await flushing;
    if (batch.size === 0) return;
    const current = batch;
    batch = new Map();
    flushing = recordLastUsed(db, current).catch((error: unknown) => {
      // Keep the times for the next attempt (newest wins).
      for (const [id, at] of current) if (!batch.has(id)) batch.set(id, at);
      onError(error);
    });
    await flushing;
  }

  const timer = setInterval(() => void flush(), intervalMs);
  timer.unref();

  return {
    touch(keyId, at) {
      batch.set(keyId, at);
    },
    flush,
    pending: (keyId) => batch.get(keyId),
    async stop() {
      clearInterval(timer);
      await flush();
    },
  };
}
