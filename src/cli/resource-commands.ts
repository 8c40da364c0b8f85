import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Resource } from "../../gen/keygate/v1/resource_pb.js";
import { DEFAULT_RESOURCE_KIND } from "../core/manage/resource-manager.js";
import { CliError, help, parse, type Parsed } from "./args.js";
import { withConnection } from "./connect.js";
import { createOut, type Out } from "./output.js";

/**
 * `keygate resources list|get|claim|release`: the ownership ledger through
 * ResourceService, in every CLI mode (in-process or the control socket as
 * the local operator; `--server` as the key in KEYGATE_API_KEY).
 */

const KIND = { kind: { type: "string" } } as const;

function iso(ts: Timestamp | undefined): string | null {
  return ts ? timestampDate(ts).toISOString() : null;
}

export function resourceJson(resource: Resource): Record<string, unknown> {
  return {
    kind: resource.kind,
    id: resource.id,
    org: resource.org,
    namespace: resource.namespace,
    key_id: resource.keyId,
    created_at: iso(resource.createdAt),
    released_at: iso(resource.releasedAt),
  };
}

function resourceText(resource: Resource): string {
  const rows: [string, string][] = [
    ["kind", resource.kind],
    ["id", resource.id],
    ["org", resource.org],
    ["namespace", resource.namespace],
    ["claimed by", resource.keyId],
    ["created", iso(resource.createdAt) ?? "-"],
    ["state", resource.releasedAt ? `released ${iso(resource.releasedAt)}` : "live"],
  ];
  return rows.map(([k, v]) => `${k.padEnd(11)}${v}`).join("\n");
}

function resourceTable(resources: Resource[]): string {
  const head = ["KIND", "ID", "ORG", "NAMESPACE", "CLAIMED BY", "CREATED", "RELEASED"];
  const rows = resources.map((r) => [r.kind, r.id, r.org, r.namespace, r.keyId, iso(r.createdAt) ?? "-", iso(r.releasedAt) ?? "-"]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()).join("\n");
}

function printOne(out: Out, resource: Resource | undefined, extra: Record<string, unknown> = {}): void {
  if (!resource) throw new CliError("unexpected response from server");
  if (out.json) out.print(JSON.stringify({ ...resourceJson(resource), ...extra }));
  else out.print(resourceText(resource));
}

const kindOf = (parsed: Parsed) => (parsed.flags.kind as string | undefined) ?? DEFAULT_RESOURCE_KIND;

function oneId(parsed: Parsed, command: string): string {
  if (parsed.positionals.length !== 1) throw new CliError(`resources ${command} takes exactly one resource id`);
  return parsed.positionals[0]!;
}

export async function runResources(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case "list":
      return resourcesList(rest);
    case "get":
      return resourcesGet(rest);
    case "claim":
      return resourcesClaim(rest);
    case "release":
      return resourcesRelease(rest);
    default:
      throw new CliError(sub ? `unknown resources command "${sub}"; use list, get, claim or release` : "resources needs a command: list, get, claim or release");
  }
}

async function resourcesList(args: string[]): Promise<number> {
  const parsed = parse(args, {
    ...KIND,
    org: { type: "string" },
    namespace: { type: "string" },
    key: { type: "string" },
    released: { type: "boolean" },
    "page-size": { type: "string" },
    "page-token": { type: "string" },
    all: { type: "boolean" },
  });
  if (parsed.flags.help) return help();
  if (parsed.positionals.length > 0) throw new CliError(`resources list takes no arguments, got "${parsed.positionals[0]}"`);
  const out = createOut(Boolean(parsed.flags.json));
  const sizeText = (parsed.flags["page-size"] as string | undefined) ?? "100";
  if (!/^\d+$/.test(sizeText) || Number(sizeText) < 1 || Number(sizeText) > 1000) throw new CliError(`--page-size: a whole number from 1 to 1000, not "${sizeText}"`);
  return withConnection(parsed, "resources list", async (c) => {
    const resources: Resource[] = [];
    let token = (parsed.flags["page-token"] as string | undefined) ?? "";
    let next = "";
    do {
      const response = await c.resources.list({
        kind: kindOf(parsed),
        org: (parsed.flags.org as string | undefined) ?? "",
        namespace: (parsed.flags.namespace as string | undefined) ?? "",
        keyId: (parsed.flags.key as string | undefined) ?? "",
        includeReleased: Boolean(parsed.flags.released),
        pageSize: Number(sizeText),
        pageToken: token,
      });
      resources.push(...response.resources);
      next = response.nextPageToken;
      token = next;
    } while (parsed.flags.all && next !== "");
    if (out.json) out.print(JSON.stringify({ resources: resources.map(resourceJson), next_page_token: next }));
    else {
      out.print(resources.length > 0 ? resourceTable(resources) : `no ${kindOf(parsed)}`);
      if (next) out.note(`more: --page-token ${next} (or --all)`);
    }
    return 0;
  });
}

async function resourcesGet(args: string[]): Promise<number> {
  const parsed = parse(args, KIND);
  if (parsed.flags.help) return help();
  const id = oneId(parsed, "get");
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, "resources get", async (c) => {
    printOne(out, (await c.resources.get({ kind: kindOf(parsed), id })).resource);
    return 0;
  });
}

async function resourcesClaim(args: string[]): Promise<number> {
  const parsed = parse(args, { ...KIND, org: { type: "string" }, namespace: { type: "string" } });
  if (parsed.flags.help) return help();
  const id = oneId(parsed, "claim");
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, "resources claim", async (c) => {
    const response = await c.resources.claim({
      kind: kindOf(parsed),
      id,
      org: (parsed.flags.org as string | undefined) ?? "",
      namespace: (parsed.flags.namespace as string | undefined) ?? "",
    });
    printOne(out, response.resource, { created: response.created });
    if (!out.json && !response.created) out.note("Already claimed by this org: nothing changed.");
    return 0;
  });
}

async function resourcesRelease(args: string[]): Promise<number> {
  const parsed = parse(args, KIND);
  if (parsed.flags.help) return help();
  const id = oneId(parsed, "release");
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, "resources release", async (c) => {
    const response = await c.resources.release({ kind: kindOf(parsed), id });
    if (out.json) out.print(JSON.stringify({ ...(response.resource && resourceJson(response.resource)), released: response.released }));
    else out.print(response.released ? `released ${kindOf(parsed)} ${id}` : `${kindOf(parsed)} ${id} was already released`);
    return 0;
  });
}
