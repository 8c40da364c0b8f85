import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { ApiKey } from "../../gen/keygate/v1/key_pb.js";

/** CLI output: JSON for machines (--json), aligned text for people. */

export interface Out {
  json: boolean;
  print(line: string): void;
  /** Secondary text (hints, notes) goes to stderr so stdout stays parseable. */
  note(line: string): void;
}

export function createOut(json: boolean): Out {
  return {
    json,
    print: (line) => process.stdout.write(line + "\n"),
    note: (line) => process.stderr.write(line + "\n"),
  };
}

function iso(ts: Timestamp | undefined): string | null {
  return ts ? timestampDate(ts).toISOString() : null;
}

export function keyJson(key: ApiKey): Record<string, unknown> {
  return {
    id: key.id,
    name: key.name,
    org: key.org,
    namespace: key.namespace,
    roles: key.roles,
    enabled: key.enabled,
    display_prefix: key.displayPrefix,
    created_at: iso(key.createdAt),
    updated_at: iso(key.updatedAt),
    expires_at: iso(key.expiresAt),
    revoked_at: iso(key.revokedAt),
    last_used_at: iso(key.lastUsedAt),
    rotated_from: key.rotatedFrom || null,
    created_by: key.createdBy,
    rate_limit: key.rateLimit || null,
  };
}

export function keyText(key: ApiKey): string {
  const rows: [string, string][] = [
    ["id", key.id],
    ["name", key.name || "-"],
    ["org", key.org],
    ["namespace", key.namespace],
    ["roles", key.roles.join(", ")],
    ["state", key.enabled ? "enabled" : "revoked"],
    ["key", `${key.displayPrefix}…`],
    ["created", iso(key.createdAt) ?? "-"],
    ["expires", iso(key.expiresAt) ?? "never"],
    ["revoked", iso(key.revokedAt) ?? "-"],
    ["last used", iso(key.lastUsedAt) ?? "never"],
    ["rotated from", key.rotatedFrom || "-"],
    ["created by", key.createdBy],
    ["rate limit", key.rateLimit || "server default"],
  ];
  return rows.map(([k, v]) => `${k.padEnd(13)}${v}`).join("\n");
}

export function keyTable(keys: ApiKey[]): string {
  const head = ["ID", "NAME", "ORG", "NAMESPACE", "ROLES", "STATE", "RATE LIMIT", "EXPIRES", "LAST USED"];
  const rows = keys.map((k) => [
    k.id,
    k.name || "-",
    k.org,
    k.namespace,
    k.roles.join(","),
    k.enabled ? "enabled" : "revoked",
    k.rateLimit || "default",
    iso(k.expiresAt) ?? "never",
    iso(k.lastUsedAt) ?? "never",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}
