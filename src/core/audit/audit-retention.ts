import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import { deleteAuditEventsBefore } from "./audit.repository.js";

/**
 * Audit retention (KEYGATE_AUDIT_RETENTION): rows older than the retention
 * are deleted in the background, in small batches with a pause between them,
 * so pruning a large backlog never holds the database (PGlite has a single
 * connection) for long. Runs once at start and then every `everyMs`.
 */

export interface AuditPrunerOptions {
  db: Kysely<Database>;
  /** Rows older than this go; null keeps them forever. */
  retentionMs: number | null;
  now: () => Date;
  batchSize?: number;
  everyMs?: number;
  /** Between batches: lets decisions waiting for the database go first. */
  pause?: () => Promise<void>;
  onError?: (error: unknown) => void;
  onPruned?: (count: number, cutoff: Date) => void;
}

export interface AuditPruner {
  /** Deletes everything older than the retention, batch by batch; answers how many rows went. */
  pruneNow(): Promise<number>;
  /** Prunes now and then every `everyMs`. */
  start(): void;
  /** Stops the timer and waits for a run in progress to end its current batch. */
  stop(): Promise<void>;
}

export const AUDIT_PRUNE_BATCH = 1_000;
export const AUDIT_PRUNE_EVERY_MS = 3_600_000;

const nextTick = () => new Promise<void>((resolve) => setTimeout(resolve, 10));

export function createAuditPruner({
  db,
  retentionMs,
  now,
  batchSize = AUDIT_PRUNE_BATCH,
  everyMs = AUDIT_PRUNE_EVERY_MS,
  pause = nextTick,
  onError = () => {},
  onPruned,
}: AuditPrunerOptions): AuditPruner {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<number> | undefined;
  let stopped = false;

  async function prune(): Promise<number> {
    if (retentionMs === null) return 0;
    const cutoff = new Date(now().getTime() - retentionMs);
    let total = 0;
    for (;;) {
      const deleted = await deleteAuditEventsBefore(db, cutoff, batchSize);
      total += deleted;
      if (deleted < batchSize || stopped) break;
      await pause();
    }
    if (total > 0) onPruned?.(total, cutoff);
    return total;
  }

  function pruneNow(): Promise<number> {
    running ??= prune().finally(() => {
      running = undefined;
    });
    return running;
  }

  const background = () => void pruneNow().catch(onError);

  return {
    pruneNow,
    start() {
      if (retentionMs === null || timer) return;
      stopped = false;
      background();
      timer = setInterval(background, everyMs);
      timer.unref();
    },
    async stop() {
      stopped = true;
      if (timer) clearInterval(timer);
      timer = undefined;
      await running?.catch(() => {});
    },
  };
}
