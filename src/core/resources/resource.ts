// TEMPORARY local copy of the lead's ownership-core contract; replaced by main's at merge.
export interface ResourceRef { kind: string; id: string }
export interface Owner { org: string; namespace: string; keyId: string }
export interface OwnedResource extends ResourceRef, Owner { createdAt: Date; releasedAt: Date | null }

export function mayAccess(subject: { org: string; namespace: string }, owner: Owner | null): boolean {
  if (subject.org === "*") return true;
  if (!owner) return false;
  return owner.org === subject.org && (subject.namespace === "*" || owner.namespace === subject.namespace);
}

const KIND = /^[a-z][a-z0-9_-]{0,63}$/;
const ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;
export function isValidResourceKind(kind: string): boolean { return KIND.test(kind); }
export function isValidResourceId(id: string): boolean { return ID.test(id); }
