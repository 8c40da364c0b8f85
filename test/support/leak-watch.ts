import { execFile } from "node:child_process";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { DEFAULT_KEY_PREFIX, RANDOM_LENGTH } from "../../src/core/keys/key-format.js";
import { startOtlpReceiver } from "./otlp-receiver.js";

/**
 * "No key appears in any log line, error message, metric or trace": every
 * hardening test file runs its keygate processes at debug level with traces
 * sent to a LeakWatch's OTLP receiver, records every key it made and every
 * text it was shown (outputs, error messages, /metrics), and ends with
 * `expect(watch.leaks()).toEqual([])`. The database is scanned the same way.
 */

const PREFIX = DEFAULT_KEY_PREFIX;

export interface LeakWatch {
  /** Env for a keygate process: debug logs, every trace exported to this watch. */
  env: Record<string, string>;
  /** A key that was made (or a near-miss of one): it must appear nowhere. */
  key(key: string): void;
  /** A text to search: a process's output, an error message, a /metrics body. */
  text(where: string, text: string): void;
  /** Fetch URL (e.g. /metrics) now and keep its body to search. */
  fetchText(where: string, url: string): Promise<void>;
  /** Each [where, what] leak found in the texts and in every trace export so far. */
  leaks(): string[];
  /** How many texts, trace exports and keys were searched (so a test can show the scan saw something). */
  counts(): { texts: number; traces: number; keys: number };
  close(): Promise<void>;
}

/** What must not appear: each key, and its random part (masked logs may show the prefix and 4 more characters). */
export function secretForms(key: string): string[] {
  return key.startsWith(PREFIX) && key.length >= PREFIX.length + RANDOM_LENGTH ? [key, key.slice(PREFIX.length, PREFIX.length + RANDOM_LENGTH)] : [key];
}

export function findLeaks(texts: readonly (readonly [string, string])[], keys: readonly string[]): string[] {
  const forms = [...new Set(keys.flatMap(secretForms))].filter((form) => form.length >= 16);
  const found: string[] = [];
  for (const [where, text] of texts) {
    for (const form of forms) if (text.includes(form)) found.push(`${where}: ${form.startsWith(PREFIX) ? "a key" : "a key's random part"} (${form.slice(0, PREFIX.length + 4)}…)`);
  }
  return found;
}

export async function startLeakWatch(): Promise<LeakWatch> {
  const keys: string[] = [];
  const texts: [string, string][] = [];
  const receiver = await startOtlpReceiver();
  const traces = () => receiver.exports.map((e) => e.body.toString("utf8"));
  return {
    env: {
      KEYGATE_LOG_LEVEL: "debug",
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_SERVICE_NAME: "keygate-hardening",
      OTEL_BSP_SCHEDULE_DELAY: "200",
    },
    key: (key) => void keys.push(key),
    text: (where, text) => void texts.push([where, text]),
    async fetchText(where, url) {
      const response = await fetch(url);
      texts.push([where, await response.text()]);
    },
    leaks: () => findLeaks([...texts, ...traces().map((t, i): [string, string] => [`trace export ${i + 1}`, t])], keys),
    counts: () => ({ texts: texts.length, traces: receiver.exports.length, keys: keys.length }),
    close: () => receiver.close(),
  };
}

const exec = promisify(execFile);

/** The whole database as text (pg_dump --data-only), to search for plaintext keys. */
export async function dumpPostgres(url: string): Promise<string> {
  const parsed = new URL(url);
  const { stdout } = await exec("pg_dump", ["--data-only", "--no-owner", url], {
    maxBuffer: 512 * 1024 * 1024,
    env: { ...process.env, PGUSER: parsed.username || "postgres" },
  });
  return stdout;
}

/** Every file under DIR (a PGlite data dir), as [path, bytes as latin1 text] pairs to search. */
export async function readDataDir(dir: string): Promise<[string, string][]> {
  const files = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((f) => f.isFile());
  const out: [string, string][] = [];
  for (const file of files) {
    const path = join(file.parentPath, file.name);
    out.push([path, (await readFile(path)).toString("latin1")]);
  }
  return out;
}
