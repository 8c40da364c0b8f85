import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ListAuditEventsRequestSchema, type AuditEvent } from "../../gen/keygate/v1/audit_pb.js";
import { parseDuration } from "../core/time/duration.js";
import { CliError, help, parse } from "./args.js";
import { withConnection } from "./connect.js";
import { createOut } from "./output.js";

const DEFAULT_LIMIT = 100;
const MAX_PAGE = 1000;

/** --since: a duration back from now ("24h" = the last 24 hours) or an ISO time. */
export function parseSince(text: string, now: Date): Date {
  const duration = parseDuration(text);
  if (duration.ok) return new Date(now.getTime() - duration.ms);
  const at = /^\d{4}-\d{2}-\d{2}/.test(text) ? new Date(text) : new Date(Number.NaN);
  if (Number.isNaN(at.getTime())) throw new CliError(`--since: a duration (24h, 7d) or an ISO time (2031-03-01T12:00:00Z), not "${text}"`);
  return at;
}

function eventJson(event: AuditEvent): Record<string, unknown> {
  return {
    id: event.id,
    at: event.at ? timestampDate(event.at).toISOString() : null,
    actor: event.actor,
    action: event.action,
    target: event.target || null,
    new_target: event.newTarget || null,
    org: event.org || null,
    namespace: event.namespace || null,
    outcome: event.outcome,
    detail: event.detail ?? {},
  };
}

function eventTable(events: AuditEvent[]): string {
  const head = ["AT", "ACTOR", "ACTION", "TARGET", "ORG", "OUTCOME"];
  const rows = events.map((e) => [
    e.at ? timestampDate(e.at).toISOString() : "-",
    e.actor,
    e.action,
    e.target ? (e.newTarget ? `${e.target} → ${e.newTarget}` : e.target) : "-",
    e.org || "*",
    e.outcome,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

/** `keygate audit`: the audit log, newest first, in every CLI mode (AuditService/ListAuditEvents). */
export async function runAudit(args: string[]): Promise<number> {
  const parsed = parse(args, { org: { type: "string" }, namespace: { type: "string" }, key: { type: "string" }, since: { type: "string" }, limit: { type: "string" } });
  if (parsed.flags.help) return help();
  if (parsed.positionals.length > 0) throw new CliError(`audit takes no arguments, got "${parsed.positionals[0]}"`);
  const out = createOut(Boolean(parsed.flags.json));
  const limitText = (parsed.flags.limit as string | undefined) ?? String(DEFAULT_LIMIT);
  if (!/^\d+$/.test(limitText) || Number(limitText) < 1) throw new CliError(`--limit: a whole number of at least 1, not "${limitText}"`);
  const limit = Number(limitText);
  const sinceText = parsed.flags.since as string | undefined;
  const since = sinceText === undefined ? undefined : parseSince(sinceText, new Date());
  return withConnection(parsed, "audit", async (c) => {
    const events: AuditEvent[] = [];
    let token = "";
    do {
      const response = await c.audit.listAuditEvents(
        create(ListAuditEventsRequestSchema, {
          org: (parsed.flags.org as string | undefined) ?? "",
          namespace: (parsed.flags.namespace as string | undefined) ?? "",
          keyId: (parsed.flags.key as string | undefined) ?? "",
          ...(since && { since: timestampFromDate(since) }),
          pageSize: Math.min(limit - events.length, MAX_PAGE),
          pageToken: token,
        }),
      );
      events.push(...response.events);
      token = response.nextPageToken;
    } while (token !== "" && events.length < limit);
    if (out.json) out.print(JSON.stringify({ events: events.map(eventJson) }));
    else out.print(events.length > 0 ? eventTable(events) : "no audit events");
    return 0;
  });
}
