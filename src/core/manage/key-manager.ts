import type { Kysely, Transaction } from "kysely";
import { OUTCOME_OK, refusedOutcome, type AuditAction, type NewAuditEvent } from "../audit/audit-event.js";
import * as audit from "../audit/audit.repository.js";
import type { Database } from "../db/schema.js";
import type { Policy } from "../policy/policy.js";
import { formatRateLimit, isHigherRate, parseRateLimit, type RateLimit } from "../ratelimit/rate-limit.js";
import { parseDuration, parseExpiry, printable } from "../time/duration.js";
import type { KeyCache } from "../keys/key-cache.js";
import { displayPrefix, generateKey, generateKeyId, hashKey, KEY_ID_PATTERN } from "../keys/key-format.js";
import { ALL_NAMESPACES, isValidName, isValidNamespace, NAME_RULE, type KeyRecord } from "../keys/key-record.js";
import * as repo from "../keys/key.repository.js";
import { managementDecision } from "./management.js";

/**
 * The life of keys: create, get, list, update, revoke, rotate, delete,
 * reset-all. Every action runs for a principal: the local operator (the CLI
 * on the machine that holds the data) or a key. A key caller is checked
 * twice: by the policy (resource paths "keys", "keys/:id", …) and here in
 * code, where org isolation and no-escalation hold whatever the policy says.
 * Every change commits together with its audit row; every refused attempt
 * (of any action) is recorded too.
 */

export type Principal = { kind: "local" } | { kind: "key"; key: KeyRecord };

export type ManageErrorCode = "invalid_argument" | "not_found" | "permission_denied";
export type ManageResult<T> = { ok: true; value: T } | { ok: false; code: ManageErrorCode; message: string };

export type Expiry = { kind: "in"; duration: string } | { kind: "at"; at: Date } | { kind: "never" };

export interface CreateKeyInput {
  name?: string;
  org?: string;
  namespace?: string;
  roles?: string[];
  expiry?: Expiry;
  /** "N/WINDOW" (e.g. "100/1s"). Unset or "": a key caller's own limit, else none (the server default). */
  rateLimit?: string;
}

export interface UpdateKeyInput {
  id: string;
  name?: string;
  enabled?: boolean;
  expiry?: Expiry;
  roles?: string[];
  /** "N/WINDOW" sets the key's own limit; null removes it (the server default applies). */
  rateLimit?: string | null;
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
  /** Last-used times noted in memory and not yet written. */
  pendingLastUsed?: (keyId: string) => Date | undefined;
}

/** The audit row an action is building: filled in as the action learns its org, target and changes. */
interface AuditNote {
  action: AuditAction;
  target: string | null;
  newTarget: string | null;
  org: string | null;
  detail: Record<string, unknown>;
}

export const DEFAULT_ORG = "default";
export const DEFAULT_ROLES = ["writer"];
const MAX_PAGE_SIZE = 1000;
const DEFAULT_PAGE_SIZE = 100;
const MAX_ROLES = 32;
const MAX_KEY_NAME = 200;

const ok = <T>(value: T): ManageResult<T> => ({ ok: true, value });
const fail = (code: ManageErrorCode, message: string): { ok: false; code: ManageErrorCode; message: string } => ({ ok: false, code, message });

export type KeyManager = ReturnType<typeof createKeyManager>;

export function createKeyManager({ db, policy, cache, keyPrefix, now, pendingLastUsed }: KeyManagerDeps) {
  /** The policy check for a key caller, on a management resource. */
  function allowedByPolicy(principal: Principal, method: string, resource: string): ManageResult<void> {
    if (principal.kind === "local") return ok(undefined);
    const decision = managementDecision(policy(), principal.key, method, resource);
    return decision.allowed ? ok(undefined) : fail("permission_denied", `API key is not allowed to ${method} ${resource}`);
  }

  /** A key outside the caller's org or namespace does not exist for it. */
  function visible(principal: Principal, target: KeyRecord): boolean {
    if (principal.kind === "local") return true;
    const { key } = principal;
    return target.org === key.org && (key.namespace === ALL_NAMESPACES || target.namespace === key.namespace);
  }

  /** Why `target` would have more power than the caller, or undefined. */
  async function escalation(principal: Principal, target: Pick<KeyRecord, "org" | "namespace" | "roles" | "expiresAt" | "rateLimit">): Promise<string | undefined> {
    if (principal.kind === "local") return undefined;
    const { key } = principal;
    if (target.org !== key.org) return `a key may not act on another org ("${target.org}")`;
    if (key.namespace !== ALL_NAMESPACES && target.namespace !== key.namespace) {
      return `a key scoped to namespace "${key.namespace}" may not act on namespace "${target.namespace}"`;
    }
    const mine = await policy().inheritedRoles(key.roles, key.org);
    const extra = target.roles.filter((role) => !mine.has(role));
    if (extra.length > 0) return `a key may not grant roles it does not hold: ${extra.join(", ")}`;
    if (key.expiresAt && (!target.expiresAt || target.expiresAt > key.expiresAt)) {
      return `a key may not grant an expiry later than its own (${key.expiresAt.toISOString()})`;
    }
    if (key.rateLimit) {
      if (!target.rateLimit) return `a key with a rate limit (${formatRateLimit(key.rateLimit)}) may not grant a key without one`;
      if (isHigherRate(target.rateLimit, key.rateLimit)) {
        return `a key may not grant a rate limit higher than its own (${formatRateLimit(target.rateLimit)} is more requests per second than ${formatRateLimit(key.rateLimit)})`;
      }
    }
    return undefined;
  }

  function resolveExpiry(expiry: Expiry | undefined, at: Date): ManageResult<Date | null | undefined> {
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

  function checkRateLimit(text: string): ManageResult<RateLimit> {
    const parsed = parseRateLimit(text);
    return parsed.ok ? ok(parsed.limit) : fail("invalid_argument", parsed.error);
  }

  function checkRoles(roles: string[]): ManageResult<string[]> {
    if (roles.length === 0) return fail("invalid_argument", "a key needs at least one role");
    if (roles.length > MAX_ROLES) return fail("invalid_argument", `a key may have at most ${MAX_ROLES} roles`);
    const bad = roles.find((role) => !isValidName(role));
    if (bad !== undefined) return fail("invalid_argument", `invalid role "${printable(bad)}": ${NAME_RULE}`);
    return ok([...new Set(roles)]);
  }

  function checkName(name: string): ManageResult<string> {
    if (name.length > MAX_KEY_NAME) return fail("invalid_argument", `key name longer than ${MAX_KEY_NAME} characters`);
    if (/[\u0000-\u001f\u007f]/.test(name)) return fail("invalid_argument", "key name contains control characters");
    return ok(name);
  }

  async function findVisible(principal: Principal, id: string): Promise<ManageResult<KeyRecord>> {
    if (!KEY_ID_PATTERN.test(id)) return fail("invalid_argument", `invalid key id "${printable(id)}" (expected key_ and 20 letters or digits)`);
    const target = await repo.findKeyById(db, id);
    if (!target || !visible(principal, target)) return fail("not_found", `key ${id} not found`);
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
    const mine = principal.kind === "key" ? await policy().inheritedRoles(principal.key.roles, principal.key.org) : undefined;
    const extra = mine ? found.value.roles.filter((role) => !mine.has(role)) : [];
    if (extra.length > 0) return fail("permission_denied", `key ${id} has roles this key does not hold: ${extra.join(", ")}`);
    return found;
  }

  function createdBy(principal: Principal): string {
    return principal.kind === "local" ? "local" : principal.key.id;
  }

  function actor(principal: Principal): string {
    return principal.kind === "local" ? "local" : principal.key.id;
  }

  /** Where an action's audit row starts: a key caller acts in its own org, the operator in none yet. */
  function note(principal: Principal, action: AuditAction, target: string | null): AuditNote {
    return { action, target, newTarget: null, org: principal.kind === "key" ? principal.key.org : null, detail: {} };
  }

  function auditRow(principal: Principal, n: AuditNote, outcome: string, at: Date): NewAuditEvent {
    return { at, actor: actor(principal), action: n.action, target: n.target, newTarget: n.newTarget, org: n.org, outcome, detail: n.detail };
  }

  /**
   * Runs an action. A successful change writes its own audit row inside its
   * transaction (see `recordIn`); a refused attempt is recorded here, on its own.
   */
  async function audited<T>(principal: Principal, n: AuditNote, run: (n: AuditNote) => Promise<ManageResult<T>>): Promise<ManageResult<T>> {
    const result = await run(n);
    if (!result.ok) await audit.insertAuditEvent(db, auditRow(principal, n, refusedOutcome(result.code, result.message), now()));
    return result;
  }

  /** The audit row of a change, in the change's transaction: if it cannot be written, the change rolls back. */
  function recordIn(trx: Transaction<Database>, principal: Principal, n: AuditNote, at: Date): Promise<void> {
    return audit.insertAuditEvent(trx, auditRow(principal, n, OUTCOME_OK, at));
  }

  return {
    create(principal: Principal, input: CreateKeyInput): Promise<ManageResult<CreatedKey>> {
      return audited(principal, note(principal, "create", null), async (n) => {
        const allowed = allowedByPolicy(principal, "POST", "keys");
        if (!allowed.ok) return allowed;
        const at = now();
        const caller = principal.kind === "key" ? principal.key : undefined;
        const org = input.org || caller?.org || DEFAULT_ORG;
        if (!isValidName(org)) return fail("invalid_argument", `invalid org "${printable(org)}": ${NAME_RULE}`);
        if (principal.kind === "local") n.org = org;
        const namespace = input.namespace || caller?.namespace || ALL_NAMESPACES;
        if (!isValidNamespace(namespace)) return fail("invalid_argument", `invalid namespace "${printable(namespace)}": ${NAME_RULE}, or * for all`);
        const roles = checkRoles(input.roles && input.roles.length > 0 ? input.roles : (caller?.roles ?? DEFAULT_ROLES));
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
        const why = await escalation(principal, { org, namespace, roles: roles.value, expiresAt, rateLimit });
        if (why) return fail("permission_denied", why);

        const plaintext = generateKey(keyPrefix);
        const id = generateKeyId();
        n.target = id;
        n.detail = {
          name: name.value,
          org,
          namespace,
          roles: roles.value,
          expires_at: expiresAt?.toISOString() ?? null,
          rate_limit: rateLimit ? formatRateLimit(rateLimit) : null,
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
            createdBy: createdBy(principal),
            rateLimit,
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
      return audited(principal, note(principal, "get", id), async () => {
        const allowed = allowedByPolicy(principal, "GET", `keys/${id}`);
        if (!allowed.ok) return allowed;
        return findVisible(principal, id);
      });
    },

    list(principal: Principal, input: ListKeysInput): Promise<ManageResult<KeyPage>> {
      return audited(principal, note(principal, "list", null), async (n) => {
        if (principal.kind === "local" && input.org) n.org = input.org;
        n.detail = { ...(input.org && { org: input.org }), ...(input.namespace && { namespace: input.namespace }) };
        const allowed = allowedByPolicy(principal, "GET", "keys");
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
        let after: repo.PageCursor | undefined;
        if (input.pageToken) {
          const cursor = decodePageToken(input.pageToken);
          if (!cursor) return fail("invalid_argument", "invalid page_token: pass the next_page_token of a previous page");
          after = cursor;
        }
        const rows = await repo.listKeys(db, filter, pageSize + 1, after);
        const keys = rows.slice(0, pageSize).map(withPendingUsage);
        const last = keys[keys.length - 1];
        return ok({ keys, nextPageToken: rows.length > pageSize && last ? encodePageToken(last) : "" });
      });
    },

    update(principal: Principal, input: UpdateKeyInput): Promise<ManageResult<KeyRecord>> {
      // `keys enable` is an update of `enabled` alone: recorded as what it is.
      const onlyEnable = input.enabled === true && input.name === undefined && input.roles === undefined && input.expiry === undefined && input.rateLimit === undefined;
      return audited(principal, note(principal, onlyEnable ? "enable" : "update", input.id), async (n) => {
        const allowed = allowedByPolicy(principal, "PATCH", `keys/${input.id}`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, input.id);
        if (!found.ok) return found;
        n.org = found.value.org;
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
        if (input.enabled !== undefined) {
          changes.enabled = input.enabled;
          if (input.enabled !== found.value.enabled) changes.revokedAt = input.enabled ? null : at;
        }
        const after = {
          ...found.value,
          ...("roles" in changes && { roles: changes.roles! }),
          ...("expiresAt" in changes && { expiresAt: changes.expiresAt! }),
          ...("rateLimit" in changes && { rateLimit: changes.rateLimit! }),
        };
        const why = await escalation(principal, after);
        if (why) return fail("permission_denied", why);
        // Field names and new values only; never anything secret.
        n.detail = {
          changed: {
            ...(changes.name !== undefined && { name: changes.name }),
            ...(changes.roles !== undefined && { roles: changes.roles }),
            ...("expiresAt" in changes && { expires_at: changes.expiresAt?.toISOString() ?? null }),
            ...("rateLimit" in changes && { rate_limit: changes.rateLimit ? formatRateLimit(changes.rateLimit) : null }),
            ...(changes.enabled !== undefined && { enabled: changes.enabled }),
          },
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
      return audited(principal, note(principal, "revoke", id), async (n) => {
        const allowed = allowedByPolicy(principal, "POST", `keys/${id}/revoke`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, id);
        if (!found.ok) return found;
        n.org = found.value.org;
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
      return audited(principal, note(principal, "rotate", id), async (n) => {
        n.detail = { grace: grace === "" ? null : grace };
        const allowed = allowedByPolicy(principal, "POST", `keys/${id}/rotate`);
        if (!allowed.ok) return allowed;
        let graceMs: number | undefined;
        if (grace !== "") {
          const parsed = parseDuration(grace);
          if (!parsed.ok) return fail("invalid_argument", `grace: ${parsed.error}`);
          graceMs = parsed.ms;
        }
        const found = await findManageable(principal, id);
        if (!found.ok) return found;
        const old = found.value;
        n.org = old.org;
        const why = await escalation(principal, old);
        if (why) return fail("permission_denied", why);
        const at = now();
        // The new key inherits the old expiry: it would be born expired.
        if (old.expiresAt && old.expiresAt <= at) {
          return fail("invalid_argument", `key ${id} has expired: give it a new expiry with update first, or create a new key`);
        }
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
            createdBy: createdBy(principal),
            // The allocation moves with the key; the new key starts with a full budget of its own.
            rateLimit: old.rateLimit,
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
      return audited(principal, note(principal, "delete", id), async (n) => {
        const allowed = allowedByPolicy(principal, "DELETE", `keys/${id}`);
        if (!allowed.ok) return allowed;
        const found = await findManageable(principal, id);
        if (!found.ok) return found;
        n.org = found.value.org;
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
      return audited(principal, note(principal, "reset_all", null), async (n) => {
        const allowed = allowedByPolicy(principal, "POST", "keys/reset-all");
        if (!allowed.ok) return allowed;
        let scope: { org?: string; namespace?: string };
        if (principal.kind === "key") {
          const { key } = principal;
          if (org !== "" && org !== key.org) return fail("permission_denied", "a key may reset only its own org's keys");
          scope = { org: key.org, ...(key.namespace !== ALL_NAMESPACES && { namespace: key.namespace }) };
        } else {
          if (org !== "" && !isValidName(org)) return fail("invalid_argument", `invalid org "${printable(org)}": ${NAME_RULE}`);
          scope = org === "" ? {} : { org };
          n.org = org === "" ? null : org;
        }
        const at = now();
        const count = await db.transaction().execute(async (trx) => {
          const revoked = await repo.revokeAll(trx, scope, at);
          n.detail = { count: revoked, scope: { org: scope.org ?? "*", namespace: scope.namespace ?? ALL_NAMESPACES } };
          await recordIn(trx, principal, n, at);
          return revoked;
        });
        cache.clear();
        return ok(count);
      });
    },
  };
}

function encodePageToken(last: KeyRecord): string {
  return Buffer.from(JSON.stringify([last.createdAt.toISOString(), last.id])).toString("base64url");
}

function decodePageToken(token: string): repo.PageCursor | undefined {
  if (token.length > 200) return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    if (!Array.isArray(parsed) || parsed.length !== 2) return undefined;
    const [time, id] = parsed as [unknown, unknown];
    if (typeof time !== "string" || typeof id !== "string" || !KEY_ID_PATTERN.test(id)) return undefined;
    const createdAt = new Date(time);
    return Number.isNaN(createdAt.getTime()) ? undefined : { createdAt, id };
  } catch {
    return undefined;
  }
}
