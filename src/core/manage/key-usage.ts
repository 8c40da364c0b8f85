import type { Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import type { KeyManager } from "./key-manager.js";
import type { DailyUsage, KeyRecord, KeyUsage } from "../keys/key-record.js";
import { readUsage, type DayCount } from "../keys/key-usage.repository.js";
import { utcDay } from "../keys/usage-recorder.js";

/** Per-day usage shown by get; list shows the 7-day totals only. */
export const USAGE_DAYS_GET = 30;
export const USAGE_DAYS_TOTAL = 7;
const DAY_MS = 86_400_000;

export interface KeyUsageReaderDeps {
  db: Kysely<Database>;
  now: () => Date;
  /** Counts noted in memory and not yet written (the usage recorder's). */
  pendingCounts: (keyId: string) => ReadonlyMap<string, DayCount> | undefined;
}

/** Attaches usage to keys: stored rows plus counts not yet flushed. */
export interface KeyUsageReader {
  /** Per-day counts of the last 30 days, and the 7-day totals. */
  withDays(key: KeyRecord): Promise<KeyRecord>;
  /** 7-day totals only, one query for the whole page. */
  withTotals(keys: KeyRecord[]): Promise<KeyRecord[]>;
}

export function createKeyUsageReader({ db, now, pendingCounts }: KeyUsageReaderDeps): KeyUsageReader {
  /** The first UTC day of a window of `days` days ending today. */
  function firstDay(days: number): string {
    return utcDay(new Date(now().getTime() - (days - 1) * DAY_MS));
  }

  /** key id → day → counts, stored and pending added up, from `from` on. */
  async function collect(ids: string[], from: string): Promise<Map<string, Map<string, DayCount>>> {
    const byKey = new Map<string, Map<string, DayCount>>(ids.map((id) => [id, new Map()]));
    const addTo = (id: string, day: string, c: DayCount) => {
      if (day < from) return;
      const days = byKey.get(id)!;
      const sum = days.get(day) ?? { allowed: 0, denied: 0 };
      days.set(day, { allowed: sum.allowed + c.allowed, denied: sum.denied + c.denied });
    };
    for (const row of await readUsage(db, ids, from)) addTo(row.keyId, row.day, row);
    for (const id of ids) for (const [day, c] of pendingCounts(id) ?? []) addTo(id, day, c);
    return byKey;
  }

  function usageOf(days: Map<string, DayCount>, withDays: boolean): KeyUsage {
    const since = firstDay(USAGE_DAYS_TOTAL);
    const sorted: DailyUsage[] = [...days].sort(([a], [b]) => (a < b ? -1 : 1)).map(([day, c]) => ({ day, allowed: c.allowed, denied: c.denied }));
    const recent = sorted.filter((d) => d.day >= since);
    return {
      days: withDays ? sorted.filter((d) => d.allowed + d.denied > 0) : [],
      allowed7d: recent.reduce((n, d) => n + d.allowed, 0),
      denied7d: recent.reduce((n, d) => n + d.denied, 0),
    };
  }

  return {
    async withDays(key) {
      const byKey = await collect([key.id], firstDay(USAGE_DAYS_GET));
      return { ...key, usage: usageOf(byKey.get(key.id)!, true) };
    },
    async withTotals(keys) {
      const byKey = await collect(
        keys.map((k) => k.id),
        firstDay(USAGE_DAYS_TOTAL),
      );
      return keys.map((key) => ({ ...key, usage: usageOf(byKey.get(key.id)!, false) }));
    },
  };
}

/**
 * The key manager with usage on get (per day) and list (7-day totals). A
 * layer over it rather than inside it: reading usage is not part of a key's
 * lifecycle, and the other actions stay one query cheaper.
 */
export function withKeyUsage(keys: KeyManager, usage: KeyUsageReader): KeyManager {
  return {
    ...keys,
    async get(...args: Parameters<KeyManager["get"]>) {
      const result = await keys.get(...args);
      return result.ok ? { ok: true, value: await usage.withDays(result.value) } : result;
    },
    async list(...args: Parameters<KeyManager["list"]>) {
      const result = await keys.list(...args);
      return result.ok ? { ok: true, value: { ...result.value, keys: await usage.withTotals(result.value.keys) } } : result;
    },
  };
}
