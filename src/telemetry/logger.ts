import { pino, type DestinationStream } from "pino";
import { DEFAULT_KEY_PREFIX, isKeyBodyAt, KEY_BODY_LENGTH } from "../core/keys/key-format.js";

/**
 * Structured logs: one JSON line per event on stderr, through pino.
 * `{"level":"info","time":"2025-01-01T00:00:00.000Z","msg":"…",…fields}`.
 *
 * Callers pass key ids, never keys; still, a credential must not reach the
 * log by accident (a key pasted into a path, an error message quoting a
 * header, a URL with a password), so every line is scrubbed twice:
 * - by name: fields that hold credentials (authorization, x-api-key,
 *   credential, key, plaintext, password, …) are replaced, at any depth;
 * - by shape: any string that contains something shaped like a keygate key
 *   (the configured prefix, then base62) or a long base62 run (a key's
 *   random part without its prefix) is masked to its first four characters,
 *   and a URL's password becomes "***". Error messages, causes and stacks
 *   are strings like any other.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";
export const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
  /** The lowest level written: callers skip work for lines nobody will see (the per-request debug line). */
  readonly level?: LogLevel;
}

export interface LoggerOptions {
  /** The key prefix in force (KEYGATE_KEY_PREFIX): strings shaped like such a key are masked. */
  keyPrefix?: string;
}

/** What replaces a field whose name says it holds a credential. */
export const REDACTED = "[redacted]";

/**
 * Field names (lower case, `-` and `_` alike) whose values are never logged.
 * "key" is a credential in most APIs; keygate names a key by `key_id`.
 */
const SECRET_NAMES = new Set(
  [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "apikey",
    "credential",
    "credentials",
    "key",
    "plaintext",
    "secret",
    "token",
    "access-token",
    "password",
    "passwd",
    "cookie",
    "set-cookie",
    "database-url",
    "redis-url",
    "keygate-api-key",
    "connection-string",
  ].map(normalizeName),
);

function normalizeName(name: string): string {
  return name.toLowerCase().replace(/_/g, "-");
}

function isSecretName(name: string): boolean {
  return SECRET_NAMES.has(normalizeName(name));
}

/** pino's own redaction (top level and one level down): the same names, in the spellings callers use. */
function redactPaths(): string[] {
  const spellings = new Set<string>();
  for (const name of SECRET_NAMES) {
    spellings.add(name);
    spellings.add(name.replace(/-/g, "_"));
  }
  spellings.add("apiKey");
  spellings.add("databaseUrl");
  spellings.add("redisUrl");
  spellings.add("DATABASE_URL");
  spellings.add("REDIS_URL");
  spellings.add("KEYGATE_API_KEY");
  const quoted = [...spellings].map((name) => (/^[A-Za-z_$][\w$]*$/.test(name) ? name : `["${name}"]`));
  return [...quoted, ...quoted.map((name) => (name.startsWith("[") ? `*${name}` : `*.${name}`))];
}

const KEEP = 4;
/** A key's random part: in a log line, longer runs of letters and digits are masked whatever precedes them. */
const LONG_RUN = 36;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\-]/g, "\\$&");
}

export interface ScrubOptions {
  /**
   * Also mask any run of 36+ letters and digits (default true): for log
   * lines, which people read. The decision log turns it off, since it is
   * replayed and a long path segment there is data; real keys are still
   * found there by prefix or by checksum.
   */
  longRuns?: boolean;
}

/**
 * Masks credentials inside free text: `sk-sb-AbCd…` for a key (its display
 * prefix, which listings show anyway), `AbCd…` for a key body (random part
 * and checksum) without its prefix and, with `longRuns`, for any 36+
 * character run of letters and digits; `scheme://user:***@host` for a URL
 * with a password. Cheap for text with none of these: one regex test.
 */
export function createScrubber(keyPrefix: string = DEFAULT_KEY_PREFIX, { longRuns = true }: ScrubOptions = {}): (text: string) => string {
  const keyShape = new RegExp(`${escapeRegExp(keyPrefix)}([0-9A-Za-z]{${KEEP}})[0-9A-Za-z]+`, "g");
  const run = new RegExp(`[0-9A-Za-z]{${longRuns ? LONG_RUN : KEY_BODY_LENGTH},}`, "g");
  const urlPassword = /([a-z][a-z0-9+.-]*:\/\/[^\s:/?#@]*:)[^\s/?#@]+@/gi;
  const quick = new RegExp(`${escapeRegExp(keyPrefix)}|[0-9A-Za-z]{${Math.min(LONG_RUN, KEY_BODY_LENGTH)}}|://`);
  const maskRun = longRuns ? (text: string) => `${text.slice(0, KEEP)}…` : maskKeyBodies;
  return (text) => {
    if (!quick.test(text)) return text;
    return text.replace(urlPassword, "$1***@").replace(keyShape, `${keyPrefix}$1…`).replace(run, maskRun);
  };
}

/** A run of letters and digits with every key body in it masked (first four characters kept). */
function maskKeyBodies(text: string): string {
  let out = "";
  let from = 0;
  for (let i = 0; i + KEY_BODY_LENGTH <= text.length; i++) {
    if (!isKeyBodyAt(text, i)) continue;
    out += `${text.slice(from, i + KEEP)}…`;
    i += KEY_BODY_LENGTH - 1;
    from = i + 1;
  }
  return from === 0 ? text : out + text.slice(from);
}

/** A deep copy of a log line's fields with credentials replaced (by name) or masked (by shape). */
function scrubFields(value: unknown, scrub: (text: string) => string, depth = 0): unknown {
  if (typeof value === "string") return scrub(value);
  if (value === null || typeof value !== "object") return value;
  if (depth > 8) return "[too deep]";
  if (value instanceof Error) return scrubFields(describeError(value), scrub, depth + 1);
  if (Array.isArray(value)) return value.map((item) => scrubFields(item, scrub, depth + 1));
  if (value instanceof Date) return value.toISOString();
  const out: Record<string, unknown> = {};
  for (const [name, field] of Object.entries(value)) {
    out[name] = isSecretName(name) && field !== null && field !== undefined && field !== "" ? REDACTED : scrubFields(field, scrub, depth + 1);
  }
  return out;
}

function describeError(error: Error): Record<string, unknown> {
  return { name: error.name, message: error.message, ...(error.stack && { stack: error.stack }) };
}

function destinationFor(write: ((line: string) => void) | undefined): DestinationStream {
  if (write) return { write };
  // Synchronous: a line is on stderr when the call returns, so the last lines
  // before an exit (shutting down, stopped, a fatal error) are never lost in a
  // buffer. Lines are few at info; the cost is a write(2) per line.
  return pino.destination({ dest: 2, sync: true });
}

export function createLogger(level: LogLevel = "info", write?: (line: string) => void, { keyPrefix = DEFAULT_KEY_PREFIX }: LoggerOptions = {}): Logger {
  const scrub = createScrubber(keyPrefix);
  const logger = pino(
    {
      level,
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: redactPaths(), censor: REDACTED },
    },
    destinationFor(write),
  );
  // Stacks are for debugging: at info and above an error is its message (and its cause's).
  const stacks = level === "debug";
  const at = (method: LogLevel) => {
    if (!logger.isLevelEnabled(method)) return () => {};
    const emit = logger[method].bind(logger);
    // msg goes first among the fields (pino would put a message argument last), as before pino.
    return (message: string, fields?: Record<string, unknown>) => {
      const line = scrubFields(fields ?? {}, scrub) as Record<string, unknown>;
      if (!stacks) delete line.stack;
      emit({ msg: scrub(message), ...line });
    };
  };
  return { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error"), level };
}

/**
 * An error as log fields: its message, its cause's and its stack (written at
 * debug level only). The logger masks credentials in all of them.
 */
export function errorFields(error: unknown): Record<string, unknown> {
  if (error instanceof Error) {
    return {
      error: error.message,
      ...(error.cause instanceof Error && { cause: error.cause.message }),
      ...(error.stack && { stack: error.stack }),
    };
  }
  return { error: String(error) };
}
