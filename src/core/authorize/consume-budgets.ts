import { budgetsOf, limitOf } from "../keys/key-budgets.js";
import type { KeyRecord } from "../keys/key-record.js";
import type { RateLimit, RateLimitStatus } from "../ratelimit/rate-limit.js";
import type { ConsumeResult, RateLimiter } from "../ratelimit/rate-limiter.js";

/**
 * Takes one request from every budget a key is held to (its own, then each
 * rate-limited ancestor's): undefined when none applies (unlimited). Throws
 * when the limiter fails, for the caller to deny (fail closed). Used by every
 * decision (the authorizer) and by every call a key makes to ManageKey,
 * AuditService and ResourceService (entries/rpc/principal.ts), so all of them
 * count against the same budgets.
 */
export type ConsumeBudgets = (key: KeyRecord) => Promise<ConsumeResult | undefined>;

export function createBudgetConsumer(rateLimiter: RateLimiter, defaultRateLimit: RateLimit | null): ConsumeBudgets {
  return (key) => {
    // The common case (no limited ancestor) is one bucket, exactly as before budgets were shared.
    if (key.parentBudgets.length === 0) {
      const limit = limitOf(key, defaultRateLimit);
      return limit ? rateLimiter.consume(key.budgetId, limit) : Promise.resolve(undefined);
    }
    return rateLimiter.consumeAll(budgetsOf(key, defaultRateLimit));
  };
}

/**
 * What the key's budgets hold now, taking nothing: the operator's `check`
 * (an explain request) is decided as traffic would be, rate limit included,
 * but is not traffic. Allowed when every budget has a point left; the status
 * is the tightest budget's (a budget nothing was taken from this window is
 * full). Undefined when none applies (unlimited).
 */
export type PeekBudgets = (key: KeyRecord) => Promise<ConsumeResult | undefined>;

export function createBudgetPeeker(rateLimiter: RateLimiter, defaultRateLimit: RateLimit | null): PeekBudgets {
  return async (key) => {
    const budgets = budgetsOf(key, defaultRateLimit);
    if (budgets.length === 0) return undefined;
    const statuses = await Promise.all(
      budgets.map(
        async ({ id, limit }): Promise<RateLimitStatus> =>
          (await rateLimiter.peek(id, limit)) ?? { limit: limit.points, remaining: limit.points, resetSeconds: limit.windowSeconds },
      ),
    );
    const spent = statuses.filter((status) => status.remaining <= 0);
    if (spent.length > 0) return { allowed: false, status: spent.reduce((a, b) => (b.resetSeconds > a.resetSeconds ? b : a)) };
    return { allowed: true, status: statuses.reduce((a, b) => (b.remaining < a.remaining ? b : a)) };
  };
}
