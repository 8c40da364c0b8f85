import type { Budget, RateLimit } from "../ratelimit/rate-limit.js";

/** An API key as the core sees it. Never holds the secret or its hash. */
export interface KeyRecord {
  id: string;
  name: string;
  org: string;
  /** "*" = every namespace. */
  namespace: string;
  roles: string[];
  enabled: boolean;
  displayPrefix: string;
  createdAt: Date;
  updatedAt: Date;
  expiresAt: Date | null;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
  rotatedFrom: string | null;
  /** A key id, or "local" for the operator's CLI. */
  createdBy: string;
  /** Its own allocation; null = the server default (unlimited when none). */
  rateLimit: RateLimit | null;
  /** The budget its own allocation counts in: its id, or its predecessor's after a rotation (shared). */
  budgetId: string;
  /**
   * Every rate-limited budget above it in its creation chain, root first,
   * each with the allocation it had when this key was made: every request
   * takes a point from each (key-budgets.ts).
   */
  parentBudgets: Budget[];
  /** Live sandboxes it may hold at once (proxy mode, counted in the ownership ledger); null = no limit of its own. */
  maxSandboxes: number | null;
  /** Requests decided for it, when asked for (ManageKey get and list). */
  usage?: KeyUsage;
}

/** Requests decided for a key, counts not yet written included. */
export interface KeyUsage {
  /** Per UTC day, oldest first, days without requests left out; empty when only totals were asked. */
  days: DailyUsage[];
  /** The last 7 UTC days, today included. */
  allowed7d: number;
  denied7d: number;
}

export interface DailyUsage {
  /** "YYYY-MM-DD", UTC. */
  day: string;
  allowed: number;
  denied: number;
}

export const ALL_NAMESPACES = "*";

/** Org, namespace and role names: what may appear in a policy CSV field safely. */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;

export function isValidName(value: string): boolean {
  return NAME_PATTERN.test(value);
}

export function isValidNamespace(value: string): boolean {
  return value === ALL_NAMESPACES || NAME_PATTERN.test(value);
}

export const NAME_RULE = "1-64 characters: letters, digits, and . _ : - (not first)";
