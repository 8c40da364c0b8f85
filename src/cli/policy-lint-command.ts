import { isAbsolute, resolve } from "node:path";
import { lintPolicy } from "../policy-tools/lint.js";
import { readPolicySource, type Diagnostic } from "../core/policy/policy-source.js";
import { CliError, configOrThrow, help, parse } from "./args.js";
import { readPolicyDir } from "../config/config.js";
import { createOut } from "./output.js";

/**
 * `keygate policy lint [DIR]`: one line per problem ("policy.csv:12: error: …"),
 * sorted by file and line, then a count. Exit 1 when there is an error, so CI
 * can gate on it; warnings alone exit 0.
 */
export async function runPolicyLint(args: string[]): Promise<number> {
  const parsed = parse(args, {});
  if (parsed.flags.help) return help();
  if (parsed.positionals.length > 1) throw new CliError(`policy lint takes at most one directory, got ${parsed.positionals.length}`);
  const out = createOut(Boolean(parsed.flags.json));
  const given = parsed.positionals[0];
  // An explicit DIR needs no configuration (so a bad DATABASE_URL cannot stop a lint).
  const dir = given === undefined ? configOrThrow(readPolicyDir(parsed.flags, process.env, process.cwd())) : isAbsolute(given) ? given : resolve(given);

  const diagnostics = lintPolicy(await readPolicySource(dir));
  const errors = diagnostics.filter((d) => d.severity === "error").length;
  const warnings = diagnostics.length - errors;
  if (out.json) {
    out.print(JSON.stringify(diagnostics.map(({ where, severity, message }) => ({ where, severity, message }))));
  } else {
    for (const d of diagnostics) out.print(formatLine(d));
    out.print(diagnostics.length === 0 ? "no problems" : `${count(errors, "error")}, ${count(warnings, "warning")}`);
  }
  return errors > 0 ? 1 : 0;
}

function formatLine({ where, severity, message }: Diagnostic): string {
  return where ? `${where}: ${severity}: ${message}` : `${severity}: ${message}`;
}

function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}
