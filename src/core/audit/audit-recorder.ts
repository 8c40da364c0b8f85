import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import { REPEATED, type NewAuditEvent } from "./audit-event.js";
import { insertAuditEvents } from "./audit.repository.js";
import { boundedEvent } from "./audit-text.js";

/**
 * Refused attempts, recorded without the caller waiting for the database and
 * without letting a flood of them fill it:
 *
 * - identical refusals (same actor, action, target and outcome) within one
 *   window make one row as they start, then, when the window closes, one more
 *   saying `repeated: N` (N more since the first);
 * - at most `maxGroups` such groups are tracked: beyond that, new refusals are
 *   sampled (1 row in `sampleEvery`, the rest only counted), so memory stays
 *   bounded whatever an attacker varies;
 * - rows wait in a bounded queue written in batches (one INSERT per batch);
 *   a full queue drops rows and counts them (`onDropped`, logged by serve).
 *
 * Successful changes do not come here: they commit with their own row in
 * their transaction (key-audit.ts). `flush()` is the deterministic trigger
 * tests use (with `flushEveryMs: 0` and a fake `now`); reading the audit log
 * flushes first, so a caller sees its own refusals.
 */

export interface AuditRecorderOptions {
  db: Kysely<Database>;
  now: () => Date;
  /** How long identical refusals are collapsed into one group. */
  windowMs?: number;
  maxGroups?: number;
  sampleEvery?: number;
  /** Rows waiting to be written; beyond it rows are dropped and counted. */
  maxQueue?: number;
  /** Rows per INSERT. */
  batchSize?: number;
  /** Background flush period; 0: only explicit flush() and stop() write (tests). */
  flushEveryMs?: number;
  onError?: (error: unknown) => void;
  /** Rows not written since the last report: dropped (queue full) and sampled away. */
  onDropped?: (counts: { dropped: number; sampledOut: number }) => void;
}

export interface AuditRecorderStats {
  groups: number;
  queued: number;
  /** Totals since start. */
  written: number;
  collapsed: number;
  sampledOut: number;
  dropped: number;
}

export interface AuditRecorder {
  /** A refused attempt: queued (or counted) at once, never awaited. */
  refused(event: NewAuditEvent): void;
  /** Closes windows that have ended and writes everything queued. */
  flush(): Promise<void>;
  stats(): AuditRecorderStats;
  /** Closes every window, writes what is left, stops the timer. */
  stop(): Promise<void>;
}

interface Group {
  first: NewAuditEvent;
  firstAt: number;
  lastAt: Date;
  /** Refusals after the first. */
  count: number;
}

export const AUDIT_COLLAPSE_WINDOW_MS = 60_000;
export const AUDIT_MAX_GROUPS = 1_000;
export const AUDIT_SAMPLE_EVERY = 100;
export const AUDIT_MAX_QUEUE = 5_000;

export function createAuditRecorder({
  db,
  now,
  windowMs = AUDIT_COLLAPSE_WINDOW_MS,
  maxGroups = AUDIT_MAX_GROUPS,
  sampleEvery = AUDIT_SAMPLE_EVERY,
  maxQueue = AUDIT_MAX_QUEUE,
  batchSize = 500,
  flushEveryMs = 1_000,
  onError = () => {},
  onDropped,
}: AuditRecorderOptions): AuditRecorder {
  // Insertion order is start order: the oldest windows come first.
  const groups = new Map<string, Group>();
  let queue: NewAuditEvent[] = [];
  let flushing: Promise<void> = Promise.resolve();
  let pendingFlush = false;
  let sampledSeen = 0;
  const totals = { written: 0, collapsed: 0, sampledOut: 0, dropped: 0 };
  const unreported = { dropped: 0, sampledOut: 0 };

  function enqueue(event: NewAuditEvent): void {
    if (queue.length >= maxQueue) {
      totals.dropped++;
      unreported.dropped++;
      return;
    }
    queue.push(event);
    // A full batch is written without waiting for the timer.
    if (queue.length >= batchSize && !pendingFlush) void flush();
  }

  function close(group: Group): void {
    if (group.count === 0) return;
    enqueue({ ...group.first, at: group.lastAt, detail: { ...group.first.detail, [REPEATED]: group.count, first_at: group.first.at.toISOString() } });
  }

  function closeEnded(at: number, all: boolean): void {
    for (const [key, group] of groups) {
      if (!all && at - group.firstAt < windowMs) break;
      groups.delete(key);
      close(group);
    }
  }

  async function write(): Promise<void> {
    closeEnded(now().getTime(), false);
    while (queue.length > 0) {
      const batch = queue.slice(0, batchSize);
      queue = queue.slice(batch.length);
      try {
        await insertAuditEvents(db, batch);
        totals.written += batch.length;
      } catch (error) {
        // An outage: these rows are lost (counted), the callers were answered long ago.
        totals.dropped += batch.length;
        unreported.dropped += batch.length;
        onError(error);
      }
    }
    if (onDropped && (unreported.dropped > 0 || unreported.sampledOut > 0)) {
      onDropped({ ...unreported });
      unreported.dropped = 0;
      unreported.sampledOut = 0;
    }
  }

  /** One write at a time; callers during a write share the next one. */
  function flush(): Promise<void> {
    if (pendingFlush) return flushing;
    pendingFlush = true;
    flushing = flushing.then(() => {
      pendingFlush = false;
      return write();
    });
    return flushing;
  }

  const timer = flushEveryMs > 0 ? setInterval(() => void flush(), flushEveryMs) : undefined;
  timer?.unref();

  return {
    refused(input) {
      // Bounded before it is kept or keyed on: memory holds short forms only.
      const event = boundedEvent(input);
      const at = event.at.getTime();
      const key = JSON.stringify([event.actor, event.action, event.target, event.outcome]);
      const group = groups.get(key);
      if (group && at - group.firstAt < windowMs) {
        group.count++;
        group.lastAt = event.at;
        totals.collapsed++;
        return;
      }
      if (group) {
        groups.delete(key);
        close(group);
      }
      if (groups.size >= maxGroups) closeEnded(at, false);
      if (groups.size < maxGroups) {
        groups.set(key, { first: event, firstAt: at, lastAt: event.at, count: 0 });
        enqueue(event);
        return;
      }
      // Too many distinct refusals at once: keep 1 in sampleEvery, count the rest.
      if (sampledSeen++ % sampleEvery === 0) enqueue({ ...event, detail: { ...event.detail, sampled: `1 in ${sampleEvery}` } });
      else {
        totals.sampledOut++;
        unreported.sampledOut++;
      }
    },
    flush,
    stats: () => ({ groups: groups.size, queued: queue.length, ...totals }),
    async stop() {
      if (timer) clearInterval(timer);
      closeEnded(0, true);
      await flush();
    },
  };
}
