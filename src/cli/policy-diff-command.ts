import { open } from "node:fs/promises";
import { isAbsolute, resolve } from "node:path";
import { createInterface } from "node:readline";
import { loadPolicy, PolicyLoadError, type Policy } from "../core/policy/policy.js";
import {
  createReplayDiff,
  DEFAULT_EXAMPLE_LIMIT,
  parseRequestLine,
  REQUEST_FIELDS,
  requestJson,
  synthesizeRequests,
  type FlipGroup,
  type ReplayDiff,
  type ReplayRequest,
  type SynthesizedRequests,
} from "../policy-tools/replay-diff.js";
import { CliError, configOrThrow, parse } from "./args.js";
import { readPolicyDir } from "../config/config.js";
import { createOut, type Out } from "./output.js";

const DIFF_USAGE = `Usage: keygate policy diff --against OLD_DIR [--requests FILE] [--policy-dir NEW_DIR] [--json] [--limit N]

Decides a set of requests under the OLD policy (--against) and the NEW one
(--policy-dir, default KEYGATE_POLICY_DIR or policies) and prints the decisions
that flip: allow→deny grouped by the old rule that allowed, deny→allow grouped
by the new rule that allows, up to N examples each (default ${DEFAULT_EXAMPLE_LIMIT}).

  --requests FILE   JSON lines, one request per line ("-" = stdin); blank lines
                    and lines starting with # are skipped. Fields:
${Object.entries(REQUEST_FIELDS)
  .map(([name, meaning]) => `                      ${name.padEnd(14)}${meaning}`)
  .join("\n")}
                    Both spellings of a field, if given, must agree; other
                    fields are ignored.
                    Without --requests, requests are synthesized from both policies.

Exit status: 0 nothing flips, 1 something flips, 2 error.
`;

/** Beyond this many synthesized requests, replay a sample (--requests) instead. */
const MAX_SYNTHESIZED = 2_000_000;
const MAX_LIMIT = 100_000;
/** Malformed request lines reported in full; the rest are counted. */
const SHOWN_ERRORS = 5;

type RequestSource = { kind: "file"; file: string } | { kind: "synthesized"; synthesized: SynthesizedRequests };

export async function runPolicyDiff(args: string[]): Promise<number> {
  const { flags, positionals } = parse(args, {
    against: { type: "string" },
    requests: { type: "string" },
    limit: { type: "string" },
  });
  if (flags.help) {
    process.stdout.write(DIFF_USAGE);
    return 0;
  }
  if (positionals.length > 0) throw new CliError(`policy diff: unexpected argument "${positionals[0]}"\n\n${DIFF_USAGE}`);
  const against = flags.against;
  if (typeof against !== "string" || against === "") throw new CliError(`policy diff needs --against OLD_DIR (the policy before the edit)\n\n${DIFF_USAGE}`);
  const limit = parseLimit(flags.limit);
  const cwd = process.cwd();
  const newDir = configOrThrow(readPolicyDir(flags, process.env, cwd));
  const oldDir = isAbsolute(against) ? against : resolve(cwd, against);
  const out = createOut(flags.json === true);

  const oldPolicy = await loadSide("old", "--against", oldDir);
  const newPolicy = await loadSide("new", "--policy-dir", newDir);
  const replay = createReplayDiff(oldPolicy, newPolicy, { limit });

  let source: RequestSource;
  if (typeof flags.requests === "string") {
    source = { kind: "file", file: flags.requests };
    await readRequests(flags.requests, cwd, (request) => replay.add(request));
  } else {
    const synthesized = synthesizeRequests([oldPolicy, newPolicy]);
    if (synthesized.count > MAX_SYNTHESIZED) {
      throw new CliError(
        `synthesizing would make ${synthesized.count} requests (${dimensions(synthesized)}), more than ${MAX_SYNTHESIZED}; ` +
          `replay a sample instead with --requests FILE`,
      );
    }
    source = { kind: "synthesized", synthesized };
    for (const request of synthesized.requests()) replay.add(request);
  }
  const diff = replay.result();
  if (out.json) out.print(JSON.stringify(diffJson(diff, oldPolicy, newPolicy, source)));
  else printDiff(out, diff, oldPolicy, newPolicy, source);
  return diff.flipped > 0 ? 1 : 0;
}

function parseLimit(value: string | boolean | string[] | undefined): number {
  if (value === undefined) return DEFAULT_EXAMPLE_LIMIT;
  const text = String(value);
  if (!/^\d+$/.test(text) || Number(text) > MAX_LIMIT) throw new CliError(`--limit: "${text}" is not a whole number from 0 to ${MAX_LIMIT}`);
  return Number(text);
}

/** Loads one side; a broken policy is an error naming the side, its flag and dir, and file:line. */
async function loadSide(side: "old" | "new", flag: string, dir: string): Promise<Policy> {
  try {
    return await loadPolicy(dir);
  } catch (error) {
    if (error instanceof PolicyLoadError) throw new CliError(`cannot load the ${side} policy (${flag} ${dir}): ${error.message}`, { cause: error });
    throw error;
  }
}

/** Streams a JSON-lines request file, so a long decision log is never held in memory. */
async function readRequests(file: string, cwd: string, add: (request: ReplayRequest) => void): Promise<void> {
  const path = file === "-" ? "-" : isAbsolute(file) ? file : resolve(cwd, file);
  const errors: string[] = [];
  let errorCount = 0;
  let handle;
  try {
    handle = file === "-" ? undefined : await open(path, "r");
  } catch (error) {
    throw new CliError(`cannot read --requests ${path}: ${(error as Error).message}`, { cause: error });
  }
  const lines = createInterface({ input: handle ? handle.createReadStream({ encoding: "utf8" }) : process.stdin, crlfDelay: Infinity });
  let number = 0;
  try {
    for await (const raw of lines) {
      number++;
      const parsed = parseRequestLine(number === 1 ? raw.replace(/^\ufeff/, "") : raw, number);
      if (parsed.kind === "request") add(parsed.request);
      else if (parsed.kind === "error") {
        errorCount++;
        if (errors.length < SHOWN_ERRORS) errors.push(parsed.message);
      }
    }
  } catch (error) {
    throw new CliError(`cannot read --requests ${path}: ${(error as Error).message}`, { cause: error });
  } finally {
    lines.close();
    await handle?.close();
  }
  if (errorCount > 0) {
    if (errorCount > errors.length) errors.push(`… and ${errorCount - errors.length} more malformed lines`);
    throw new CliError(`--requests ${path}: ${plural(errorCount, "malformed line")}:\n  ${errors.join("\n  ")}\nRun "keygate policy diff --help" for the fields a line may carry.`);
  }
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function dimensions(s: SynthesizedRequests): string {
  return [
    plural(s.roles.length, "role"),
    plural(s.orgs.length, "org"),
    plural(s.namespaces.length, "namespace"),
    plural(s.paths.length, "path"),
    plural(s.methods.length, "method"),
  ].join(" × ");
}

function policyJson(policy: Policy): Record<string, unknown> {
  return { dir: policy.info.dir, version: policy.info.version, rules: policy.info.rules };
}

function groupJson(group: FlipGroup): Record<string, unknown> {
  return {
    rule: group.rule,
    text: group.text,
    count: group.count,
    examples: group.examples.map(requestJson),
    more: group.count - group.examples.length,
  };
}

function diffJson(diff: ReplayDiff, oldPolicy: Policy, newPolicy: Policy, source: RequestSource): Record<string, unknown> {
  const s = source.kind === "synthesized" ? source.synthesized : undefined;
  return {
    old_policy: policyJson(oldPolicy),
    new_policy: policyJson(newPolicy),
    requests: s
      ? {
          source: "synthesized",
          count: s.count,
          roles: s.roles,
          orgs: s.orgs,
          namespaces: s.namespaces,
          paths: s.paths.length,
          methods: s.methods,
        }
      : { source: "file", file: source.kind === "file" ? source.file : "", count: diff.requests },
    summary: {
      requests: diff.requests,
      flipped: diff.flipped,
      allow_to_deny: diff.allowToDeny,
      deny_to_allow: diff.denyToAllow,
      rule_changed: diff.ruleChanged,
      bad_requests: diff.badRequests,
    },
    allow_to_deny: diff.allowToDenyGroups.map(groupJson),
    deny_to_allow: diff.denyToAllowGroups.map(groupJson),
    rule_changed: diff.ruleChangedExamples.map((change) => ({ request: requestJson(change.request), old_rule: change.oldRule, new_rule: change.newRule })),
  };
}

/** "roles=reader org=acme  GET /templates", with the optional fields only when set. */
function requestText(request: ReplayRequest): string {
  const who = [`roles=${request.roles.join(",") || "(none)"}`, `org=${request.org}`];
  if (request.keyNamespace !== "*") who.push(`key_namespace=${request.keyNamespace}`);
  if (request.namespace !== "") who.push(`namespace=${request.namespace}`);
  if (request.requestOrg !== "") who.push(`request_org=${request.requestOrg}`);
  const what = `${request.method || "(every method)"} ${request.path}`;
  return `${who.join(" ")}  ${what}${request.line !== undefined ? `  (line ${request.line})` : ""}`;
}

function printGroups(out: Out, groups: FlipGroup[], verb: string): void {
  for (const group of groups) {
    const rule = group.rule ? `${group.rule}  ${group.text}`.trimEnd() : "(no rule named)";
    out.print(`  ${rule}  ${verb}: ${plural(group.count, "request")}`);
    for (const example of group.examples) out.print(`    ${requestText(example)}`);
    const more = group.count - group.examples.length;
    if (more > 0) out.print(`    …and ${more} more`);
  }
}

function printDiff(out: Out, diff: ReplayDiff, oldPolicy: Policy, newPolicy: Policy, source: RequestSource): void {
  out.print(`old: ${oldPolicy.info.dir} (version ${oldPolicy.info.version}, ${plural(oldPolicy.info.rules, "rule")})`);
  out.print(`new: ${newPolicy.info.dir} (version ${newPolicy.info.version}, ${plural(newPolicy.info.rules, "rule")})`);
  if (source.kind === "synthesized") {
    out.print(`synthesized ${plural(source.synthesized.count, "request")} from both policies: ${dimensions(source.synthesized)}`);
  } else {
    out.print(`read ${plural(diff.requests, "request")} from ${source.file}`);
  }
  out.print("");
  out.print(`${plural(diff.requests, "request")}, ${diff.flipped} flipped (${diff.allowToDeny} allow→deny, ${diff.denyToAllow} deny→allow)`);
  if (diff.allowToDenyGroups.length > 0) {
    out.print("");
    out.print("allow→deny, by the old rule that allowed:");
    printGroups(out, diff.allowToDenyGroups, "no longer allows");
  }
  if (diff.denyToAllowGroups.length > 0) {
    out.print("");
    out.print("deny→allow, by the new rule that allows:");
    printGroups(out, diff.denyToAllowGroups, "now allows");
  }
  const notes: string[] = [];
  if (diff.ruleChanged > 0) notes.push(`${plural(diff.ruleChanged, "request")} still allowed, by a different (or edited) rule`);
  if (diff.badRequests > 0) notes.push(`${plural(diff.badRequests, "request")} refused before the policy (malformed path, method, org or namespace), the same under both`);
  if (notes.length > 0) {
    out.print("");
    for (const note of notes) out.print(note);
  }
}
