import { create } from "@bufbuild/protobuf";
import { Reason } from "../../gen/keygate/v1/authorize_pb.js";
import {
  CreateKeyActionSchema,
  ManageKeyRequestSchema,
  RoleListSchema,
  UpdateKeyActionSchema,
  type ApiKey,
  type ManageKeyRequest,
  type ManageKeyResponse,
} from "../../gen/keygate/v1/key_pb.js";
import { parseExpiry, parseDuration } from "../core/time/duration.js";
import { parseRateLimit } from "../core/ratelimit/rate-limit.js";
import { reasonFromProto } from "../entries/rpc/convert.js";
import { readCliKeys } from "../config/config.js";
import { CliError, configOrThrow, help, type Options, parse, type Parsed } from "./args.js";
import { withConnection, type Connection } from "./connect.js";
import { createOut, keyJson, keyTable, keyText, usageJson, usageText, type Out } from "./output.js";

function manage(connection: Connection, action: ManageKeyRequest["action"]): Promise<ManageKeyResponse> {
  return connection.keys.manageKey(create(ManageKeyRequestSchema, { action }));
}

function checkDuration(flag: string, value: string | undefined, allowZero = false): void {
  if (value === undefined) return;
  const result = allowZero ? parseDuration(value) : parseExpiry(value);
  if (!result.ok) throw new CliError(`--${flag}: ${result.error}`);
}

function checkRateLimit(value: string | undefined): void {
  if (value === undefined) return;
  const result = parseRateLimit(value);
  if (!result.ok) throw new CliError(`--rate-limit: ${result.error}`);
}

/** --max-sandboxes: a whole number, 0 (no sandboxes) up. */
function checkMaxSandboxes(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,10}$/.test(value) || Number(value) > 1_000_000_000) throw new CliError(`--max-sandboxes: "${value}" is not a whole number from 0 to 1000000000`);
  return Number(value);
}

function printCreated(out: Out, response: ManageKeyResponse, verb: string): void {
  if (response.result.case !== "created" || !response.result.value.key) throw new CliError("unexpected response from server");
  const { key, plaintext } = response.result.value;
  if (out.json) {
    out.print(JSON.stringify({ id: key.id, key: plaintext, ...keyJson(key) }));
    return;
  }
  out.print(plaintext);
  out.note(
    `${verb} ${key.id} (org ${key.org}, namespace ${key.namespace}, roles ${key.roles.join(",")}, expires ${key.expiresAt ? keyJson(key).expires_at : "never"}, rate limit ${key.rateLimit || "server default"}${key.maxSandboxes !== undefined ? `, at most ${key.maxSandboxes} live sandboxes` : ""}).`,
  );
  out.note("This is the only time the key is shown: store it now.");
}

function printKey(out: Out, key: ApiKey | undefined, withUsage = false): void {
  if (!key) throw new CliError("unexpected response from server");
  if (out.json) out.print(JSON.stringify({ ...keyJson(key), ...(withUsage && usageJson(key)) }));
  else out.print(withUsage ? `${keyText(key)}\n\n${usageText(key)}` : keyText(key));
}

const KEYGEN_OPTIONS: Options = {
  expire: { type: "string" },
  namespace: { type: "string" },
  org: { type: "string" },
  role: { type: "string", multiple: true },
  "allow-unknown-role": { type: "boolean" },
  name: { type: "string" },
  "rate-limit": { type: "string" },
  "max-sandboxes": { type: "string" },
};

export async function runKeygen(args: string[]): Promise<number> {
  const parsed = parse(args, KEYGEN_OPTIONS);
  if (parsed.flags.help) return help();
  if (parsed.positionals.length > 0) throw new CliError(`keygen takes no arguments, got "${parsed.positionals[0]}"`);
  const out = createOut(Boolean(parsed.flags.json));
  const expire = parsed.flags.expire as string | undefined;
  checkDuration("expire", expire);
  const rateLimit = parsed.flags["rate-limit"] as string | undefined;
  checkRateLimit(rateLimit);
  const maxSandboxes = checkMaxSandboxes(parsed.flags["max-sandboxes"] as string | undefined);
  const action = create(CreateKeyActionSchema, {
    ...(maxSandboxes !== undefined && { maxSandboxes }),
    name: (parsed.flags.name as string | undefined) ?? "",
    org: (parsed.flags.org as string | undefined) ?? "",
    namespace: (parsed.flags.namespace as string | undefined) ?? "",
    roles: (parsed.flags.role as string[] | undefined) ?? [],
    rateLimit: rateLimit ?? "",
    allowUnknownRoles: Boolean(parsed.flags["allow-unknown-role"]),
    ...(expire !== undefined && { expiry: { case: "expiresIn" as const, value: expire } }),
  });
  return withConnection(parsed, "keygen", async (c) => {
    printCreated(out, await manage(c, { case: "create", value: action }), "Created");
    return 0;
  });
}

export async function runKeys(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case "list":
      return keysList(rest);
    case "get":
    case "revoke":
    case "enable":
    case "delete":
      return keysSimple(sub, rest);
    case "rotate":
      return keysRotate(rest);
    case "update":
      return keysUpdate(rest);
    case "reset":
      return keysReset(rest);
    default:
      throw new CliError(sub ? `unknown keys command "${sub}"; use list, get, update, revoke, enable, rotate, delete or reset` : "keys needs a command: list, get, update, revoke, enable, rotate, delete or reset");
  }
}

function oneId(parsed: Parsed, command: string): string {
  if (parsed.positionals.length !== 1) throw new CliError(`keys ${command} takes exactly one key id`);
  return parsed.positionals[0]!;
}

async function keysList(args: string[]): Promise<number> {
  const parsed = parse(args, {
    org: { type: "string" },
    namespace: { type: "string" },
    enabled: { type: "string" },
    "page-size": { type: "string" },
    "page-token": { type: "string" },
    all: { type: "boolean" },
  }, 0);
  if (parsed.flags.help) return help();
  const out = createOut(Boolean(parsed.flags.json));
  const enabledText = parsed.flags.enabled as string | undefined;
  if (enabledText !== undefined && enabledText !== "true" && enabledText !== "false") throw new CliError(`--enabled: use true or false, not "${enabledText}"`);
  const sizeText = (parsed.flags["page-size"] as string | undefined) ?? "100";
  if (!/^\d+$/.test(sizeText) || Number(sizeText) < 1 || Number(sizeText) > 1000) throw new CliError(`--page-size: a whole number from 1 to 1000, not "${sizeText}"`);
  return withConnection(parsed, "keys list", async (c) => {
    const keys: ApiKey[] = [];
    let token = (parsed.flags["page-token"] as string | undefined) ?? "";
    let next = "";
    do {
      const response = await manage(c, {
        case: "list",
        value: {
          $typeName: "keygate.v1.ListKeysAction",
          org: (parsed.flags.org as string | undefined) ?? "",
          namespace: (parsed.flags.namespace as string | undefined) ?? "",
          ...(enabledText !== undefined && { enabled: enabledText === "true" }),
          pageSize: Number(sizeText),
          pageToken: token,
        },
      });
      if (response.result.case !== "page") throw new CliError("unexpected response from server");
      keys.push(...response.result.value.keys);
      next = response.result.value.nextPageToken;
      token = next;
    } while (parsed.flags.all && next !== "");
    if (out.json) out.print(JSON.stringify({ keys: keys.map((k) => ({ ...keyJson(k), ...usageJson(k) })), next_page_token: next }));
    else {
      out.print(keys.length > 0 ? keyTable(keys) : "no keys");
      if (next) out.note(`more: --page-token ${next} (or --all)`);
    }
    return 0;
  });
}

async function keysSimple(command: "get" | "revoke" | "enable" | "delete", args: string[]): Promise<number> {
  const parsed = parse(args, {});
  if (parsed.flags.help) return help();
  const id = oneId(parsed, command);
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, `keys ${command}`, async (c) => {
    const base = { id };
    let response: ManageKeyResponse;
    switch (command) {
      case "get":
        response = await manage(c, { case: "get", value: { $typeName: "keygate.v1.GetKeyAction", ...base } });
        break;
      case "revoke":
        response = await manage(c, { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", ...base } });
        break;
      case "enable":
        response = await manage(c, { case: "update", value: create(UpdateKeyActionSchema, { id, enabled: true }) });
        break;
      case "delete":
        response = await manage(c, { case: "delete", value: { $typeName: "keygate.v1.DeleteKeyAction", ...base } });
        if (out.json) out.print(JSON.stringify({ deleted: id }));
        else out.print(`deleted ${id}`);
        return 0;
    }
    printKey(out, response.result.case === "key" ? response.result.value : undefined, command === "get");
    return 0;
  });
}

async function keysRotate(args: string[]): Promise<number> {
  const parsed = parse(args, { grace: { type: "string" } });
  if (parsed.flags.help) return help();
  const id = oneId(parsed, "rotate");
  const grace = (parsed.flags.grace as string | undefined) ?? "";
  if (grace !== "") checkDuration("grace", grace, true);
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, "keys rotate", async (c) => {
    const response = await manage(c, { case: "rotate", value: { $typeName: "keygate.v1.RotateKeyAction", id, grace } });
    printCreated(out, response, `Rotated ${id} to`);
    if (!out.json) {
      out.note(grace === "" ? `The old key ${id} keeps working until you revoke it.` : grace.match(/^0+[a-z]+$/) ? `The old key ${id} is revoked.` : `The old key ${id} stops working in ${grace}.`);
    }
    return 0;
  });
}

async function keysUpdate(args: string[]): Promise<number> {
  const parsed = parse(args, {
    name: { type: "string" },
    role: { type: "string", multiple: true },
    "allow-unknown-role": { type: "boolean" },
    expire: { type: "string" },
    "no-expire": { type: "boolean" },
    "rate-limit": { type: "string" },
    "no-rate-limit": { type: "boolean" },
    "max-sandboxes": { type: "string" },
    "no-max-sandboxes": { type: "boolean" },
  });
  if (parsed.flags.help) return help();
  const id = oneId(parsed, "update");
  const out = createOut(Boolean(parsed.flags.json));
  const expire = parsed.flags.expire as string | undefined;
  if (expire !== undefined && parsed.flags["no-expire"]) throw new CliError("use either --expire or --no-expire");
  checkDuration("expire", expire);
  const rateLimit = parsed.flags["rate-limit"] as string | undefined;
  if (rateLimit !== undefined && parsed.flags["no-rate-limit"]) throw new CliError("use either --rate-limit or --no-rate-limit");
  checkRateLimit(rateLimit);
  const maxSandboxes = checkMaxSandboxes(parsed.flags["max-sandboxes"] as string | undefined);
  if (maxSandboxes !== undefined && parsed.flags["no-max-sandboxes"]) throw new CliError("use either --max-sandboxes or --no-max-sandboxes");
  const roles = parsed.flags.role as string[] | undefined;
  const action = create(UpdateKeyActionSchema, {
    id,
    ...(parsed.flags.name !== undefined && { name: parsed.flags.name as string }),
    ...(roles && { roles: create(RoleListSchema, { roles }) }),
    allowUnknownRoles: Boolean(parsed.flags["allow-unknown-role"]),
    ...(expire !== undefined && { expiry: { case: "expiresIn" as const, value: expire } }),
    ...(parsed.flags["no-expire"] && { expiry: { case: "neverExpires" as const, value: true } }),
    ...(rateLimit !== undefined && { rateLimitChange: { case: "rateLimit" as const, value: rateLimit } }),
    ...(parsed.flags["no-rate-limit"] && { rateLimitChange: { case: "noRateLimit" as const, value: true } }),
    ...(maxSandboxes !== undefined && { maxSandboxesChange: { case: "maxSandboxes" as const, value: maxSandboxes } }),
    ...(parsed.flags["no-max-sandboxes"] && { maxSandboxesChange: { case: "noMaxSandboxes" as const, value: true } }),
  });
  return withConnection(parsed, "keys update", async (c) => {
    const response = await manage(c, { case: "update", value: action });
    printKey(out, response.result.case === "key" ? response.result.value : undefined);
    return 0;
  });
}

async function keysReset(args: string[]): Promise<number> {
  const parsed = parse(args, { org: { type: "string" }, yes: { type: "boolean" } }, 0);
  if (parsed.flags.help) return help();
  const org = (parsed.flags.org as string | undefined) ?? "";
  if (!parsed.flags.yes) {
    throw new CliError(`keys reset revokes every key${org ? ` of org ${org}` : " of every org"} at once; run again with --yes to do it`);
  }
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, "keys reset", async (c) => {
    const response = await manage(c, { case: "resetAll", value: { $typeName: "keygate.v1.ResetAllAction", org } });
    if (response.result.case !== "resetAll") throw new CliError("unexpected response from server");
    const count = response.result.value.revokedCount;
    // The scope the server applied: the org asked for; with --server and no --org, the calling key's own
    // org (and namespace, for a scoped key); locally with no --org, every org.
    const remote = parsed.flags.server !== undefined;
    const scope = org ? `of org ${org}` : remote ? "of the calling key's org (and namespace, if it has one)" : "of every org";
    if (out.json) out.print(JSON.stringify({ revoked: count, scope: org ? { org } : remote ? "caller" : "all" }));
    else {
      out.print(`revoked ${count} key${count === 1 ? "" : "s"} ${scope}`);
      out.note(
        org || remote
          ? `Keys ${scope} have stopped working; keys outside it are unchanged. Create new ones with "keygate keygen".`
          : 'Every existing key, in every org, has stopped working. Create new ones with "keygate keygen".',
      );
    }
    return 0;
  });
}

export async function runCheck(args: string[]): Promise<number> {
  const parsed = parse(args, {
    key: { type: "string" },
    path: { type: "string" },
    method: { type: "string" },
    namespace: { type: "string" },
    org: { type: "string" },
    explain: { type: "boolean" },
  }, 0);
  if (parsed.flags.help) return help();
  const key = configOrThrow(readCliKeys(parsed.flags, process.env)).checkKey;
  const path = parsed.flags.path as string | undefined;
  if (!key) throw new CliError("check needs --key KEY");
  if (path === undefined) throw new CliError("check needs --path PATH");
  const explain = Boolean(parsed.flags.explain);
  const out = createOut(Boolean(parsed.flags.json));
  return withConnection(parsed, "check", async (c) => {
    // Always an explain request: that marks the local operator's check, which the server
    // decides as traffic but does not count (usage, rate limits). Over --server it is ignored.
    const counted = c.mode === "remote";
    const response = await c.authorize.authorize({
      credential: key,
      path,
      method: (parsed.flags.method as string | undefined) ?? "",
      namespace: (parsed.flags.namespace as string | undefined) ?? "",
      org: (parsed.flags.org as string | undefined) ?? "",
      explain: true,
    });
    const reason = reasonFromProto(response.reason) ?? Reason[response.reason] ?? "unknown";
    const explanation = response.explanation.map((miss) => ({ rule: miss.rule, text: miss.text, reasons: miss.reasons }));
    if (out.json) {
      out.print(
        JSON.stringify({
          allowed: response.allowed,
          reason,
          message: response.message,
          matched_rule: response.matchedRule,
          key: response.key ? { id: response.key.id, name: response.key.name, org: response.key.org, namespace: response.key.namespace, roles: response.key.roles } : null,
          rate_limit: response.rateLimit ? { limit: response.rateLimit.limit, remaining: response.rateLimit.remaining, reset_seconds: response.rateLimit.resetSeconds } : null,
          counted,
          ...(explain && { explanation }),
        }),
      );
    } else {
      out.print(`decision:  ${response.allowed ? "ALLOW" : "DENY"}`);
      out.print(`reason:    ${reason}${response.message ? ` — ${response.message}` : ""}`);
      if (response.key) {
        out.print(`key:       ${response.key.id} (org ${response.key.org}, namespace ${response.key.namespace}, roles ${response.key.roles.join(",")})`);
      }
      out.print(`rule:      ${response.matchedRule || (response.allowed ? "-" : reason === "not_found" ? "- (the policy allows; the ownership check denies)" : "no rule allows this request")}`);
      if (response.rateLimit) {
        const { limit, remaining, resetSeconds } = response.rateLimit;
        out.print(`rate:      ${remaining} of ${limit} left, resets in ${resetSeconds}s`);
      }
      if (explain && !response.allowed) printExplanation(out, explanation, reason);
      out.print(
        counted
          ? "counted:   over --server a check is an ordinary decision: it counts toward the key's usage and rate limit"
          : "not counted: checks do not count toward usage or rate limits",
      );
    }
    return response.allowed ? 0 : 1;
  });
}

/** The closest rules that did not match a denied request, each with what differed. */
function printExplanation(out: Out, explanation: { rule: string; text: string; reasons: string[] }[], reason: string): void {
  if (explanation.length === 0) {
    out.print(reason === "forbidden" ? "closest:   none to show (no rules, or a custom model, which keygate does not explain)" : `closest:   - (denied before the policy was consulted: ${reason})`);
    return;
  }
  if (reason === "not_found") {
    // The policy allowed; the owned-path check (routes.yaml) did not.
    out.print("ownership (the policy allows; the sandbox is not this key's):");
    for (const miss of explanation) {
      out.print(`  ${miss.rule}  ${miss.text}`);
      for (const why of miss.reasons) out.print(`      - ${why}`);
    }
    return;
  }
  out.print("closest rules that did not match:");
  for (const miss of explanation) {
    out.print(miss.rule ? `  ${miss.rule}  ${miss.text}` : "  (the key's scope, checked before any rule)");
    for (const why of miss.reasons) out.print(`      - ${why}`);
  }
}
