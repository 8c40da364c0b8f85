import type { RateLimit } from "../ratelimit/rate-limit.js";

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
