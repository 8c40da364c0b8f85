import { parseArgs, type ParseArgsConfig } from "node:util";
import { ConnectError } from "@connectrpc/connect";
import { readPolicyDir, readRuntimeConfig, readStorageConfig, type ConfigResult, type Flags } from "../config/config.js";
import { runAudit } from "./audit-command.js";
import { runCheck, runKeygen, runKeys } from "./key-commands.js";
import { runPolicy } from "./policy-commands.js";
import { runMigrate, runServe, runShim, runStatus } from "./server-commands.js";
import { CliError } from "./connect.js";
import { createScrubber } from "../telemetry/logger.js";

export const USAGE = `keygate — policy decision service for API keys

Usage: keygate <command> [options]

Server
  serve                 serve Authorize, ManageKey (gRPC, Connect, gRPC-Web) and the Cube callback
      --port N            (PORT, default 8080)        --host H        (KEYGATE_HOST, default 127.0.0.1)
      --data-dir DIR      (KEYGATE_DATA_DIR, default .keygate; ignored with DATABASE_URL)
      --policy-dir DIR    (KEYGATE_POLICY_DIR, default policies)
      --credential-priority authorization,x-api-key | x-api-key,authorization
      --shim-path PATH    (KEYGATE_SHIM_PATH, default /verify)
      --default-rate-limit N/WINDOW  (KEYGATE_DEFAULT_RATE_LIMIT) limit of keys without their own; unset = unlimited
      --redis-url URL     (REDIS_URL) share rate-limit counters between instances through Redis
      --dev               allow every request (never in production)
      --log-level L       (KEYGATE_LOG_LEVEL) debug, info (default), warn or error; JSON lines on stderr
  shim --upstream URL   serve only the Cube callback, asking a remote keygate over gRPC
  migrate               apply database migrations
  status                show database, policy, keys and whether a server is running

Keys
  keygen [--expire DUR] [--namespace NS] [--org ORG] [--role ROLE]... [--name NAME] [--rate-limit N/WINDOW] [--json]
                        create a key; the key is printed once
  keys list [--org ORG] [--namespace NS] [--enabled true|false] [--page-size N] [--page-token T] [--all]
  keys get ID
  keys revoke ID | keys enable ID | keys delete ID
  keys rotate ID [--grace DUR]   new key now; old one works until revoked or for DUR ("0s" = stop at once)
  keys update ID [--name N] [--role R]... [--expire DUR | --no-expire] [--rate-limit N/WINDOW | --no-rate-limit]
  keys reset [--org ORG] --yes   revoke every key (of ORG, or of every org)
  check --key K --path P [--method M] [--namespace NS] [--org ORG] [--explain]
                        explain one decision (exit 0 allowed, 1 denied); --explain lists the
                        closest rules that did not match and why
  audit [--org ORG] [--key KEY_ID] [--since DUR|ISO] [--limit N]
                        who changed keys, and refused attempts, newest first (--since 24h =
                        the last 24 hours; default --limit 100)

Policy (read files only, never the database)
  policy lint [DIR]     check the policy: syntax, undefined roles, g cycles, shadowed rules,
                        over-broad paths, unknown methods, unanchored regexes (exit 1 on errors)
  policy test [FILES…]  run YAML decision tables (default: <policy-dir>/tests/*.yaml);
                        exit 0 all pass, 1 a failure, 2 an invalid table or policy
  policy diff --against OLD_DIR [--requests FILE] [--limit N]
                        the decisions that flip between OLD_DIR and --policy-dir, grouped by
                        rule (exit 1 when any flips)

Durations: 30s 15m 24h 7d 2w 3mo 1y (m = minutes, mo = 30 days, y = 365 days).
Rate limits: N/WINDOW, N requests per WINDOW (100/1s, 600/1m, 5000/1h; WINDOW at most 24d).
Database: DATABASE_URL=postgres://… uses Postgres; otherwise embedded PGlite in --data-dir.
The CLI works on the local data whether or not a server is running on it.
Remote: --server URL with KEYGATE_API_KEY set to an admin key manages keys over ManageKey.
Every command takes --json for machine-readable output.
`;

const COMMON = {
  "data-dir": { type: "string" },
  "database-url": { type: "string" },
  "policy-dir": { type: "string" },
  "key-prefix": { type: "string" },
  server: { type: "string" },
  "api-key": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

export type Options = NonNullable<ParseArgsConfig["options"]>;

export interface Parsed {
  flags: Flags & Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

export function parse(args: string[], options: Options): Parsed {
  try {
    const { values, positionals } = parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
    return { flags: values as Parsed["flags"], positionals };
  } catch (error) {
    throw new CliError(`${(error as Error).message}\nRun "keygate --help" for usage.`);
  }
}

export function configOrThrow<T>(result: ConfigResult<T>): T {
  if (!result.ok) throw new CliError(`invalid configuration:\n  ${result.errors.join("\n  ")}`);
  return result.config;
}

export { readPolicyDir, readRuntimeConfig, readStorageConfig };

export function help(): number {
  process.stdout.write(USAGE);
  return 0;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "serve":
        return await runServe(rest);
      case "shim":
        return await runShim(rest);
      case "migrate":
        return await runMigrate(rest);
      case "status":
        return await runStatus(rest);
      case "keygen":
        return await runKeygen(rest);
      case "keys":
        return await runKeys(rest);
      case "check":
        return await runCheck(rest);
      case "audit":
        return await runAudit(rest);
      case "policy":
        return await runPolicy(rest);
      case undefined:
      case "help":
      case "--help":
      case "-h":
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      case "--version":
      case "version":
        process.stdout.write("keygate 0.1.0\n");
        return 0;
      default:
        process.stderr.write(`keygate: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (error) {
    // Like the logs: a key or a URL's password quoted in an error is masked (KEYGATE_KEY_PREFIX is not read yet: the default).
    const scrub = createScrubber();
    if (error instanceof CliError) {
      process.stderr.write(`keygate: ${scrub(error.message)}\n`);
      return 2;
    }
    if (error instanceof ConnectError) {
      process.stderr.write(`keygate: ${scrub(error.rawMessage)} (${codeName(error.code)})\n`);
      return 1;
    }
    process.stderr.write(`keygate: ${scrub((error as Error).stack ?? String(error))}\n`);
    return 1;
  }
}

function codeName(code: number): string {
  const names = ["ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated"];
  return names[code] ?? String(code);
}
