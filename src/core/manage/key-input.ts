import { parseRateLimit, type RateLimit } from "../ratelimit/rate-limit.js";
import { parseExpiry, printable } from "../time/duration.js";
import { isValidName, NAME_RULE } from "../keys/key-record.js";
import { closestName } from "../policy/known-roles.js";
import { fail, ok, type ManageResult } from "./access.js";

/**
 * Checks of what a caller asks a key to be: names, roles, expiry, rate
 * limit. Each answers the value to store or an invalid_argument saying what
 * is wrong (a value quoted in a message is made printable first).
 */

export type Expiry = { kind: "in"; duration: string } | { kind: "at"; at: Date } | { kind: "never" };

const MAX_ROLES = 32;
const MAX_KEY_NAME = 200;

/** undefined: no expiry asked (keep, or the default); null: never expires. */
export function resolveExpiry(expiry: Expiry | undefined, at: Date): ManageResult<Date | null | undefined> {
  if (!expiry) return ok(undefined);
  switch (expiry.kind) {
    case "never":
      return ok(null);
    case "at":
      if (Number.isNaN(expiry.at.getTime())) return fail("invalid_argument", "invalid expiry time");
      if (expiry.at <= at) return fail("invalid_argument", "expiry time must be in the future");
      return ok(expiry.at);
    case "in": {
      const parsed = parseExpiry(expiry.duration);
      return parsed.ok ? ok(new Date(at.getTime() + parsed.ms)) : fail("invalid_argument", parsed.error);
    }
  }
}

export function checkRateLimit(text: string): ManageResult<RateLimit> {
  const parsed = parseRateLimit(text);
  return parsed.ok ? ok(parsed.limit) : fail("invalid_argument", parsed.error);
}

/** At least one, at most MAX_ROLES, each a valid name; duplicates dropped. */
export function checkRoles(roles: string[]): ManageResult<string[]> {
  if (roles.length === 0) return fail("invalid_argument", "a key needs at least one role");
  if (roles.length > MAX_ROLES) return fail("invalid_argument", `a key may have at most ${MAX_ROLES} roles`);
  const bad = roles.find((role) => !isValidName(role));
  if (bad !== undefined) return fail("invalid_argument", `invalid role "${printable(bad)}": ${NAME_RULE}`);
  return ok([...new Set(roles)]);
}

/** At most this many known roles are listed in a refusal. */
const MAX_ROLES_SHOWN = 20;

/**
 * Every role is one the policy knows (case-sensitive): a key holding only
 * unknown roles is denied everything. A refusal lists the known roles and
 * suggests the closest; for a key caller (`callerRoles`) only among its own
 * roles, so a tenant's key does not learn the rest of the policy.
 */
export function checkKnownRoles(roles: readonly string[], known: ReadonlySet<string>, verb: "create" | "set", callerRoles?: readonly string[]): ManageResult<void> {
  const unknown = [...new Set(roles.filter((role) => !known.has(role)))];
  if (unknown.length === 0) return ok(undefined);
  const visible = [...new Set(callerRoles ?? known)].filter((role) => known.has(role)).sort();
  const listed = visible.length > MAX_ROLES_SHOWN ? `${visible.slice(0, MAX_ROLES_SHOWN).join(", ")}, … and ${visible.length - MAX_ROLES_SHOWN} more` : visible.join(", ");
  const knows = visible.length === 0 ? "the policy names no such role" : callerRoles ? `of this key's roles, the policy knows: ${listed}` : `the policy knows: ${listed}`;
  const suggestions = [...new Set(unknown.map((role) => closestName(role, visible)).filter((role) => role !== undefined))];
  const one = unknown.length === 1;
  return fail(
    "invalid_argument",
    `unknown role${one ? "" : "s"} ${unknown.map((role) => `"${printable(role)}"`).join(", ")} (${knows})` +
      (suggestions.length > 0 ? `; did you mean ${suggestions.map((role) => `"${role}"`).join(" or ")}?` : ".") +
      ` Pass --allow-unknown-role (allow_unknown_roles in ManageKey) to ${verb} ${one ? "it" : "them"} anyway`,
  );
}

export function checkName(name: string): ManageResult<string> {
  if (name.length > MAX_KEY_NAME) return fail("invalid_argument", `key name longer than ${MAX_KEY_NAME} characters`);
  if (/[\u0000-\u001f\u007f]/.test(name)) return fail("invalid_argument", "key name contains control characters");
  return ok(name);
}
