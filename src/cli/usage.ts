import { environmentOnlyHelp, flagsHelp } from "../config/settings-docs.js";

/** The global help page (keygate --help); the serve flags come from the settings schema (config/settings.ts). */
export const USAGE = `keygate — policy decision service for API keys

Usage: keygate <command> [options]

Server
  serve                 serve Authorize, ManageKey (gRPC, Connect, gRPC-Web) and the Cube callback
${flagsHelp("serve")}
${environmentOnlyHelp("serve")}
  shim --upstream URL   serve only the Cube callback, asking a remote keygate over gRPC
  migrate               apply database migrations
  status                show database, policy, keys and whether a server is running

Keys
  keygen [--expire DUR] [--namespace NS] [--org ORG] [--role ROLE]... [--allow-unknown-role] [--name NAME] [--rate-limit N/WINDOW] [--max-sandboxes N] [--json]
                        create a key; the key is printed once. Each --role must be one the policy
                        names (case-sensitive); --allow-unknown-role accepts any other
  keys list [--org ORG] [--namespace NS] [--enabled true|false] [--page-size N] [--page-token T] [--all]
  keys get ID
  keys revoke ID | keys enable ID | keys delete ID
  keys rotate ID [--grace DUR]   new key now; old one works until revoked or for DUR ("0s" = stop at once)
  keys update ID [--name N] [--role R]... [--allow-unknown-role] [--expire DUR | --no-expire] [--rate-limit N/WINDOW | --no-rate-limit] [--max-sandboxes N | --no-max-sandboxes]
  keys reset [--org ORG] --yes   revoke every key (of ORG, or of every org)
  check --key K --path P [--method M] [--namespace NS] [--org ORG] [--explain]
                        explain one decision (exit 0 allowed, 1 denied); --explain lists the
                        closest rules that did not match and why. Not counted: a check takes
                        nothing from the key's usage or rate limit (over --server it does)
  audit [--org ORG] [--namespace NS] [--key KEY_ID] [--since DUR|ISO] [--limit N]
                        who changed keys, and refused attempts, newest first (--since 24h =
                        the last 24 hours; default --limit 100)

Owned resources (who owns which sandbox; --kind KIND, default sandboxes)
  resources list [--kind K] [--org ORG] [--namespace NS] [--key KEY_ID] [--released] [--page-size N] [--page-token T] [--all]
  resources get ID [--kind K]
  resources claim ID [--kind K] [--org ORG] [--namespace NS]
                        record an owner for a resource keygate's proxy did not create
  resources release ID [--kind K]
                        end its ownership (it was destroyed); Cube's sandbox.deleted
                        webhook does this by itself (KEYGATE_CUBE_WEBHOOK_SECRET)

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
