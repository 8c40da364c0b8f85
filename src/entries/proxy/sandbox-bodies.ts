/**
 * The JSON the proxy reads and rewrites: a create's body (stamped with the
 * owner), a create's or fork's answer (the new ids), a list's answer
 * (filtered). Pure functions over parsed JSON; the proxy handler does the I/O.
 */

export const METADATA_ORG = "keygate_org";
export const METADATA_NAMESPACE = "keygate_namespace";

export type Stamped = { ok: true; body: Buffer; count: number } | { ok: false; message: string };

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The create or fork body with `metadata.keygate_org` and
 * `metadata.keygate_namespace` written over whatever the client sent, so Cube
 * (and anyone reading its metadata) sees the owner keygate recorded. An empty
 * body counts as `{}`. Also how many sandboxes it asks for (a fork's `count`).
 */
export function stampCreateBody(raw: Buffer, owner: { org: string; namespace: string }): Stamped {
  let body: unknown;
  if (raw.length === 0) body = {};
  else {
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch {
      return { ok: false, message: "request body is not valid JSON" };
    }
  }
  if (!isObject(body)) return { ok: false, message: "request body must be a JSON object" };
  const metadata = body["metadata"] ?? {};
  if (!isObject(metadata)) return { ok: false, message: "metadata must be a JSON object" };
  body["metadata"] = { ...metadata, [METADATA_ORG]: owner.org, [METADATA_NAMESPACE]: owner.namespace };
  const count = body["count"];
  return { ok: true, body: Buffer.from(JSON.stringify(body)), count: typeof count === "number" && Number.isInteger(count) && count > 1 ? count : 1 };
}

/**
 * The ids a successful create or fork answer names: `{sandboxID}` (create,
 * v1 and v2) or `[{sandbox: {sandboxID}}, {error}]` (fork: one entry per
 * fork, failed ones without a sandbox). Undefined when the answer is not one
 * of these shapes.
 */
export function createdIds(answer: unknown): string[] | undefined {
  const idOf = (value: unknown) => (isObject(value) && typeof value["sandboxID"] === "string" && value["sandboxID"] !== "" ? value["sandboxID"] : undefined);
  const single = idOf(answer);
  if (single !== undefined) return [single];
  if (!Array.isArray(answer)) return undefined;
  const ids: string[] = [];
  for (const entry of answer) {
    if (!isObject(entry)) return undefined;
    const id = idOf(entry["sandbox"]) ?? idOf(entry);
    if (id !== undefined) ids.push(id);
    else if (entry["error"] === undefined) return undefined;
  }
  return ids;
}

/** A list answer kept to the sandboxes in `visible`; undefined when it is not a JSON array (the caller answers `[]`). */
export function filterList(answer: unknown, visible: (id: string) => boolean): unknown[] | undefined {
  if (!Array.isArray(answer)) return undefined;
  return answer.filter((item) => isObject(item) && typeof item["sandboxID"] === "string" && visible(item["sandboxID"]));
}
