/**
 * Owned resources: what Cube (or any upstream) creates on a key's behalf —
 * a sandbox — and which org and namespace it belongs to. The upstream has no
 * tenant model; the ledger is keygate's, filled by the proxy (which sees each
 * create), the ResourceService (services that create resources themselves)
 * and emptied by deletes and Cube's webhooks.
 */

export interface ResourceRef {
  /** "sandboxes": the kind a policy's routes.yaml names. */
  kind: string;
  id: string;
}

export interface Owner {
  org: string;
  /** The namespace the resource lives in ("*" never: a resource is in one namespace, or "default"). */
  namespace: string;
  /** The key that created (or claimed) it. */
  keyId: string;
}

export interface OwnedResource extends ResourceRef, Owner {
  createdAt: Date;
  /** Set when the resource was deleted (or reported gone); a released entry owns nothing. */
  releasedAt: Date | null;
}

/** A key's namespace "*": every namespace (the same as core/keys' ALL_NAMESPACES; this layer sits below keys). */
export const ALL_NAMESPACES = "*";

/** The kind the proxy, Cube's webhooks and the ResourceService (by default) record: Cube's sandboxes. */
export const SANDBOXES = "sandboxes";

/** Kinds are policy words: lower-case letters, digits, "-" and "_". */
const KIND_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;
/** Ids as upstreams make them (hex, ULIDs, UUIDs, "sbx-…"): no "/", no spaces, bounded. */
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function isValidResourceKind(kind: string): boolean {
  return KIND_PATTERN.test(kind);
}

export function isValidResourceId(id: string): boolean {
  return ID_PATTERN.test(id);
}

/** A platform operator's key: its org is "*"; it passes every ownership check. Only the local operator mints one. */
export const PLATFORM_ORG = "*";

/**
 * May a subject (a key's org and namespace scope) touch a resource with this
 * owner? A platform key (org "*") may touch anything, even what nobody
 * owns; everyone else only what their org owns, in a namespace their scope
 * covers. No recorded owner = nobody else's.
 */
export function mayAccess(subject: { org: string; namespace: string }, owner: Owner | null): boolean {
  if (subject.org === PLATFORM_ORG) return true;
  if (!owner || owner.org !== subject.org) return false;
  return subject.namespace === ALL_NAMESPACES || owner.namespace === subject.namespace;
}

/** The namespace a new resource gets: the request's, else the key's own, else "default" for a key of every namespace. */
export const DEFAULT_RESOURCE_NAMESPACE = "default";

export function resourceNamespaceFor(keyNamespace: string, requested = ""): string {
  if (requested !== "") return requested;
  return keyNamespace === ALL_NAMESPACES ? DEFAULT_RESOURCE_NAMESPACE : keyNamespace;
}

export function resourceName(ref: ResourceRef): string {
  return `${ref.kind}/${ref.id}`;
}
