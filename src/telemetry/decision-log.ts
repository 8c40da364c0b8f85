import { once } from "node:events";
import { createWriteStream } from "node:fs";
import type { Writable } from "node:stream";
import type { AuthorizeInput, Decision, DecisionEntry } from "../core/authorize/decision.js";
import { normalizeMethod, normalizePath } from "../core/request/normalize.js";
import { DEFAULT_KEY_PREFIX } from "../core/keys/key-format.js";
import { createScrubber } from "./logger.js";

/**
 * The decision log: one JSON line per decision, for audit and for replaying
 * real traffic against a policy edit (`keygate policy diff --requests`).
 * Never the credential: a line names the key by id, roles, org and namespace,
 * and a key pasted into a field the client controls (a path, a namespace) is
 * masked to its display prefix (`sk-sb-AbCd…`), as in the server's log.
 *
 * Written through a buffered stream so a decision never waits for the disk.
 * When the disk falls behind and the stream's buffer passes `maxBufferBytes`,
 * lines are dropped and counted instead of growing memory without bound.
 */

export type DecisionLogMode = "none" | "denies" | "all" | "sampled";
export const DECISION_LOG_MODES: readonly DecisionLogMode[] = ["none", "denies", "all", "sampled"];
export type { DecisionEntry };

/** Raw strings (a malformed path, method, org) are kept this long at most. */
export const MAX_RAW_LENGTH = 256;
export const DEFAULT_MAX_BUFFER_BYTES = 1024 * 1024;

export interface DecisionLine {
  time: string;
  entry: DecisionEntry;
  reason: Decision["reason"];
  allowed: boolean;
  key_id: string | null;
  /** null for a decision without a key (missing or invalid credential, dev mode): `policy diff` skips it. */
  key_roles: string[] | null;
  key_org: string | null;
  key_namespace: string | null;
  namespace: string;
  request_org: string;
  path: string;
  method: string;
  matched_rule: string;
  source: string | null;
}

/** Control characters (C0, DEL, C1, line separators) as visible escapes; the rest unchanged. */
export function escapeControl(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => {
    const code = c.charCodeAt(0);
    return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

/** A client-supplied string, truncated and made printable. */
export function rawField(text: string): string {
  return escapeControl(text.length > MAX_RAW_LENGTH ? text.slice(0, MAX_RAW_LENGTH) : text);
}

/** Masks keys in the fields a client writes (found by prefix or by checksum; other long words are kept). */
export type Scrub = (text: string) => string;
const defaultScrub = createScrubber(DEFAULT_KEY_PREFIX, { longRuns: false });

export function decisionLine(input: AuthorizeInput, decision: Decision, time: Date, scrub: Scrub = defaultScrub): DecisionLine {
  const path = normalizePath(input.path);
  const method = normalizeMethod(input.method);
  const key = decision.key;
  return {
    time: time.toISOString(),
    entry: input.entry ?? "rpc",
    reason: decision.reason,
    allowed: decision.allowed,
    key_id: key?.id ?? null,
    key_roles: key ? [...key.roles] : null,
    key_org: key?.org ?? null,
    key_namespace: key?.namespace ?? null,
    namespace: rawField(scrub(input.namespace)),
    request_org: rawField(scrub(input.org)),
    path: path.ok ? scrub(path.value) : rawField(scrub(input.path)),
    method: method.ok ? method.value : rawField(scrub(input.method)),
    matched_rule: decision.matchedRule,
    source: input.source === undefined ? null : rawField(input.source),
  };
}

export interface DecisionLog {
  /** Called once per decision; never throws, never waits. */
  record(input: AuthorizeInput, decision: Decision): void;
  /** Lines dropped so far (buffer full or the stream failed). */
  dropped(): number;
  /** Flushes what is buffered and closes the stream (not stdout). */
  close(): Promise<void>;
}

export interface DecisionLogOptions {
  mode: DecisionLogMode;
  /** Sampled mode: the fraction (0–1) of allows logged; every deny is logged. */
  sample: number;
  stream: Writable;
  now?: () => Date;
  random?: () => number;
  maxBufferBytes?: number;
  /** End the stream on close (false for stdout). */
  ownsStream?: boolean;
  /** The key prefix in force: keys with it are masked wherever a client put them. */
  keyPrefix?: string;
  /** Told how many lines were dropped, once the stream has caught up again. */
  onDropped?: (count: number) => void;
  onError?: (error: unknown) => void;
}

export function createDecisionLog({
  mode,
  sample,
  stream,
  now = () => new Date(),
  random = Math.random,
  maxBufferBytes = DEFAULT_MAX_BUFFER_BYTES,
  ownsStream = true,
  keyPrefix = DEFAULT_KEY_PREFIX,
  onDropped,
  onError,
}: DecisionLogOptions): DecisionLog {
  const scrub = keyPrefix === DEFAULT_KEY_PREFIX ? defaultScrub : createScrubber(keyPrefix, { longRuns: false });
  let dropped = 0;
  let unreported = 0;
  let failed = false;
  let closing: Promise<void> | undefined;
  stream.on("error", (error) => {
    if (!failed) onError?.(error);
    failed = true;
  });
  stream.on("drain", () => {
    if (unreported > 0) onDropped?.(unreported);
    unreported = 0;
  });

  const wanted = (decision: Decision): boolean => {
    switch (mode) {
      case "none":
        return false;
      case "all":
        return true;
      case "denies":
        return !decision.allowed;
      case "sampled":
        return !decision.allowed || random() < sample;
    }
  };

  return {
    record(input, decision) {
      if (!wanted(decision)) return;
      try {
        const line = JSON.stringify(decisionLine(input, decision, now(), scrub)) + "\n";
        if (failed || closing || stream.writableLength + Buffer.byteLength(line) > maxBufferBytes) {
          dropped++;
          unreported++;
          return;
        }
        stream.write(line);
      } catch (error) {
        dropped++;
        onError?.(error);
      }
    },
    dropped: () => dropped,
    close() {
      if (!ownsStream || failed || stream.destroyed) return Promise.resolve();
      closing ??= new Promise<void>((resolve) => stream.end(() => resolve()));
      return closing;
    },
  };
}

/**
 * Opens the decision log at `target` ("-" = stdout), appending. Writes go
 * through the file system's thread pool, stdout included, so even a slow
 * pipe never blocks the event loop.
 */
export async function openDecisionLog(target: string, options: Omit<DecisionLogOptions, "stream" | "ownsStream">): Promise<DecisionLog> {
  if (target === "-") return createDecisionLog({ ...options, stream: createWriteStream("", { fd: 1, autoClose: false }) });
  const stream = createWriteStream(target, { flags: "a", mode: 0o600 });
  // A path that cannot be opened stops the server at start, not silently at the first decision.
  await once(stream, "open");
  return createDecisionLog({ ...options, stream });
}
