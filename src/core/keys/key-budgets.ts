import type { Budget, RateLimit } from "../ratelimit/rate-limit.js";
import type { KeyRecord } from "./key-record.js";

/**
 * Shared budgets: a key's limit bounds everything it and the keys it mints
 * can do together. A key minted by a rate-limited key (created, or rotated
 * by it) carries that key's budget, and every budget above it, in
 * parentBudgets; each request takes a point from its own budget and from
 * each of those. A rotated key keeps its predecessor's budget id, so the
 * two share one budget during the grace period and after.
 * See test/integration/rate-limit-budgets.test.ts.
 */

/** At most this many rate-limited budgets above a key: each costs every decision of it a bucket. */
export const MAX_PARENT_BUDGETS = 16;

/** The allocation a key is held to: its own, else the server default; null = unlimited. */
export function limitOf(key: Pick<KeyRecord, "rateLimit">, defaultRateLimit: RateLimit | null): RateLimit | null {
  return key.rateLimit ?? defaultRateLimit;
}

/** Every budget a request by `key` must fit in: its own (when limited) first, then its ancestors'. */
export function budgetsOf(key: Pick<KeyRecord, "rateLimit" | "budgetId" | "parentBudgets">, defaultRateLimit: RateLimit | null): Budget[] {
  const limit = limitOf(key, defaultRateLimit);
  return limit ? [{ id: key.budgetId, limit }, ...key.parentBudgets] : [...key.parentBudgets];
}

/**
 * The budgets above a key that `minter` makes (creates or rotates): the
 * minter's own ancestors, then the minter's own budget when it is limited.
 * `inherited` (a rotated key's own ancestors) come first; duplicates (same
 * id and allocation: the same bucket) are kept once, and so is a bucket equal
 * to the new key's own.
 */
export function parentBudgetsFor(
  minter: Pick<KeyRecord, "rateLimit" | "budgetId" | "parentBudgets"> | undefined,
  defaultRateLimit: RateLimit | null,
  inherited: readonly Budget[] = [],
  own?: Budget,
): Budget[] {
  const chain = [...inherited];
  if (minter) {
    chain.push(...minter.parentBudgets);
    const limit = limitOf(minter, defaultRateLimit);
    if (limit) chain.push({ id: minter.budgetId, limit });
  }
  const seen = new Set<string>(own ? [bucketOf(own)] : []);
  return chain.filter((budget) => {
    const bucket = bucketOf(budget);
    if (seen.has(bucket)) return false;
    seen.add(bucket);
    return true;
  });
}

function bucketOf(budget: Budget): string {
  return `${budget.id}:${budget.limit.points}:${budget.limit.windowSeconds}`;
}
