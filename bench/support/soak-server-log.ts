import { DEFAULT_KEY_PREFIX, RANDOM_LENGTH } from "../../src/core/keys/key-format.js";
import type { ServerProcess } from "./process.js";

/**
 * Everything a server logs, line by line, from the moment it is watched
 * (plus what its start-up output still holds): counts per level, and the
 * first lines at error level (or worse) and of text that is not one of
 * keygate's JSON log lines (a Node warning, a stack trace, a crash).
 */
export interface ServerLogWatch {
  /** Lines per level ("info", "warn", "error", …; "text" for lines that are not JSON log lines). */
  readonly levels: Record<string, number>;
  /** Lines at level error or fatal. */
  readonly errors: number;
  /** The first few error lines and text lines, as logged (keygate masks credentials before it writes). */
  readonly examples: string[];
  /**
   * Lines that hold a secret: any of `secrets` (the random part of a key, as
   * secretPart gives it), anywhere in the line, prefixed or not. Found among
   * the lines kept for it: those with a run of at least that many base62
   * characters (a masked key, `sk-sb-AbCd…`, has none).
   */
  leaks(secrets: ReadonlySet<string>): string[];
  /** Stops counting (and returns the last partial line, if any, as counted). */
  stop(): void;
}

/** What of a key must never be logged: its random part (the prefix is public, the checksum follows from the rest). */
export function secretPart(key: string): string {
  return key.slice(DEFAULT_KEY_PREFIX.length, DEFAULT_KEY_PREFIX.length + SECRET_LENGTH);
}
const SECRET_LENGTH = RANDOM_LENGTH;
const LONG_RUN = new RegExp(`[A-Za-z0-9]{${SECRET_LENGTH},}`, "g");

const MAX_EXAMPLES = 10;
/** The bench's own lines (bench/servers/keygate-with-gc.ts), which carry no level. */
const BENCH_LINE = /^\{"msg":"bench memory"/;

export function watchServerLog(server: ServerProcess): ServerLogWatch {
  const levels: Record<string, number> = {};
  const examples: string[] = [];
  /** Lines that could hold a key's random part, searched by leaks(). */
  const suspects: string[] = [];
  let errors = 0;
  const partial = { stdout: "", stderr: "" };

  const countLine = (line: string) => {
    if (line.trim() === "" || BENCH_LINE.test(line)) return;
    if (line.match(LONG_RUN)) suspects.push(line);
    let level = "text";
    try {
      const parsed = JSON.parse(line) as { level?: unknown };
      if (typeof parsed.level === "string") level = parsed.level;
      else if (typeof parsed.level === "number") level = parsed.level >= 60 ? "fatal" : parsed.level >= 50 ? "error" : parsed.level >= 40 ? "warn" : "info";
    } catch {
      level = "text";
    }
    levels[level] = (levels[level] ?? 0) + 1;
    const isError = level === "error" || level === "fatal";
    if (isError) errors++;
    if ((isError || level === "text") && examples.length < MAX_EXAMPLES) examples.push(line.slice(0, 500));
  };
  const feed = (stream: "stdout" | "stderr") => (chunk: Buffer) => {
    const text = partial[stream] + chunk.toString();
    const lines = text.split("\n");
    partial[stream] = lines.pop() ?? "";
    for (const line of lines) countLine(line);
  };
  // What it logged before listening (startup warnings, migrations) is still in its output tail.
  for (const line of server.output().split("\n")) countLine(line);
  const onStdout = feed("stdout");
  const onStderr = feed("stderr");
  server.child.stdout?.on("data", onStdout);
  server.child.stderr?.on("data", onStderr);

  return {
    levels,
    get errors() {
      return errors;
    },
    examples,
    leaks(secrets) {
      const found: string[] = [];
      for (const line of suspects) {
        // String#match with a global pattern starts from 0 and returns every run.
        const hit = (line.match(LONG_RUN) ?? []).some((run) => {
          for (let at = 0; at + SECRET_LENGTH <= run.length; at++) if (secrets.has(run.slice(at, at + SECRET_LENGTH))) return true;
          return false;
        });
        if (hit) found.push(line);
      }
      return found;
    },
    stop() {
      server.child.stdout?.off("data", onStdout);
      server.child.stderr?.off("data", onStderr);
      for (const stream of ["stdout", "stderr"] as const) {
        if (partial[stream]) countLine(partial[stream]);
        partial[stream] = "";
      }
    },
  };
}
