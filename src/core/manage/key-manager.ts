import { PLATFORM_ORG } from "../resources/resource.js";
import type { Kysely } from "kysely";
import { decodePageToken, encodePageToken, type PageCursor } from "../db/page-token.js";
import type { Database } from "../db/schema.js";
import type { Policy } from "../policy/policy.js";
import { formatRateLimit, type RateLimit } from "../ratelimit/rate-limit.js";
import { limitOf, MAX_PARENT_BUDGETS, parentBudgetsFor } from "../keys/key-budgets.js";
import { parseDuration, printable } from "../time/duration.js";
import type { KeyCache } from "../keys/key-cache.js";
import { displayPrefix, generateKey, generateKeyId, hashKey, KEY_ID_PATTERN } from "../keys/key-format.js";
import { ALL_NAMESPACES, isValidName, isValidNamespace, NAME_RULE, type KeyRecord } from "../keys/key-record.js";
import * as repo from "../keys/key.repository.js";
import { actorOf, createAccessRules, fail, ok, type ManageResult, type Principal } from "./access.js";
import type { AuditRecorder } from "../audit/audit-recorder.js";
import { createKeyAudit } from "./key-audit.js";
import { knownRoles } from "../policy/known-roles.js";
import { checkKnownRoles, checkName, checkRateLimit, checkRoles, resolveExpiry, type Expiry } from "./key-input.js";

/**
 * The life of keys: create, get, list, update, revoke, rotate, delete,
 * reset-all, each for a principal (access.ts: who may do what to which key),
 * on checked input (key-input.ts), recorded in the audit log (key-audit.ts).
 */

export interface CreateKeyInput {
  name?: string;
  org?: string;
  namespace?: string;
  roles?: string[];
  expiry?: Expiry;
  /** "N/WINDOW" (e.g. "100/1s"). Unset or "": a key caller's own limit, else none (the server default). */
  rateLimit?: string;
  /** Live sandboxes the key may hold (proxy mode). Unset: a key caller's own limit, else none. */
  maxSandboxes?: number;
  /** Accept roles no line of the policy names (refused by default: such a role is denied everything). */
  allowUnknownRoles?: boolean;
}

export interface UpdateKeyInput {
  id: string;
  name?: string;
  enabled?: boolean;
  expiry?: Expiry;
  roles?: string[];
  /** "N/WINDOW" sets the key's own limit; null removes it (the server default applies). */
  rateLimit?: string | null;
  /** Sets the key's live-sandbox limit; null removes it. */
  maxSandboxes?: number | null;
  /** Accept new roles no line of the policy names. */
  allowUnknownRoles?: boolean;
}

export interface ListKeysInput {
  org?: string;
  namespace?: string;
  enabled?: boolean;
  pageSize?: number;
  pageToken?: string;
}

export interface CreatedKey {
  key: KeyRecord;
  plaintext: string;
}

export interface KeyPage {
  keys: KeyRecord[];
  nextPageToken: string;
}

export interface KeyManagerDeps {
  db: Kysely<Database>;
  policy: () => Policy;
  cache: KeyCache;
  keyPrefix: string;
  now: () => Date;
  /** Where refused attempts go (written in the background, repeats collapsed). */
  recorder: AuditRecorder;
  /** Last-used times noted in memory and not yet written. */
  pendingLastUsed?: (keyId: string) => Date | undefined;
  /** The allocation of keys without their own: a key caller held to it passes it on as a shared budget. */
  defaultRateLimit?: RateLimit | null;
}

export const DEFAULT_ORG = "default";
export const DEFAULT_ROLES = ["writer"];
const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;
/** A grace is a duration ("1h", "7d"): anything longer is not one. */
const MAX_GRACE_LENGTH = 16;

/** Checked before anything else, so a refused attempt never records a malformed id. */
function invalidKeyId(id: string): ManageResult<never> | undefined {
  return KEY_ID_PATTERN.test(id) ? undefined : fail("invalid_argument", `invalid key id "${printable(id)}" (expected key_ and 20 letters or digits)`);
}

export type KeyManager = ReturnType<typeof createKeyManager>;

export function createKeyManager({ db, policy, cache, keyPrefix, now, recorder, pendingLastUsed, defaultRateLimit = null }: KeyManagerDeps) {
  const access = createAccessRules(policy);
  const { audited, recordIn } = createKeyAudit(recorder, now);

  async function findVisible(principal: Principal, id: string): Promise<ManageResult<KeyRecord>> {
    const invalid = invalidKeyId(id);
    if (invalid) return invalid;
    const target = await repo.findKeyById(db, id);
    if (!target || !access.visible(principal, target)) return fail("not_found", `key ${id} not found`);
    return ok(withPendingUsage(target));
  }

  function withPendingUsage(record: KeyRecord): KeyRecord {
    const pending = pendingLastUsed?.(record.id);
    if (pending && (!record.lastUsedAt || pending > record.lastUsedAt)) return { ...record, lastUsedAt: pending };
    return record;
  }

  /** A key the caller already holds power over: visible and not more powerful. */
  async function findManageable(principal: Principal, id: string): Promise<ManageResult<KeyRecord>> {
    const found = await findVisible(principal, id);
    if (!found.ok) return found;
    const extra = await access.rolesBeyond(principal, found.value);
    if (extra.length > 0) return fail("permission_denied", `key ${id} has roles this key does not hold: ${extra.join(", ")}`);
    return found;
  }

  return {
    create(principal: Principal, input: CreateKeyInput): Promise<ManageResult<CreatedKey>> {
      return audited(principal, "create", null, async (n) => {
        const allowed = access.allowedByPolicy(principal, "POST", "keys");
        if (!allowed.ok) return allowed;
        const at = now();
        const caller = principal.kind === "key" ? principal.key : undefined;
        const org = input.org || caller?.org || DEFAULT_ORG;
        if (org === PLATFORM_ORG) {
          // A platform operator's key passes every ownership check: only the local operator mints one.
          if (principal.kind !== "local") return fail("permission_denied", 'only the local operator may create a platform key (org "*")');
        } else if (!isValidName(org)) {
          return fail("invalid_argument", `invalid org "${printable(org)}": ${NAME_RULE}, or * for a platform key`);
        }
        if (principal.kind === "local") n.org = org;
        const namespace = input.namespace || caller?.namespace || ALL_NAMESPACES;
        if (!isValidNamespace(namespace)) return fail("invalid_argument", `invalid namespace "${printable(namespace)}": ${NAME_RULE}, or * for all`);
        const asked = input.roles && input.roles.length > 0;
        const roles = checkRoles(asked ? input.roles! : (caller?.roles ?? DEFAULT_ROLES));
        if (!roles.ok) return roles;
        const name = checkName(input.name ?? "");
        if (!name.ok) return name;
        const expiry = resolveExpiry(input.expiry, at);
        if (!expiry.ok) return expiry;
        // A key caller's new key expires no later than the caller, by default too.
        const expiresAt = expiry.value === undefined ? (caller?.expiresAt ?? null) : expiry.value;
        let rateLimit = caller?.rateLimit ?? null;
        if (input.rateLimit) {
          const parsed = checkRateLimit(input.rateLimit);
          if (!parsed.ok) return parsed;
          rateLimit = parsed.value;
        }
        const maxSandboxes = input.maxSandboxes ?? caller?.maxSandboxes ?? null;
        if (maxSandboxes !== null && !isSandboxLimit(maxSandboxes)) return fail("invalid_argument", SANDBOX_LIMIT_RULE);
        const why = await access.escalation(principal, { org, namespace, roles: roles.value, expiresAt, rateLimit, maxSandboxes });
        if (why) return fail("permission_denied", why);
        // After the escalation check: a key caller asking for a role it lacks is refused for that.
        if (asked && !input.allowUnknownRoles) {
          const known = checkKnownRoles(roles.value, knownRoles(policy()), "create", caller?.roles);
          if (!known.ok) return known;
        }
        // The caller's budgets bound the new key: together they can do no more than the caller alone.
        const parentBudgets = parentBudgetsFor(caller, defaultRateLimit);
        if (parentBudgets.length > MAX_PARENT_BUDGETS) return fail("permission_denied", DEPTH_RULE);

        const plaintext = generateKey(keyPrefix);
        const id = generateKeyId();
        n.target = id;
        n.namespace = namespace;
        n.detail = {
          name: name.value,
          org,
          namespace,
          roles: roles.value,
          expires_at: expiresAt?.toISOString() ?? null,
          rate_limit: rateLimit ? formatRateLimit(rateLimit) : null,
          max_sandboxes: maxSandboxes,
          ...(asked && input.allowUnknownRoles && { allow_unknown_roles: true }),
        };
        const key = await db.transaction().execute(async (trx) => {
          const created = await repo.insertKey(trx, {
            id,
            name: name.value,
            org,
            namespace,
            roles: roles.value,
            keyHash: hashKey(plaintext),
            displayPrefix: displayPrefix(plaintext, keyPrefix),
            expiresAt,
            createdAt: at,
            rotatedFrom: null,
            createdBy: actorOf(principal),
            rateLimit,
            maxSandboxes,
            parentBudgets,
          });
          await recordIn(trx, principal, n, at);
          return created;
        });
        cache.dropNegatives();
        return ok({ key, plaintext });
      });
    },

    get(principal: Principal, id: string): Promise<ManageResult<KeyRecord>> {
      // A read changes nothing: only a refused one is recorded.
      return audited(principal, "get", id, async () => {
        const invalid = invalidKeyId(id);
        if (invalid) return invalid;
        const allowed = access.allowedByPolicy(principal, "GET", `keys/${id}`);
        if (!allowed.ok) return allowed;
        return findVisible(principal, id);
      });
    },

    list(principal: Principal, input: ListKeysInput): Promise<ManageResult<KeyPage>> {
      return audited(principal, "list", null, async (n) => {
        // Checked before the row is built: a refused list records only names that follow the rules.
        if (input.org && !isValidName(input.org)) return fail("invalid_argument", `invalid org "${printable(input.org)}": ${NAME_RULE}`);
        if (input.namespace && !isValidNamespace(input.namespace)) return fail("invalid_argument", `invalid namespace "${printable(input.namespace)}": ${NAME_RULE}, or * for all`);
        if (principal.kind === "local" && input.org) n.org = input.org;
        n.detail = { ...(input.org && { org: input.org }), ...(input.namespace && { namespace: input.namespace }) };
        const allowed = access.allowedByPolicy(principal, "GET", "keys");
        if (!allowed.ok) return allowed;
        const filter: repo.KeyFilter = {};
        if (input.org) filter.org = input.org;
        if (input.namespace) filter.namespace = input.namespace;
        if (input.enabled !== undefined) filter.enabled = input.enabled;
        if (principal.kind === "key") {
          const { key } = principal;
          if (filter.org !== undefined && filter.org !== key.org) return fail("permission_denied", "a key may list only its own org's keys");
          filter.org = key.org;
          if (key.namespace !== ALL_NAMESPACES) {
            if (filter.namespace !== undefined && filter.namespace !== key.namespace) {
              return fail("permission_denied", `a key scoped to namespace "${key.namespace}" may list only that namespace`);
            }
            filter.namespace = key.namespace;
          }
        }
        const pageSize = input.pageSize ? Math.min(input.pageSize, MAX_PAGE_SIZE) : DEFAULT_PAGE_SIZE;
        let after: PageCursor | undefined;
        if (input.pageToken) {
          const cursor = decodePageToken(input.pageToken, KEY_ID_PATTERN);
          if (!cursor) return fail("invalid_argument", "invalid page_token: pass the next_page_token of a previous page");
          after = cursor;
        }
        const rows = await repo.listKeys(db, filter, pageSize + 1, after);
        const keys = rows.slice(0, pageSize).map(withPendingUsage);
        const last = keys[keys.length - 1];
        return ok({ keys, nextPageToken: rows.length > pageSize && last ? encodePageToken({ at: last.createdAt, id: last.id }) : "" });
      });
    },

    update(principal: Principal, input: UpdateKeyInput): Promise<ManageResult<KeyRecord>> {
      // `keys enable` is an update of `enabled` alone: recorded as what it is.
      const onlyEnable = input.enabled === true && input.name === undefined && input.roles === undefined && input.expiry === undefined && input.rateLimit === undefined && input.maxSandboxes === undefined;
      return audited(principal, onlyEnable ? "enable" : "update", input.id, async (n) => {
        const invalid = invalidKeyId(input.id);
        if (invalid) return invalid;
        const allowed = access.allowedByPolicy(principal, "PATCH", `keys/${input.id}`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, input.id);
        if (!found.ok) return found;
        n.org = found.value.org;
        n.namespace = found.value.namespace;
        const at = now();
        const changes: repo.KeyChanges = {};
        if (input.name !== undefined) {
          const name = checkName(input.name);
          if (!name.ok) return name;
          changes.name = name.value;
        }
        if (input.roles !== undefined) {
          const roles = checkRoles(input.roles);
          if (!roles.ok) return roles;
          changes.roles = roles.value;
        }
        const expiry = resolveExpiry(input.expiry, at);
        if (!expiry.ok) return expiry;
        if (expiry.value !== undefined) changes.expiresAt = expiry.value;
        if (input.rateLimit !== undefined) {
          if (input.rateLimit === null) changes.rateLimit = null;
          else {
            const parsed = checkRateLimit(input.rateLimit);
            if (!parsed.ok) return parsed;
            changes.rateLimit = parsed.value;
          }
        }
        if (input.maxSandboxes !== undefined) {
          if (input.maxSandboxes !== null && !isSandboxLimit(input.maxSandboxes)) return fail("invalid_argument", SANDBOX_LIMIT_RULE);
          changes.maxSandboxes = input.maxSandboxes;
        }
        if (input.enabled !== undefined) {
          changes.enabled = input.enabled;
          if (input.enabled !== found.value.enabled) changes.revokedAt = input.enabled ? null : at;
        }
        const after = {
          ...found.value,
          ...("roles" in changes && { roles: changes.roles! }),
          ...("expiresAt" in changes && { expiresAt: changes.expiresAt! }),
          ...("rateLimit" in changes && { rateLimit: changes.rateLimit! }),
          ...("maxSandboxes" in changes && { maxSandboxes: changes.maxSandboxes! }),
        };
        const why = await access.escalation(principal, after);
        if (why) return fail("permission_denied", why);
        if (changes.roles !== undefined && !input.allowUnknownRoles) {
          const known = checkKnownRoles(changes.roles, knownRoles(policy()), "set", principal.kind === "key" ? principal.key.roles : undefined);
          if (!known.ok) return known;
        }
        // A changed allocation counts in a fresh bucket: on its own budget, a key would refill it.
        if (principal.kind === "key" && found.value.budgetId === principal.key.budgetId && "rateLimit" in changes && !sameLimit(changes.rateLimit!, found.value.rateLimit)) {
          return fail("permission_denied", `a key may not change the rate limit of a key that shares its budget (itself or a rotation of it): ask the operator or a key above it`);
        }
        // Field names and new values only; never anything secret.
        n.detail = {
          changed: {
            ...(changes.name !== undefined && { name: changes.name }),
            ...(changes.roles !== undefined && { roles: changes.roles }),
            ...("expiresAt" in changes && { expires_at: changes.expiresAt?.toISOString() ?? null }),
            ...("rateLimit" in changes && { rate_limit: changes.rateLimit ? formatRateLimit(changes.rateLimit) : null }),
            ...("maxSandboxes" in changes && { max_sandboxes: changes.maxSandboxes }),
            ...(changes.enabled !== undefined && { enabled: changes.enabled }),
          },
          ...(changes.roles !== undefined && input.allowUnknownRoles && { allow_unknown_roles: true }),
        };
        const updated = await db.transaction().execute(async (trx) => {
          const row = await repo.updateKey(trx, input.id, changes, at);
          if (row) await recordIn(trx, principal, n, at);
          return row;
        });
        cache.invalidateId(input.id);
        return updated ? ok(withPendingUsage(updated)) : fail("not_found", `key ${input.id} not found`);
      });
    },

    revoke(principal: Principal, id: string): Promise<ManageResult<KeyRecord>> {
      return audited(principal, "revoke", id, async (n) => {
        const invalid = invalidKeyId(id);
        if (invalid) return invalid;
        const allowed = access.allowedByPolicy(principal, "POST", `keys/${id}/revoke`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, id);
        if (!found.ok) return found;
        n.org = found.value.org;
        n.namespace = found.value.namespace;
        n.detail = { was_enabled: found.value.enabled };
        const at = now();
        const updated = await db.transaction().execute(async (trx) => {
          const row = await repo.updateKey(trx, id, { enabled: false, ...(found.value.enabled && { revokedAt: at }) }, at);
          if (row) await recordIn(trx, principal, n, at);
          return row;
        });
        cache.invalidateId(id);
        return updated ? ok(updated) : fail("not_found", `key ${id} not found`);
      });
    },

    rotate(principal: Principal, id: string, grace: string): Promise<ManageResult<CreatedKey>> {
      return audited(principal, "rotate", id, async (n) => {
        const invalid = invalidKeyId(id);
        if (invalid) return invalid;
        let graceMs: number | undefined;
        if (grace !== "") {
          if (grace.length > MAX_GRACE_LENGTH) return fail("invalid_argument", `grace: longer than ${MAX_GRACE_LENGTH} characters (a duration such as 1h or 7d)`);
          const parsed = parseDuration(grace);
          if (!parsed.ok) return fail("invalid_argument", `grace: ${parsed.error}`);
          graceMs = parsed.ms;
        }
        n.detail = { grace: grace === "" ? null : grace };
        const allowed = access.allowedByPolicy(principal, "POST", `keys/${id}/rotate`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, id);
        if (!found.ok) return found;
        const old = found.value;
        n.org = old.org;
        n.namespace = old.namespace;
        const why = await access.escalation(principal, old);
        if (why) return fail("permission_denied", why);
        // A revoked key stays revoked: rotating it must not hand out an enabled successor.
        if (!old.enabled) return fail("invalid_argument", `key ${id} is revoked: a revoked key cannot be rotated (enable it with update first, or create a new key)`);
        const at = now();
        // The new key inherits the old expiry: it would be born expired.
        if (old.expiresAt && old.expiresAt <= at) {
          return fail("invalid_argument", `key ${id} has expired: give it a new expiry with update first, or create a new key`);
        }
        // The successor shares the old key's budget (same bucket, during the grace period and after), stays
        // under its ancestors, and under the caller's budgets when a limited key rotates it.
        const ownLimit = limitOf(old, defaultRateLimit);
        const parentBudgets = parentBudgetsFor(principal.kind === "key" ? principal.key : undefined, defaultRateLimit, old.parentBudgets, ownLimit ? { id: old.budgetId, limit: ownLimit } : undefined);
        if (parentBudgets.length > MAX_PARENT_BUDGETS) return fail("permission_denied", DEPTH_RULE);
        const plaintext = generateKey(keyPrefix);
        n.newTarget = generateKeyId();
        const newId = n.newTarget;
        const key = await db.transaction().execute(async (trx) => {
          const created = await repo.insertKey(trx, {
            id: newId,
            name: old.name,
            org: old.org,
            namespace: old.namespace,
            roles: old.roles,
            keyHash: hashKey(plaintext),
            displayPrefix: displayPrefix(plaintext, keyPrefix),
            expiresAt: old.expiresAt,
            createdAt: at,
            rotatedFrom: old.id,
            createdBy: actorOf(principal),
            rateLimit: old.rateLimit,
            maxSandboxes: old.maxSandboxes,
            budgetId: old.budgetId,
            parentBudgets,
          });
          if (graceMs === 0) {
            await repo.updateKey(trx, old.id, { enabled: false, revokedAt: at }, at);
          } else if (graceMs !== undefined) {
            const end = new Date(at.getTime() + graceMs);
            if (!old.expiresAt || old.expiresAt > end) await repo.updateKey(trx, old.id, { expiresAt: end }, at);
          }
          await recordIn(trx, principal, n, at);
          return created;
        });
        cache.invalidateId(old.id);
        cache.dropNegatives();
        return ok({ key, plaintext });
      });
    },

    delete(principal: Principal, id: string): Promise<ManageResult<string>> {
      return audited(principal, "delete", id, async (n) => {
        const invalid = invalidKeyId(id);
        if (invalid) return invalid;
        const allowed = access.allowedByPolicy(principal, "DELETE", `keys/${id}`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, id);
        if (!found.ok) return found;
        n.org = found.value.org;
        n.namespace = found.value.namespace;
        n.detail = { name: found.value.name };
        const at = now();
        const deleted = await db.transaction().execute(async (trx) => {
          const gone = await repo.deleteKey(trx, id);
          if (gone) await recordIn(trx, principal, n, at);
          return gone;
        });
        cache.invalidateId(id);
        return deleted ? ok(id) : fail("not_found", `key ${id} not found`);
      });
    },

    resetAll(principal: Principal, org: string): Promise<ManageResult<number>> {
      return audited(principal, "reset_all", null, async (n) => {
        const allowed = access.allowedByPolicy(principal, "POST", "keys/reset-all");
        if (!allowed.ok) return allowed;
        let scope: { org?: string; namespace?: string };
        if (principal.kind === "key") {
          const { key } = principal;
          if (org !== "" && !isValidName(org)) return fail("invalid_argument", `invalid org "${printable(org)}": ${NAME_RULE}`);
          if (org !== "" && org !== key.org) return fail("permission_denied", "a key may reset only its own org's keys");
          scope = { org: key.org, ...(key.namespace !== ALL_NAMESPACES && { namespace: key.namespace }) };
        } else {
          if (org !== "" && !isValidName(org)) return fail("invalid_argument", `invalid org "${printable(org)}": ${NAME_RULE}`);
          scope = org === "" ? {} : { org };
          n.org = org === "" ? null : org;
        }
        const at = now();
        n.detail = { scope: { org: scope.org ?? "*", namespace: scope.namespace ?? ALL_NAMESPACES } };
        n.namespace = scope.namespace ?? null;
        // A key caller may revoke only keys it could revoke one by one (no roles beyond its own):
        // the revoke and the check are one transaction, so a key created meanwhile is never missed.
        const mine = principal.kind === "key" ? await policy().inheritedRoles(principal.key.roles, principal.key.org) : undefined;
        const outcome = await db
          .transaction()
          .execute(async (trx) => {
            if (!mine) {
              const revoked = await repo.revokeAll(trx, scope, at);
              n.detail = { ...n.detail, count: revoked };
              await recordIn(trx, principal, n, at);
              return ok(revoked);
            }
            const revoked = await repo.revokeAllReturningRoles(trx, scope, at);
            const beyond = revoked.filter((roles) => roles.some((role) => !mine.has(role)));
            if (beyond.length > 0) throw new ResetRefused(beyond.length, [...new Set(beyond.flat().filter((role) => !mine.has(role)))].sort());
            n.detail = { ...n.detail, count: revoked.length };
            await recordIn(trx, principal, n, at);
            return ok(revoked.length);
          })
          .catch((error: unknown) => {
            if (!(error instanceof ResetRefused)) throw error;
            n.detail = { ...n.detail, refused_keys: error.keys, roles: error.roles };
            const keys = error.keys === 1 ? "1 key" : `${error.keys} keys`;
            return fail("permission_denied", `reset-all would revoke ${keys} with roles this key does not hold: ${error.roles.join(", ")}; nothing was revoked`);
          });
        if (outcome.ok) cache.clear();
        return outcome;
      });
    },
  };
}

const DEPTH_RULE = `a key may not mint keys more than ${MAX_PARENT_BUDGETS} rate-limited keys deep (each request of such a key counts against every budget above it): create it from a key higher up the chain`;

function sameLimit(a: RateLimit | null, b: RateLimit | null): boolean {
  return a === b || (a !== null && b !== null && a.points === b.points && a.windowSeconds === b.windowSeconds);
}

/** Rolls back a reset-all that would revoke keys the caller may not manage (caught in resetAll). */
class ResetRefused extends Error {
  constructor(
    readonly keys: number,
    readonly roles: string[],
  ) {
    super(`reset-all refused: ${keys} keys with roles beyond the caller's`);
    this.name = "ResetRefused";
  }
}

const MAX_SANDBOX_LIMIT = 1_000_000_000;
const SANDBOX_LIMIT_RULE = `max_sandboxes must be a whole number from 0 to ${MAX_SANDBOX_LIMIT}`;

function isSandboxLimit(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= MAX_SANDBOX_LIMIT;
}
