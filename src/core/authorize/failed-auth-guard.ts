import { setTimeout as sleepFor } from "node:timers/promises";
import { deny, MESSAGES, type Decision } from "./decision.js";
import type { RateLimit } from "../ratelimit/rate-limit.js";
import type { RateLimiter } from "../ratelimit/rate-limiter.js";

/**
 * Makes key guessing pointless: invalid credentials (unknown, malformed, bad
 * checksum) are counted per source address. Up to `limit.points` per window
 * nothing changes; past that, each further invalid credential is answered
 * after a growing delay (capped at MAX_DELAY_MS); past twice that, refused at
 * once as rate_limited.
 *
 * The guard decides before any database work: from a source past twice the
 * threshold, a credential the key cache cannot answer (not a key recently
 * seen) is refused without a lookup, so guesses cost the database nothing.
 * The trade-off: such a source's valid keys still work if the cache knows
 * them (any key decided in the last KEYGATE_KEY_CACHE_TTL); a valid key not
 * in the cache is refused with the guesses until the window passes. Guesses
 * already in flight when the limit is reached finish their lookups.
 * Credentials known invalid without the database (malformed, or remembered
 * as unknown) are counted and delayed without a lookup too.
 * test/integration/auth-guard-before-lookup.test.ts shows it on every entry.
 *
 * Counters live in the rate limiter (memory, or Redis shared by instances).
 */

export const AUTH_FAIL_MESSAGE = "too many invalid API keys from this address";
export const DEFAULT_AUTH_FAIL_LIMIT: RateLimit = { points: 20, windowSeconds: 60 };
/** The first delay past the threshold; it doubles with each further failure. */
export const FIRST_DELAY_MS = 25;
export const MAX_DELAY_MS = 1_000;
const ID_PREFIX = "authfail:";

export interface FailedAuthGuard {
  /** False for exempt sources (by default loopback: a gateway or tool on this host). */
  applies(source: string): boolean;
  /**
   * The refusal for a source past the hard limit, else undefined; takes
   * nothing from the count. Asked before a lookup that would reach the
   * database. A limiter outage answers undefined (the lookup goes on).
   */
  blocked(source: string): Promise<Decision | undefined>;
  /** Counts one invalid credential from `source`; resolves (after any delay) with the decision to give. */
  failed(source: string): Promise<Decision>;
}

export interface FailedAuthGuardDeps {
  rateLimiter: RateLimiter;
  /** Invalid credentials per window answered normally; twice as many are refused. */
  limit: RateLimit;
  sleep?: (ms: number) => Promise<void>;
  onError?: (error: unknown) => void;
  /** Sources never guarded (KEYGATE_AUTH_GUARD_EXEMPT). */
  exempt?: (source: string) => boolean;
}

/** The delay for the n-th invalid credential past the threshold (n ≥ 1). */
export function delayFor(excess: number): number {
  if (excess <= 0) return 0;
  return Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** Math.min(excess - 1, 16));
}

export function refusal(resetSeconds: number, hardLimit: number): Decision {
  return { ...deny("rate_limited", AUTH_FAIL_MESSAGE), rateLimit: { limit: hardLimit, remaining: 0, resetSeconds: Math.max(1, resetSeconds) } };
}

export function createFailedAuthGuard({ rateLimiter, limit, sleep = (ms) => sleepFor(ms), onError, exempt = () => false }: FailedAuthGuardDeps): FailedAuthGuard {
  const soft = limit.points;
  const hard: RateLimit = { points: soft * 2, windowSeconds: limit.windowSeconds };
  const invalid = () => deny("invalid_key", MESSAGES.invalid_key);
  return {
    applies: (source) => !exempt(source),
    async blocked(source) {
      let status;
      try {
        status = await rateLimiter.peek(ID_PREFIX + source, hard);
      } catch (error) {
        onError?.(error);
        return undefined;
      }
      return status && status.remaining === 0 ? refusal(status.resetSeconds, hard.points) : undefined;
    },
    async failed(source) {
      let consumed;
      try {
        consumed = await rateLimiter.consume(ID_PREFIX + source, hard);
      } catch (error) {
        onError?.(error);
        return invalid();
      }
      if (!consumed.allowed) return refusal(consumed.status.resetSeconds, hard.points);
      const count = hard.points - consumed.status.remaining;
      const delay = delayFor(count - soft);
      if (delay > 0) await sleep(delay);
      return invalid();
    },
  };
}
