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
    max_sandboxes: key.maxSandboxes ?? null,
  };
}

/** Usage as get and list show it (JSON numbers: counts stay far below 2^53). */
export function usageJson(key: ApiKey): Record<string, unknown> {
  return {
    usage: key.usage.map((d) => ({ day: d.day, allowed: Number(d.allowed), denied: Number(d.denied) })),
    requests_allowed_7d: Number(key.requestsAllowed7d),
    requests_denied_7d: Number(key.requestsDenied7d),
  };
}

/** Requests per UTC day, for `keys get`. */
export function usageText(key: ApiKey): string {
  const total = `requests 7d  ${key.requestsAllowed7d} allowed, ${key.requestsDenied7d} denied`;
  if (key.usage.length === 0) return `${total}\nno requests in the last 30 days`;
  const rows = [["DAY (UTC)", "ALLOWED", "DENIED"], ...key.usage.map((d) => [d.day, String(d.allowed), String(d.denied)])];
  const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
  return [total, "", ...rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  "))].join("\n");
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
    ["sandboxes", key.maxSandboxes !== undefined ? `at most ${key.maxSandboxes} live` : "no limit of its own"],
  ];
  return rows.map(([k, v]) => `${k.padEnd(13)}${v}`).join("\n");
}

export function keyTable(keys: ApiKey[]): string {
  const head = ["ID", "NAME", "ORG", "NAMESPACE", "ROLES", "STATE", "RATE LIMIT", "SANDBOXES", "EXPIRES", "LAST USED", "ALLOWED 7D", "DENIED 7D"];
  const rows = keys.map((k) => [
    k.id,
    k.name || "-",
    k.org,
    k.namespace,
    k.roles.join(","),
    k.enabled ? "enabled" : "revoked",
    k.rateLimit || "default",
    k.maxSandboxes !== undefined ? String(k.maxSandboxes) : "-",
    iso(k.expiresAt) ?? "never",
    iso(k.lastUsedAt) ?? "never",
    String(k.requestsAllowed7d),
    String(k.requestsDenied7d),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}
