import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * The shell and TypeScript snippets of the docs, as a reader would run them.
 *
 * A fenced block in `sh`/`bash`/`shell` or `ts`/`typescript` is a snippet;
 * other fences (yaml, csv, text, …) are not commands. An HTML comment on the
 * line just before the fence says how to run it, parts separated by ";":
 *
 *   <!-- snippet: expect "HTTP/1.1 200 OK"; exit 1 -->
 *   <!-- snippet: skip: needs a Docker engine -->
 *
 * - `expect "TEXT"` (JSON string syntax, repeatable): the output holds TEXT;
 * - `exit N`: the block's first failing command fails with N (default: none fails);
 * - `fresh-copy`: run in a copy of the repository's tracked files, as on a new machine;
 * - `until "TEXT"`: a command that keeps running (a server): done once its output holds TEXT;
 * - `skip: REASON`: not run, and REASON says why (required); the rest of the comment is the reason.
 */

export type SnippetLanguage = "sh" | "ts";

export interface SnippetDirectives {
  expects: string[];
  exit?: number;
  skip?: string;
  freshCopy?: boolean;
  until?: string;
}

export interface Snippet {
  file: string;
  /** 1-based line of the opening fence. */
  line: number;
  language: SnippetLanguage;
  code: string;
  directives: SnippetDirectives;
}

const LANGUAGES: Record<string, SnippetLanguage> = { sh: "sh", bash: "sh", shell: "sh", ts: "ts", typescript: "ts" };

/** Every snippet of one Markdown file; a malformed directive throws, naming file and line. */
export function parseSnippets(markdown: string, file: string): Snippet[] {
  const lines = markdown.split("\n");
  const snippets: Snippet[] = [];
  for (let i = 0; i < lines.length; i++) {
    const fence = /^(`{3,})\s*([A-Za-z]*)\s*$/.exec(lines[i]!);
    if (!fence) continue;
    const end = lines.findIndex((text, j) => j > i && text.startsWith(fence[1]!) && text.trim() === fence[1]);
    if (end === -1) throw new Error(`${file}:${i + 1}: fence never closed`);
    const language = LANGUAGES[fence[2]!.toLowerCase()];
    const previous = lines[i - 1] ?? "";
    const comment = /^<!--\s*snippet:(.*)-->\s*$/.exec(previous);
    if (language) {
      snippets.push({
        file,
        line: i + 1,
        language,
        code: lines.slice(i + 1, end).join("\n"),
        directives: comment ? parseDirectives(comment[1]!, `${file}:${i}`) : { expects: [] },
      });
    } else if (comment) throw new Error(`${file}:${i}: a snippet directive on a "${fence[2]}" block, which is never run`);
    i = end;
  }
  return snippets;
}

export function parseDirectives(text: string, where: string): SnippetDirectives {
  const directives: SnippetDirectives = { expects: [] };
  let rest = text.trim();
  while (rest !== "") {
    let match: RegExpExecArray | null;
    if ((match = /^skip:\s*(.+)$/s.exec(rest))) {
      directives.skip = match[1]!.trim();
      break;
    } else if ((match = /^(expect|until)\s+("(?:[^"\\]|\\.)*")\s*(;|$)/.exec(rest))) {
      const value = JSON.parse(match[2]!) as string;
      if (match[1] === "expect") directives.expects.push(value);
      else directives.until = value;
    } else if ((match = /^exit\s+(\d+)\s*(;|$)/.exec(rest))) {
      directives.exit = Number(match[1]);
    } else if ((match = /^fresh-copy\s*(;|$)/.exec(rest))) {
      directives.freshCopy = true;
    } else {
      throw new Error(`${where}: unknown snippet directive "${rest}"`);
    }
    rest = rest.slice(match[0].length).trim();
  }
  if (directives.skip === "") throw new Error(`${where}: "skip:" needs a reason`);
  return directives;
}

/** The docs use keygate's default address; the tests' servers listen on a free port. */
export function atPort(code: string, port: number): string {
  return code.replace(/\b(?:127\.0\.0\.1|localhost):8080\b/g, `127.0.0.1:${port}`);
}

export interface ShellResult {
  output: string;
  /** The first command that failed, with its status; undefined when none did. */
  failure?: { status: number; command: string };
  /** Still running (an `until` block): stop it. */
  stop?: () => Promise<void>;
}

/**
 * One reader's terminal: blocks run one after another in bash, and the
 * variables a block sets (KEY=…) are there for the next block and, through
 * `variables()`, for the TypeScript snippets on the same page.
 */
export class ShellSession {
  private readonly state = new Map<string, string>();

  constructor(
    private readonly cwd: string,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  variables(): Record<string, string> {
    return Object.fromEntries(this.state);
  }

  async run(code: string, { timeoutMs = 120_000, until }: { timeoutMs?: number; until?: string } = {}): Promise<ShellResult> {
    const dir = await mkdtemp(join(tmpdir(), "keygate-snippet-"));
    const failFile = join(dir, "failed");
    const varsFile = join(dir, "vars");
    const exports = [...this.state].map(([name, value]) => `export ${name}=${shellQuote(value)}`).join("\n");
    const script = [
      "set -E",
      exports,
      `__kg_start=" $(compgen -v | tr '\\n' ' ') "`,
      `__kg_fail=""`,
      `trap '__kg_rc=$?; if [ -z "$__kg_fail" ]; then __kg_fail="$__kg_rc $BASH_COMMAND"; fi' ERR`,
      code,
      "trap - ERR",
      `printf '%s' "$__kg_fail" > ${shellQuote(failFile)}`,
      `for __kg_v in $(compgen -v); do case "$__kg_v" in [A-Z]*) case "$__kg_start" in *" $__kg_v "*) ;; *) printf '%s=%s\\0' "$__kg_v" "\${!__kg_v}";; esac;; esac; done > ${shellQuote(varsFile)}`,
      ...[...this.state.keys()].map((name) => `printf '%s=%s\\0' ${name} "\${${name}}" >> ${shellQuote(varsFile)}`),
    ].join("\n");
    const child = spawn("bash", ["-c", script], { cwd: this.cwd, env: { ...this.env, ...this.variables() }, stdio: ["ignore", "pipe", "pipe"], detached: true });
    let output = "";
    const closed = new Promise<number>((done) => child.on("close", (code) => done(code ?? -1)));
    const stopGroup = async () => {
      try {
        process.kill(-child.pid!, "SIGTERM");
      } catch {
        // already gone
      }
      await closed;
    };
    const onData = (chunk: Buffer) => (output += chunk.toString());
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    const timer = setTimeout(() => void stopGroup(), timeoutMs);
    try {
      if (until !== undefined) {
        const seen = await new Promise<boolean>((done) => {
          const check = () => output.includes(until) && done(true);
          child.stdout.on("data", check);
          child.stderr.on("data", check);
          void closed.then(() => done(output.includes(until)));
        });
        clearTimeout(timer);
        if (!seen) return { output, failure: { status: child.exitCode ?? -1, command: `(exited before "${until}")` } };
        return { output, stop: stopGroup };
      }
      await closed;
    } finally {
      if (until === undefined) clearTimeout(timer);
    }
    const failed = await readFile(failFile, "utf8").catch(() => "");
    for (const entry of (await readFile(varsFile, "utf8").catch(() => "")).split("\0")) {
      const eq = entry.indexOf("=");
      if (eq > 0) this.state.set(entry.slice(0, eq), entry.slice(eq + 1));
    }
    await rm(dir, { recursive: true, force: true });
    if (failed === "") return { output };
    const space = failed.indexOf(" ");
    return { output, failure: { status: Number(failed.slice(0, space)), command: failed.slice(space + 1) } };
  }
}

function shellQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}
