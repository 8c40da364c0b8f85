import type { NewAuditEvent } from "./audit-event.js";

/**
 * What an audit row may hold of a caller's input: a short, printable form.
 * Input is checked against its rule before anything is recorded (key-input.ts,
 * the managers); this is the belt under those braces, applied to every row on
 * its way out, so no path can store 30 KB of a caller's choosing.
 */

export const AUDIT_TEXT_MAX = 128;
/** Outcomes quote already-shortened input (printable()), so they may be longer than one field. */
export const AUDIT_OUTCOME_MAX = 512;
/** Entries kept of an array in detail (roles): a key has at most 32. */
const AUDIT_ARRAY_MAX = 32;
const AUDIT_DEPTH_MAX = 3;

/** The value with control characters replaced, cut at `max` characters and marked "…(+N bytes)". */
export function auditText(value: string, max = AUDIT_TEXT_MAX): string {
  const clean = value.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
  if (clean.length <= max) return clean;
  const kept = clean.slice(0, max);
  return `${kept}…(+${Buffer.byteLength(value, "utf8") - Buffer.byteLength(kept, "utf8")} bytes)`;
}

function auditValue(value: unknown, depth: number): unknown {
  if (typeof value === "string") return auditText(value);
  if (value === null || typeof value !== "object") return value;
  if (depth >= AUDIT_DEPTH_MAX) return "…";
  if (Array.isArray(value)) {
    const kept = value.slice(0, AUDIT_ARRAY_MAX).map((item) => auditValue(item, depth + 1));
    return value.length > AUDIT_ARRAY_MAX ? [...kept, `…(+${value.length - AUDIT_ARRAY_MAX} more)`] : kept;
  }
  const entries = Object.entries(value).slice(0, AUDIT_ARRAY_MAX);
  return Object.fromEntries(entries.map(([key, item]) => [auditText(key, 64), auditValue(item, depth + 1)]));
}

export function auditDetail(detail: Record<string, unknown>): Record<string, unknown> {
  return auditValue(detail, 0) as Record<string, unknown>;
}

/** Every text field of a row bounded. */
export function boundedEvent(event: NewAuditEvent): NewAuditEvent {
  const short = (value: string | null) => (value === null ? null : auditText(value));
  return {
    ...event,
    actor: auditText(event.actor),
    action: auditText(event.action, 64),
    target: short(event.target),
    newTarget: short(event.newTarget),
    org: short(event.org),
    namespace: short(event.namespace),
    outcome: auditText(event.outcome, AUDIT_OUTCOME_MAX),
    detail: auditDetail(event.detail),
  };
}
