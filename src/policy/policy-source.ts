import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { BracketAwareCsvParser } from "casbin";
import { compileKeyMatch2, compileMethodPattern, type Compiled } from "./patterns.js";

/**
 * Reading a policy directory: `model.conf` and every `*.csv` file, in name
 * order. Each rule remembers where it came from ("policy.csv:12") for
 * `matched_rule`, explain, lint and diff. Problems are collected as
 * diagnostics (all of them, for lint) rather than thrown at the first.
 */

export const MODEL_FILE = "model.conf";

export interface PolicyRule {
  /** Position among all p rules, in file order: lower wins when several match. */
  index: number;
  /** "policy.csv:12" */
  where: string;
  sub: string;
  org: string;
  ns: string;
  path: string;
  method: string;
  /** The line as written. */
  text: string;
}

export interface RoleLink {
  where: string;
  /** child inherits parent's rules in domain ("*" = every org). */
  child: string;
  parent: string;
  domain: string;
  text: string;
}

export interface Diagnostic {
  /** "policy.csv:12", a file name for file-level problems, "" for the directory. */
  where: string;
  severity: "error" | "warning";
  message: string;
}

export interface PolicySource {
  dir: string;
  modelText: string;
  files: string[];
  rules: PolicyRule[];
  links: RoleLink[];
  diagnostics: Diagnostic[];
  /** Short content hash of model and rules: changes whenever they do. */
  version: string;
}

const FIELD_COUNT: Record<string, number> = { p: 5, g: 3 };
const parser = new BracketAwareCsvParser();

/**
 * Splits a CSV policy line into values exactly as Casbin's loader does
 * (csv-parse with trim, brackets re-joined, surrounding quotes removed, ""
 * unescaped), with a fast path for the common quote-free line.
 */
export function tokenizePolicyLine(line: string): string[] | undefined {
  if (!line.includes('"')) return splitUnquoted(line);
  const parsed = parser.parse(line);
  if (!parsed || !parsed[0]) return undefined;
  return parsed[0].map((value) => {
    let v = value.trim();
    if (v.startsWith('"') && v.endsWith('"') && v.length >= 2) v = v.slice(1, -1);
    return v.replace(/""/g, '"').trim();
  });
}

/**
 * The common quote-free line: split on ",", trim each piece, and re-join
 * pieces while a "(" is open (Casbin's BracketAwareCsvParser). Values come
 * out trimmed and, without quotes, need no unescaping.
 */
function splitUnquoted(line: string): string[] {
  const tokens: string[] = [];
  let current = "";
  let depth = 0;
  let open = false;
  let start = 0;
  for (;;) {
    const comma = line.indexOf(",", start);
    const token = (comma === -1 ? line.slice(start) : line.slice(start, comma)).trim();
    if (token.includes("(") || token.includes(")")) {
      for (let i = 0; i < token.length; i++) {
        const code = token.charCodeAt(i);
        if (code === 40 /* ( */) depth++;
        else if (code === 41 /* ) */) depth--;
      }
    }
    current = open ? `${current},${token}` : token;
    open = true;
    if (depth === 0) {
      tokens.push(current);
      current = "";
      open = false;
    }
    if (comma === -1) break;
    start = comma + 1;
  }
  if (depth !== 0) throw new Error('unmatched "(" or ")" (a bracket in one field joins it to the next, as in Casbin)');
  return tokens;
}

export async function readPolicySource(dir: string): Promise<PolicySource> {
  const diagnostics: Diagnostic[] = [];
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "does not exist" : `cannot be read: ${(error as Error).message}`;
    diagnostics.push({ where: "", severity: "error", message: `policy directory ${dir} ${reason}` });
    return { dir, modelText: "", files: [], rules: [], links: [], diagnostics, version: "" };
  }
  let modelText = "";
  try {
    modelText = await readFile(join(dir, MODEL_FILE), "utf8");
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message;
    diagnostics.push({ where: MODEL_FILE, severity: "error", message: `cannot read ${join(dir, MODEL_FILE)}: ${reason}` });
  }
  const files = entries.filter((name) => name.endsWith(".csv")).sort();
  if (entries.length > 0 && files.length === 0) diagnostics.push({ where: "", severity: "error", message: `no .csv policy files in ${dir}` });

  const hash = createHash("sha256").update(modelText);
  // Patterns repeat across lines (the same routes in many orgs): check each once.
  const checked: PatternChecks = { paths: new Map(), methods: new Map() };
  const rules: PolicyRule[] = [];
  const links: RoleLink[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = await readFile(join(dir, file), "utf8");
    } catch (error) {
      diagnostics.push({ where: file, severity: "error", message: `cannot read ${join(dir, file)}: ${(error as Error).message}` });
      continue;
    }
    hash.update(`\0${file}\0${text}`);
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      parseLine(lines[i]!, `${file}:${i + 1}`, rules, links, diagnostics, checked);
    }
  }
  return { dir, modelText, files, rules, links, diagnostics, version: hash.digest("hex").slice(0, 12) };
}

interface PatternChecks {
  /** Pattern → undefined when valid, else the error. */
  paths: Map<string, string | undefined>;
  methods: Map<string, string | undefined>;
}

function check(cache: Map<string, string | undefined>, pattern: string, compile: (pattern: string) => Compiled<unknown>): string | undefined {
  if (cache.has(pattern)) return cache.get(pattern);
  const result = compile(pattern);
  const error = result.ok ? undefined : result.error;
  cache.set(pattern, error);
  return error;
}

function parseLine(
  raw: string,
  where: string,
  rules: PolicyRule[],
  links: RoleLink[],
  diagnostics: Diagnostic[],
  checked: PatternChecks,
): void {
  const line = raw.trim();
  if (line === "" || line.startsWith("#")) return;
  const error = (message: string) => diagnostics.push({ where, severity: "error", message });
  let tokens: string[] | undefined;
  try {
    tokens = tokenizePolicyLine(line);
  } catch (e) {
    error(`cannot parse "${line.slice(0, 80)}": ${(e as Error).message}`);
    return;
  }
  const ptype = tokens?.[0];
  if (!tokens || !ptype || !(ptype in FIELD_COUNT)) {
    error(`expected a "p" or "g" line, got "${line.slice(0, 80)}"`);
    return;
  }
  if (tokens.length - 1 !== FIELD_COUNT[ptype]) {
    error(`a "${ptype}" line has ${FIELD_COUNT[ptype]} fields, this one has ${tokens.length - 1}`);
    return;
  }
  if (tokens.some((t) => t === "")) {
    error("empty field");
    return;
  }
  if (ptype === "g") {
    links.push({ where, child: tokens[1]!, parent: tokens[2]!, domain: tokens[3]!, text: line });
    return;
  }
  const [, sub, org, ns, path, method] = tokens as [string, string, string, string, string, string];
  const pathError = check(checked.paths, path, compileKeyMatch2);
  if (pathError !== undefined) {
    error(`invalid path pattern "${path}": ${pathError}`);
    return;
  }
  const methodError = check(checked.methods, method, compileMethodPattern);
  if (methodError !== undefined) {
    error(`invalid method pattern "${method}": ${methodError}`);
    return;
  }
  rules.push({ index: rules.length, where, sub, org, ns, path, method, text: line });
}
