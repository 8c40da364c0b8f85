import type { Kysely } from "kysely";
import { OUTCOME_OK, refusedOutcome, type AuditAction } from "../audit/audit-event.js";
import { insertAuditEvent } from "../audit/audit.repository.js";
import type { AuditRecorder } from "../audit/audit-recorder.js";
import type { Database } from "../db/schema.js";
import { ALL_NAMESPACES, isValidName, NAME_RULE } from "../keys/key-record.js";
import type { Policy } from "../policy/policy.js";
import { isValidResourceId, isValidResourceKind, mayAccess, PLATFORM_ORG, resourceName, resourceNamespaceFor, SANDBOXES, type OwnedResource, type ResourceRef } from "../resources/resource.js";
import type { ResourceLedger } from "../resources/resource-ledger.js";
import { findLatest } from "../resources/resource.repository.js";
import { printable } from "../time/duration.js";
import { actorOf, createAccessRules, fail, ok, type ManageResult, type Principal } from "./access.js";
import { namespaceOf } from "./key-audit.js";

/**
 * ResourceService's rules, ManageKey's in spirit: a key caller is checked by
 * the policy (resources "resources" and "resources/:kind/:id") and then, in
 * code, sees and changes only its own org's resources (within its namespace
 * when scoped); a platform key (org "*") and the local operator see all. A
 * resource out of scope is "not found", as a missing one is. Every change and
 * every refusal is in the audit log (actions resource.claim, resource.release;
 * a refused get or list as resource.get, resource.list), refusals through the
 * recorder (written in the background, repeats collapsed). A refusal's detail
 * quotes only names that follow their rules.
 *
 * The ledger commits the change itself, so its audit row follows it rather
 * than sharing its transaction: a failed audit write surfaces as an outage
 * to the caller (and a log line); the change stands.
 */

export const DEFAULT_RESOURCE_KIND = SANDBOXES;
const MAX_PAGE_SIZE = 1000;
/** Who claimed a resource: a key id, or "local" (the operator). */
const OWNER_KEY_ID = /^(local|key_[0-9A-Za-z]{20})$/;
const DEFAULT_PAGE_SIZE = 100;
/**
 * An event is stale only when dated this long before the entry was claimed:
 * the sender's clock and keygate's may disagree by seconds, and a sandbox can
 * be created and deleted within them.
 */
export const STALE_EVENT_TOLERANCE_MS = 5 * 60_000;

export interface ClaimInput {
  kind?: string;
  id: string;
  org?: string;
  namespace?: string;
}

export interface ListResourcesInput {
  kind?: string;
  org?: string;
  namespace?: string;
  keyId?: string;
  includeReleased?: boolean;
  pageSize?: number;
  pageToken?: string;
}

export interface ResourcePage {
  resources: OwnedResource[];
  nextPageToken: string;
}

/** Where a release came from when no principal asked for it: Cube's webhook. */
export interface ReleaseEvent {
  /** The audit row's actor, e.g. "cube-webhook". */
  source: string;
  /** The delivery's id (or a digest of its body), so retries can be matched up in the audit log. */
  eventId: string;
  event: string;
  /** When the event happened, if it says: an entry claimed well after it is not the one it is about. */
  at?: Date;
}

export type EventRelease = { outcome: "released"; resource: OwnedResource } | { outcome: "unknown" } | { outcome: "already_released" } | { outcome: "stale"; resource: OwnedResource };

export interface ResourceManagerDeps {
  ledger: ResourceLedger;
  db: Kysely<Database>;
  policy: () => Policy;
  now: () => Date;
  recorder: AuditRecorder;
}

export type ResourceManager = ReturnType<typeof createResourceManager>;

/** The names a caller gave that follow their rules, for a refusal's row. */
function namesIn(input: { kind?: string; org?: string; namespace?: string }): Record<string, string> {
  return {
    ...(input.kind && isValidResourceKind(input.kind) && { kind: input.kind }),
    ...(input.org && isValidName(input.org) && { org: input.org }),
    ...(input.namespace && isValidName(input.namespace) && { namespace: input.namespace }),
  };
}

export function createResourceManager({ ledger, db, policy, now, recorder }: ResourceManagerDeps) {
  const access = createAccessRules(policy);

  /** The caller's scope as the ownership check sees it: the operator is a platform. */
  const subjectOf = (principal: Principal) => (principal.kind === "local" ? { org: PLATFORM_ORG, namespace: ALL_NAMESPACES } : { org: principal.key.org, namespace: principal.key.namespace || ALL_NAMESPACES });

  /** A change's row, written before the caller is answered. */
  async function record(principal: Principal | string, action: AuditAction, ref: ResourceRef, org: string, namespace: string, detail: Record<string, unknown>) {
    await insertAuditEvent(db, {
      at: now(),
      actor: typeof principal === "string" ? principal : actorOf(principal),
      action,
      target: resourceName(ref),
      newTarget: null,
      org,
      namespace,
      outcome: OUTCOME_OK,
      detail,
    });
  }

  /** Runs an action; a refusal is recorded with what it was about (the caller's org unless an owner is known). */
  async function audited<T>(principal: Principal, action: AuditAction, ref: ResourceRef | null, detail: Record<string, unknown>, run: () => Promise<ManageResult<T>>): Promise<ManageResult<T>> {
    const result = await run();
    if (!result.ok) {
      recorder.refused({
        at: now(),
        actor: actorOf(principal),
        action,
        target: ref ? resourceName(ref) : null,
        newTarget: null,
        org: principal.kind === "key" ? principal.key.org : null,
        namespace: namespaceOf(principal),
        outcome: refusedOutcome(result.code, result.message),
        detail,
      });
    }
    return result;
  }

  function checkRef(kind: string | undefined, id: string): ManageResult<ResourceRef> {
    const k = kind || DEFAULT_RESOURCE_KIND;
    if (!isValidResourceKind(k)) return fail("invalid_argument", `invalid resource kind "${printable(k)}"`);
    if (!isValidResourceId(id)) return fail("invalid_argument", id === "" ? "a resource id is required" : `invalid resource id "${printable(id)}"`);
    return ok({ kind: k, id });
  }

  /**
   * The resource's newest entry (live, else the last released one) if the
   * caller may see it; anything else is "not found", whether it exists or not.
   */
  async function findVisible(principal: Principal, ref: ResourceRef): Promise<ManageResult<OwnedResource>> {
    const found = (await ledger.get(ref)) ?? (await findLatest(db, ref));
    if (!found || !mayAccess(subjectOf(principal), found)) return fail("not_found", `${ref.kind} ${ref.id} not found`);
    return ok(found);
  }

  return {
    claim(principal: Principal, input: ClaimInput): Promise<ManageResult<{ resource: OwnedResource; created: boolean }>> {
      const detail = namesIn({ org: input.org, namespace: input.namespace });
      const asked = checkRef(input.kind, input.id);
      return audited(principal, "resource.claim", asked.ok ? asked.value : null, detail, async () => {
        const allowed = access.allowedByPolicy(principal, "POST", "resources");
        if (!allowed.ok) return allowed;
        if (!asked.ok) return asked;
        const ref = asked.value;
        const subject = subjectOf(principal);
        const org = input.org || (subject.org === PLATFORM_ORG ? "" : subject.org);
        if (org === "") return fail("invalid_argument", "an org is required: the local operator and platform keys claim for a named org");
        if (!isValidName(org)) return fail("invalid_argument", `invalid org "${printable(org)}": ${NAME_RULE}`);
        // A resource lives in one namespace: the one named, else the key's own ("default" for a key of every namespace).
        const namespace = resourceNamespaceFor(subject.namespace, input.namespace ?? "");
        if (!isValidName(namespace)) return fail("invalid_argument", `invalid namespace "${printable(namespace)}": ${NAME_RULE} (a resource lives in one namespace)`);
        // No escalation: a key claims into its own org, and into its own namespace when scoped to one.
        if (subject.org !== PLATFORM_ORG && org !== subject.org) return fail("permission_denied", `a key may not claim resources for another org ("${org}")`);
        if (subject.namespace !== ALL_NAMESPACES && namespace !== subject.namespace) {
          return fail("permission_denied", `a key scoped to namespace "${subject.namespace}" may not claim into namespace "${namespace}"`);
        }
        const claimed = await ledger.claim(ref, { org, namespace, keyId: actorOf(principal) });
        // Another org's or another namespace's: the caller learns only that the id is taken, not whose it is.
        if (!claimed.ok) return fail("already_exists", `${ref.kind} ${ref.id} is already claimed`);
        const { created } = claimed;
        if (created) await record(principal, "resource.claim", ref, org, namespace, { kind: ref.kind, id: ref.id, org, namespace });
        return ok({ resource: claimed.resource, created });
      });
    },

    release(principal: Principal, kind: string | undefined, id: string): Promise<ManageResult<{ resource: OwnedResource; released: boolean }>> {
      const asked = checkRef(kind, id);
      return audited(principal, "resource.release", asked.ok ? asked.value : null, {}, async () => {
        if (!asked.ok) return asked;
        const ref = asked.value;
        const allowed = access.allowedByPolicy(principal, "DELETE", `resources/${ref.kind}/${ref.id}`);
        if (!allowed.ok) return allowed;
        const found = await findVisible(principal, ref);
        if (!found.ok) return found;
        if (found.value.releasedAt !== null) return ok({ resource: found.value, released: false });
        const released = await ledger.release(ref);
        if (released) await record(principal, "resource.release", ref, found.value.org, found.value.namespace, { kind: ref.kind, id: ref.id, namespace: found.value.namespace });
        return ok({ resource: (await findLatest(db, ref)) ?? found.value, released });
      });
    },

    get(principal: Principal, kind: string | undefined, id: string): Promise<ManageResult<OwnedResource>> {
      // A read changes nothing: only a refused one is recorded.
      const asked = checkRef(kind, id);
      return audited(principal, "resource.get", asked.ok ? asked.value : null, {}, async () => {
        if (!asked.ok) return asked;
        const allowed = access.allowedByPolicy(principal, "GET", `resources/${asked.value.kind}/${asked.value.id}`);
        if (!allowed.ok) return allowed;
        return findVisible(principal, asked.value);
      });
    },

    list(principal: Principal, input: ListResourcesInput): Promise<ManageResult<ResourcePage>> {
      const detail = namesIn(input);
      return audited(principal, "resource.list", null, detail, async () => {
        if (input.kind && !isValidResourceKind(input.kind)) return fail("invalid_argument", `invalid resource kind "${printable(input.kind)}"`);
        if (input.org && !isValidName(input.org)) return fail("invalid_argument", `invalid org "${printable(input.org)}": ${NAME_RULE}`);
        if (input.namespace && !isValidName(input.namespace)) return fail("invalid_argument", `invalid namespace "${printable(input.namespace)}": ${NAME_RULE}`);
        if (input.keyId && !OWNER_KEY_ID.test(input.keyId)) return fail("invalid_argument", `invalid key_id "${printable(input.keyId)}" (expected key_ and 20 letters or digits, or local)`);
        const allowed = access.allowedByPolicy(principal, "GET", "resources");
        if (!allowed.ok) return allowed;
        const subject = subjectOf(principal);
        let org = input.org || undefined;
        let namespace = input.namespace || undefined;
        if (subject.org !== PLATFORM_ORG) {
          if (org !== undefined && org !== subject.org) return fail("permission_denied", "a key may list only its own org's resources");
          org = subject.org;
        }
        if (subject.namespace !== ALL_NAMESPACES) {
          if (namespace !== undefined && namespace !== subject.namespace) return fail("permission_denied", `a key scoped to namespace "${subject.namespace}" may list only that namespace`);
          namespace = subject.namespace;
        }
        const pageSize = input.pageSize ? Math.min(input.pageSize, MAX_PAGE_SIZE) : DEFAULT_PAGE_SIZE;
        const page = await ledger.list({
          ...(input.kind && { kind: input.kind }),
          ...(org !== undefined && { org }),
          ...(namespace !== undefined && { namespace }),
          ...(input.keyId && { keyId: input.keyId }),
          includeReleased: Boolean(input.includeReleased),
          pageSize,
          ...(input.pageToken && { pageToken: input.pageToken }),
        });
        if (!page) return fail("invalid_argument", "invalid page_token: pass the next_page_token of a previous page");
        return ok(page);
      });
    },

    /**
     * A release reported by the system that owns the resource (Cube's
     * sandbox.deleted), not asked for by a principal: no scope to check, but
     * recorded like any change. Idempotent; an unknown id is an outcome, not
     * an error. An event dated well before the entry (a late retry about an
     * id claimed again since) releases nothing.
     */
    async releaseFromEvent(ref: ResourceRef, event: ReleaseEvent): Promise<EventRelease> {
      const found = await ledger.get(ref);
      if (!found) return (await findLatest(db, ref)) ? { outcome: "already_released" } : { outcome: "unknown" };
      if (event.at && event.at.getTime() < found.createdAt.getTime() - STALE_EVENT_TOLERANCE_MS) return { outcome: "stale", resource: found };
      const released = await ledger.release(ref);
      if (!released) return { outcome: "already_released" };
      await record(event.source, "resource.release", ref, found.org, found.namespace, {
        kind: ref.kind,
        id: ref.id,
        namespace: found.namespace,
        event: event.event,
        event_id: event.eventId,
        ...(event.at && { event_at: event.at.toISOString() }),
      });
      return { outcome: "released", resource: found };
    },
  };
}
