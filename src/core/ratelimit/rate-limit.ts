import { parseDuration, printable } from "../time/duration.js";

/**
 * A per-key allocation "N/WINDOW": at most N requests per WINDOW, a keygate
 * duration (100/1s, 5000/1h). Pure values: the limiter that enforces them
 * lives in rate-limiter.ts.
 */
export interface RateLimit {
  /** Requests allowed per window, at least 1. */
  points: number;
  /** Window length in whole seconds, at least 1. */
  windowSeconds: number;
}

/**
 * A bucket a request must fit in: a budget id (a key's, shared by its
 * rotations) counted under an allocation. A key's decision takes one point
 * from its own budget and from every rate-limited ancestor's (key-budgets.ts).
 */
export interface Budget {
  id: string;
  limit: RateLimit;
}

/** What a decision reports about a limited key. */
export interface RateLimitStatus {
  limit: number;
  remaining: number;
  /** Seconds until the window resets, rounded up. */
  resetSeconds: number;
}

export type RateLimitResult = { ok: true; limit: RateLimit } | { ok: false; error: string };

export const MAX_POINTS = 1_000_000_000;
/**
 * 24 days: in-memory windows are timed with setTimeout, which cannot wait
 * longer than 2^31-1 ms (~24.8 days) and would then fire at once, resetting
 * the budget on every request.
 */
export const MAX_WINDOW_SECONDS = 24 * 86_400;

const PATTERN = /^(\d{1,10})\/(\S+)$/;

export function parseRateLimit(text: string): RateLimitResult {
  const bad = (why: string): RateLimitResult => ({ ok: false, error: `invalid rate limit "${printable(text)}": ${why}` });
  // As with durations, only plain spaces around the value are tolerated.
  const match = PATTERN.exec(text.replace(/^ +| +$/g, ""));
  if (!match) {
    return bad("use N/WINDOW, a whole number of requests and a duration (e.g. 100/1s, 600/1m, 5000/1h)");
  }
  const points = Number(match[1]);
  if (!Number.isSafeInteger(points) || points < 1 || points > MAX_POINTS) return bad(`the number of requests must be a whole number from 1 to ${MAX_POINTS}`);
  const window = parseDuration(match[2]!);
  if (!window.ok) return bad(`the window must be a duration such as 1s, 15m, 1h or 1d`);
  if (window.ms === 0) return bad("the window must be longer than zero");
  if (window.ms / 1000 > MAX_WINDOW_SECONDS) return bad("the window may be at most 24d");
  return { ok: true, limit: { points, windowSeconds: window.ms / 1000 } };
}

/** "100/1s": the shortest exact unit (s, m, h, d), so formatting round-trips through parseRateLimit. */
export function formatRateLimit(limit: RateLimit): string {
  const units: [string, number][] = [
    ["d", 86_400],
    ["h", 3_600],
    ["m", 60],
  ];
  for (const [unit, seconds] of units) {
    if (limit.windowSeconds % seconds === 0) return `${limit.points}/${limit.windowSeconds / seconds}${unit}`;
  }
  return `${limit.points}/${limit.windowSeconds}s`;
}

/** Requests per second, to compare allocations of different windows. */
export function perSecond(limit: RateLimit): number {
  return limit.points / limit.windowSeconds;
}

/** True when `a` allows more requests per second than `b`; exact (no float rounding). */
export function isHigherRate(a: RateLimit, b: RateLimit): boolean {
  return a.points * b.windowSeconds > b.points * a.windowSeconds;
}
