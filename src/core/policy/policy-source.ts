import { isUtf8 } from "node:buffer";
import { createHash } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { BracketAwareCsvParser } from "casbin";
import { compileKeyMatch2, compileMethodPattern, type Compiled } from "./patterns.js";
import { NO_ROUTES, parseRoutes, ROUTES_FILE, type PolicyRoutes } from "./policy-routes.js";

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
  /** routes.yaml: prefixes and owned paths (none without the file). */
  routes: PolicyRoutes;
  /** Short content hash of model, rules and routes: changes whenever they do. */
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

/**
 * How long a policy file must have been left alone before it is read, and
 * how many times a read that raced a writer is tried again. A file written
 * in place passes through partial states (empty, a prefix, a line cut in
 * two); the watcher's debounce waits for the events to stop, and this waits
 * for the files themselves to be still and checks that nothing changed while
 * they were read.
 */
export const SETTLE_MS = 100;
const READ_ATTEMPTS = 6;

export interface ReadPolicyOptions {
  /** A file modified less than this long ago is waited for (default SETTLE_MS; 0 reads at once). */
  settleMs?: number;
  /** Reads tried before giving up on a directory that keeps changing. */
  attempts?: number;
}

/**
 * Reads a policy directory that may be being written: waits until no policy
 * file was modified in the last `settleMs`, reads it, and keeps the read only
 * when the directory and every file are as they were before it (same inode,
 * size and mtime); otherwise reads again. A directory still changing after
 * every attempt reads as an error, never as whatever was caught mid-write.
 *
 * What this cannot know: a writer that stops for longer than the settle time
 * (and the watcher's debounce) in the middle of a file leaves a file that
 * looks finished. A prefix cut inside a line is almost always an error (and
 * refused with its file:line); a prefix that ends on a line boundary is a
 * valid, shorter policy and is served until the rest arrives. Policies
 * should be replaced atomically (write a temp file, rename it over), as
 * editors, `kubectl` ConfigMaps and config tools do.
 */
export async function readPolicySource(dir: string, { settleMs = SETTLE_MS, attempts = READ_ATTEMPTS }: ReadPolicyOptions = {}): Promise<PolicySource> {
  let source: PolicySource | undefined;
  for (let attempt = 0; attempt < attempts; attempt++) {
    const before = await fingerprint(dir);
    const age = Date.now() - before.newestMtimeMs;
    // A future mtime (clock skew, an unpacked archive) says nothing about a writer: do not wait on it.
    if (settleMs > 0 && age >= 0 && age < settleMs) {
      await sleep(settleMs - age + 1);
      continue;
    }
    source = await readOnce(dir);
    const after = await fingerprint(dir);
    if (after.key === before.key) return source;
  }
  const last = source ?? (await readOnce(dir));
  const message = `policy files in ${dir} kept changing while being read (${attempts} attempts, ${settleMs} ms apart); not loaded`;
  return { ...last, diagnostics: [...last.diagnostics, { where: "", severity: "error", message }] };
}

interface Fingerprint {
  /** The directory, and model.conf and each *.csv in it: identity, size and mtime. */
  key: string;
  /** The newest mtime among those files (0 when there are none). */
  newestMtimeMs: number;
}

async function fingerprint(dir: string): Promise<Fingerprint> {
  const parts: string[] = [];
  let newestMtimeMs = 0;
  const note = async (name: string) => {
    try {
      // Follows symlinks: a ConfigMap's files are links through "..data".
      const info = await stat(join(dir, name), { bigint: true });
      parts.push(`${name}:${info.dev}:${info.ino}:${info.size}:${info.mtimeNs}:${info.ctimeNs}`);
      if (name !== ".") newestMtimeMs = Math.max(newestMtimeMs, Number(info.mtimeNs / 1_000_000n));
    } catch (error) {
      parts.push(`${name}:${(error as NodeJS.ErrnoException).code ?? "error"}`);
    }
  };
  await note(".");
  let entries: string[] = [];
  try {
    entries = await readdir(dir);
  } catch {
    // Unreadable: readOnce says why.
  }
  for (const name of entries.filter((n) => n === MODEL_FILE || n === ROUTES_FILE || n.endsWith(".csv")).sort()) await note(name);
  return { key: parts.join("\n"), newestMtimeMs };
}

/**
 * A policy file's text, or why it cannot be one: a file caught between
 * truncate and write is empty, and binary junk (a NUL byte, bytes that are
 * not UTF-8) never is a policy; each is refused with its file (and line).
 */
async function readPolicyFile(dir: string, file: string): Promise<{ text: string } | { error: Diagnostic }> {
  let bytes: Buffer;
  try {
    bytes = await readFile(join(dir, file));
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "no such file" : (error as Error).message;
    return { error: { where: file, severity: "error", message: `cannot read ${join(dir, file)}: ${reason}` } };
  }
  // Truncate-then-write passes through this state; a rules file meant to hold no rules says so in a comment.
  // (An empty model.conf is refused by the model checks, which say what it lacks.)
  if (bytes.length === 0 && file !== MODEL_FILE) {
    return { error: { where: file, severity: "error", message: "is empty (0 bytes): still being written? (a file with no rules on purpose holds at least a comment)" } };
  }
  const lineAt = (offset: number) => bytes.subarray(0, offset).reduce((n, b) => (b === 10 ? n + 1 : n), 1);
  const nul = bytes.indexOf(0);
  if (nul !== -1) return { error: { where: `${file}:${lineAt(nul)}`, severity: "error", message: "contains a NUL byte (a binary or corrupt file)" } };
  const text = bytes.toString("utf8");
  if (!isUtf8(bytes)) {
    const line = text.slice(0, text.indexOf("\uFFFD")).split("\n").length;
    return { error: { where: `${file}:${line}`, severity: "error", message: "is not valid UTF-8" } };
  }
  return { text };
}

async function readOnce(dir: string): Promise<PolicySource> {
  const diagnostics: Diagnostic[] = [];
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === "ENOENT" ? "does not exist" : `cannot be read: ${(error as Error).message}`;
    diagnostics.push({ where: "", severity: "error", message: `policy directory ${dir} ${reason}` });
    return { dir, modelText: "", files: [], rules: [], links: [], diagnostics, routes: NO_ROUTES, version: "" };
  }
  let modelText = "";
  const model = await readPolicyFile(dir, MODEL_FILE);
  if ("error" in model) diagnostics.push(model.error);
  else modelText = model.text;
  const files = entries.filter((name) => name.endsWith(".csv")).sort();
  if (entries.length > 0 && files.length === 0) diagnostics.push({ where: "", severity: "error", message: `no .csv policy files in ${dir}` });

  const hash = createHash("sha256").update(modelText);
  // Patterns repeat across lines (the same routes in many orgs): check each once.
  const checked: PatternChecks = { paths: new Map(), methods: new Map() };
  const rules: PolicyRule[] = [];
  const links: RoleLink[] = [];
  for (const file of files) {
    const read = await readPolicyFile(dir, file);
    if ("error" in read) {
      diagnostics.push(read.error);
      continue;
    }
    const { text } = read;
    hash.update(`\0${file}\0${text}`);
    const lines = text.split(/\r?\n/);
    for (let i = 0; i < lines.length; i++) {
      parseLine(lines[i]!, `${file}:${i + 1}`, rules, links, diagnostics, checked);
    }
  }
  let routes = NO_ROUTES;
  if (entries.includes(ROUTES_FILE)) {
    const read = await readPolicyFile(dir, ROUTES_FILE);
    if ("error" in read) diagnostics.push(read.error);
    else {
      hash.update(`\0${ROUTES_FILE}\0${read.text}`);
      const parsed = parseRoutes(read.text);
      diagnostics.push(...parsed.diagnostics);
      routes = parsed.routes;
      for (const rule of rules) {
        const prefix = routes.prefixes.find((p) => rule.path === p || rule.path.startsWith(`${p}/`));
        if (prefix) {
          diagnostics.push({ where: rule.where, severity: "warning", message: `path "${rule.path}" starts with ${prefix}, which ${ROUTES_FILE} strips before every decision: this rule can never match (write it without the prefix)` });
        }
      }
    }
  }
  return { dir, modelText, files, rules, links, diagnostics, routes, version: hash.digest("hex").slice(0, 12) };
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
