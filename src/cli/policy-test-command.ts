import { readdir, readFile, stat } from "node:fs/promises";
import { isAbsolute, join, relative, resolve } from "node:path";
import { parseDecisionTable, runDecisionTables, type CaseResult, type DecisionTable } from "../policy-tools/decision-table.js";
import { loadPolicy, PolicyLoadError, type Policy } from "../core/policy/policy.js";
import { CliError, configOrThrow, help, parse } from "./args.js";
import { readPolicyDir } from "../config/config.js";
import { createOut, type Out } from "./output.js";

/**
 * `keygate policy test [FILES…]`: run decision tables (YAML, see
 * src/policy-tools/decision-table.ts) against the policy in --policy-dir, as
 * `opa test` runs Rego tests. No FILES: every *.yaml / *.yml under
 * <policy-dir>/tests/. A directory among FILES means the tables under it.
 * Exit 0 when every case passes, 1 when any fails, 2 when a table or the
 * policy cannot be read.
 */
export async function runPolicyTest(args: string[]): Promise<number> {
  const parsed = parse(args, {});
  if (parsed.flags.help) return help();
  const out = createOut(Boolean(parsed.flags.json));
  const cwd = process.cwd();
  const policyDir = configOrThrow(readPolicyDir(parsed.flags, process.env, cwd));

  const files = await tableFiles(parsed.positionals, policyDir, cwd);
  const tables = await readTables(files, cwd);
  const policy = await loadPolicy(policyDir).catch((error: unknown) => {
    if (error instanceof PolicyLoadError) throw new CliError(`cannot load the policy (--policy-dir ${policyDir}): ${error.message}`, { cause: error });
    throw error;
  });
  const results = runDecisionTables(policy, tables);
  const failed = results.filter((r) => !r.passed).length;
  if (out.json) printJson(out, policy, results, failed);
  else printText(out, results, failed);
  return failed > 0 ? 1 : 0;
}

const isTableFile = (name: string) => name.endsWith(".yaml") || name.endsWith(".yml");

/** The table files to run, in a stable order. */
async function tableFiles(positionals: string[], policyDir: string, cwd: string): Promise<string[]> {
  if (positionals.length === 0) {
    const dir = join(policyDir, "tests");
    const found = await tablesUnder(dir).catch((error: unknown) => {
      throw new CliError(`no decision tables: cannot read ${dir} (${(error as Error).message}); pass table files or add ${join(dir, "*.yaml")}`, { cause: error });
    });
    if (found.length === 0) throw new CliError(`no decision tables (*.yaml, *.yml) in ${dir}`);
    return found;
  }
  const files: string[] = [];
  for (const given of positionals) {
    const path = isAbsolute(given) ? given : resolve(cwd, given);
    const info = await stat(path).catch((error: unknown) => {
      throw new CliError(`cannot read ${given}: ${(error as Error).message}`, { cause: error });
    });
    if (!info.isDirectory()) {
      files.push(path);
      continue;
    }
    const found = await tablesUnder(path);
    if (found.length === 0) throw new CliError(`no decision tables (*.yaml, *.yml) in ${given}`);
    files.push(...found);
  }
  // A file named both directly and through its directory runs once.
  return [...new Set(files)];
}

async function tablesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries
    .filter(isTableFile)
    .map((name) => join(dir, name))
    .sort();
}

/** Every table parsed; all problems in all files reported together. */
async function readTables(files: string[], cwd: string): Promise<DecisionTable[]> {
  const tables: DecisionTable[] = [];
  const errors: string[] = [];
  for (const file of files) {
    const shown = displayPath(file, cwd);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (error) {
      errors.push(`${shown}: cannot read: ${(error as Error).message}`);
      continue;
    }
    const result = parseDecisionTable(text, shown);
    if (result.ok) tables.push(result.table);
    else errors.push(...result.errors);
  }
  if (errors.length > 0) {
    const shown = errors.slice(0, 20);
    if (errors.length > 20) shown.push(`… and ${errors.length - 20} more`);
    throw new CliError(`invalid decision table${errors.length > 1 ? "s" : ""}:\n  ${shown.join("\n  ")}`);
  }
  return tables;
}

/** Relative to the working directory when below it, as the user would type it. */
function displayPath(file: string, cwd: string): string {
  const rel = relative(cwd, file);
  return rel !== "" && !rel.startsWith("..") && !isAbsolute(rel) ? rel : file;
}

function expectedText(r: CaseResult): string {
  const { expect, reason, rule } = r.case;
  return [expect, reason && `reason ${reason}`, rule && `rule ${rule}`].filter(Boolean).join(", ");
}

function gotText(r: CaseResult): string {
  const d = r.decision;
  return [d.allowed ? "allow" : "deny", `reason ${d.reason}`, d.message && JSON.stringify(d.message), d.matchedRule ? `rule ${d.matchedRule}` : "no rule"]
    .filter(Boolean)
    .join(", ");
}

function printText(out: Out, results: CaseResult[], failed: number): void {
  const width = Math.max(...results.map((r) => r.file.length));
  for (const r of results) {
    const head = `${r.passed ? "PASS" : "FAIL"}  ${r.file.padEnd(width)}  ${r.case.name}`;
    out.print(r.passed ? head : `${head}  — expected ${expectedText(r)}; got ${gotText(r)}`);
  }
  out.print(`${results.length - failed} passed, ${failed} failed`);
}

function printJson(out: Out, policy: Policy, results: CaseResult[], failed: number): void {
  out.print(
    JSON.stringify({
      policy: { dir: policy.info.dir, version: policy.info.version, files: policy.info.files, engine: policy.info.engine },
      passed: results.length - failed,
      failed,
      results: results.map((r) => ({
        file: r.file,
        line: r.case.line,
        table: r.table,
        index: r.case.index,
        case: r.case.name,
        passed: r.passed,
        request: {
          roles: r.case.roles,
          org: r.case.org,
          key_namespace: r.case.keyNamespace,
          namespace: r.case.namespace,
          request_org: r.case.requestOrg,
          path: r.case.path,
          method: r.case.method,
        },
        expected: { expect: r.case.expect, reason: r.case.reason ?? null, rule: r.case.rule ?? null },
        got: {
          expect: r.decision.allowed ? "allow" : "deny",
          reason: r.decision.reason,
          message: r.decision.message,
          matched_rule: r.decision.matchedRule,
          ...(!r.decision.allowed && r.decision.explanation && { closest_rules: r.decision.explanation }),
        },
        mismatches: r.mismatches,
      })),
    }),
  );
}
