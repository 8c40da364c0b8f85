import { budgetsOf, limitOf } from "../keys/key-budgets.js";
import type { KeyRecord } from "../keys/key-record.js";
import type { RateLimit } from "../ratelimit/rate-limit.js";
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
