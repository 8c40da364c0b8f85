import { setTimeout as sleepFor } from "node:timers/promises";
import { deny, MESSAGES, type Decision } from "./decision.js";
import type { RateLimit } from "../ratelimit/rate-limit.js";
import type { RateLimiter } from "../ratelimit/rate-limiter.js";

/**
 * Makes key guessing pointless: invalid credentials (unknown, malformed, bad
 * checksum) are counted per source address. Up to `limit.points` per window
 * nothing changes; past that, each further invalid credential is answered
 * after a growing delay (capped at MAX_DELAY_MS); past twice that, refused at
 * once as rate_limited. Only invalid credentials are ever affected: a valid
 * key from the same address is decided as usual, so an attacker's failures
 * never lock a legitimate client out.
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
