import { describe, expect, it } from "vitest";
import { readServeConfig, readShimConfig } from "../../src/config/config.js";
import { createDecisionLog, decisionLine } from "../../src/telemetry/decision-log.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { createLogger, createScrubber, errorFields, REDACTED, type LogLevel } from "../../src/telemetry/logger.js";
import { incomingRequestId, MAX_REQUEST_ID_LENGTH } from "../../src/http/request-id.js";
import type { AuthorizeInput, Decision } from "../../src/core/authorize/decision.js";
import { Writable } from "node:stream";

function capture(level: LogLevel = "debug", keyPrefix?: string) {
  const lines: string[] = [];
  const log = createLogger(level, (line) => void lines.push(line), keyPrefix === undefined ? {} : { keyPrefix });
  return { log, lines, parsed: () => lines.map((line) => JSON.parse(line) as Record<string, unknown>) };
}

const key = generateKey();
const display = key.slice(0, "sk-sb-".length + 4);

describe("log lines", () => {
  it("are one JSON object per line: level as a word, ISO time, msg first, then the fields", () => {
    const { log, lines, parsed } = capture("info");
    log.info("keygate listening", { address: "127.0.0.1:8080", n: 3, nested: { ok: true } });
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^\{"level":"info","time":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","msg":"keygate listening","address":"127\.0\.0\.1:8080",/);
    expect(lines[0]!.endsWith("}\n")).toBe(true);
    expect(parsed()[0]).toEqual({ level: "info", time: expect.any(String), msg: "keygate listening", address: "127.0.0.1:8080", n: 3, nested: { ok: true } });
  });

  it.each<[LogLevel, string[]]>([
    ["debug", ["debug", "info", "warn", "error"]],
    ["info", ["info", "warn", "error"]],
    ["warn", ["warn", "error"]],
    ["error", ["error"]],
  ])("at %s, writes %j", (level, written) => {
    const { log, parsed } = capture(level);
    log.debug("d");
    log.info("i");
    log.warn("w");
    log.error("e");
    expect(parsed().map((l) => l.level)).toEqual(written);
    expect(log.level).toBe(level);
  });
});

describe("credentials never reach a log line", () => {
  it("replaces fields named for credentials, at any depth, in any spelling", () => {
    const { log, lines, parsed } = capture();
    log.info("x", {
      authorization: `Bearer ${key}`,
      headers: { "x-api-key": key, Authorization: `Bearer ${key}`, cookie: "a=b" },
      credential: key,
      apiKey: key,
      api_key: key,
      plaintext: key,
      password: "hunter2",
      DATABASE_URL: "postgres://u:hunter2@db/keygate",
      deep: [{ a: { b: { key: "also-secret" } } }],
      key_id: "key_0123456789abcdefghij",
    });
    const line = parsed()[0]!;
    expect(line).toMatchObject({
      authorization: REDACTED,
      headers: { "x-api-key": REDACTED, Authorization: REDACTED, cookie: REDACTED },
      credential: REDACTED,
      apiKey: REDACTED,
      api_key: REDACTED,
      plaintext: REDACTED,
      password: REDACTED,
      DATABASE_URL: REDACTED,
      deep: [{ a: { b: { key: REDACTED } } }],
      key_id: "key_0123456789abcdefghij",
    });
    expect(lines.join("")).not.toMatch(/hunter2|also-secret/);
    expect(lines.join("")).not.toContain(key);
  });

  it("masks anything shaped like a key in any string: message, fields, error messages, causes and stacks", () => {
    const { log, lines, parsed } = capture();
    const error = new Error(`lookup failed for ${key}`, { cause: new Error(`bad header "Bearer ${key}"`) });
    log.error(`denied ${key}`, { path: `/sandboxes/${key}/logs`, list: [key, `${key}x`, key.slice(0, -3)], ...errorFields(error), err: error });
    const text = lines.join("");
    expect(text).not.toContain(key.slice(6, 42));
    const line = parsed()[0]!;
    expect(line.msg).toBe(`denied ${display}…`);
    expect(line.path).toBe(`/sandboxes/${display}…/logs`);
    expect(line.list).toEqual([`${display}…`, `${display}…`, `${display}…`]);
    expect(line.error).toBe(`lookup failed for ${display}…`);
    expect(line.cause).toBe(`bad header "Bearer ${display}…"`);
    expect(String(line.stack)).toContain(`lookup failed for ${display}…`);
    expect(line.err).toMatchObject({ name: "Error", message: `lookup failed for ${display}…` });
  });

  it("masks a key body whatever stands before it, and any long run of letters and digits", () => {
    const scrub = createScrubber();
    const body = key.slice(6);
    expect(scrub(`/x/sk%2Dsb%2D${body}`)).not.toContain(body.slice(0, 36));
    expect(scrub(`token=${body}`)).toBe(`token=${body.slice(0, 4)}…`);
    expect(scrub("x".repeat(40))).toBe("xxxx…");
    expect(scrub("key_0123456789abcdefghij policy e777f0cea63d 2b5c1b7e-1f0e-4c57-9a2c-1f7c2fdc2a11")).toBe(
      "key_0123456789abcdefghij policy e777f0cea63d 2b5c1b7e-1f0e-4c57-9a2c-1f7c2fdc2a11",
    );
    // The decision log keeps long words (they are data to replay) but still finds key bodies by checksum.
    const replay = createScrubber(undefined, { longRuns: false });
    expect(replay("x".repeat(40))).toBe("x".repeat(40));
    expect(replay(`/x/sk%2Dsb%2D${body}`)).toBe(`/x/sk%2Dsb%2D${body.slice(0, 4)}…`);
  });

  it("masks keys of the configured prefix", () => {
    const custom = generateKey("kg_live_");
    const { log, lines } = capture("info", "kg_live_");
    log.info("x", { where: `a ${custom} b`, short: "kg_live_ab" });
    expect(lines[0]).toContain(`"where":"a ${custom.slice(0, 12)}… b"`);
    expect(lines[0]).toContain('"short":"kg_live_ab"');
  });

  it("hides a URL's password", () => {
    const { log, lines } = capture();
    log.warn("cannot connect", { error: "connect ECONNREFUSED postgres://keygate:s3cret@10.0.0.1:5432/keygate", redis: "rediss://:s3cret@cache:6380" });
    expect(lines[0]).not.toContain("s3cret");
    expect(lines[0]).toContain("postgres://keygate:***@10.0.0.1:5432/keygate");
    expect(lines[0]).toContain("rediss://:***@cache:6380");
  });

  it("writes an error's stack at debug level only", () => {
    const fields = errorFields(new Error("boom"));
    const debug = capture("debug");
    debug.log.error("failed", fields);
    expect(debug.parsed()[0]!.stack).toMatch(/^Error: boom\n\s+at /);
    const info = capture("info");
    info.log.error("failed", fields);
    expect(info.parsed()[0]).toEqual({ level: "error", time: expect.any(String), msg: "failed", error: "boom" });
  });
});

describe("the decision log", () => {
  const input = (fields: Partial<AuthorizeInput>): AuthorizeInput => ({ credential: key, path: "/sandboxes", method: "GET", namespace: "", org: "", ...fields });
  const DENY: Decision = { allowed: false, reason: "forbidden", message: "no", matchedRule: "" };

  it("masks a key pasted into a path, namespace, org or method", () => {
    const line = JSON.stringify(decisionLine(input({ path: `/sandboxes/${key}`, namespace: key, org: `${key}\n`, method: key }), DENY, new Date()));
    expect(line).not.toContain(key.slice(6, 42));
    expect(line).toContain(`"path":"/sandboxes/${display}…"`);
    const malformed = JSON.stringify(decisionLine(input({ path: `/sandboxes/../${key}` }), DENY, new Date()));
    expect(malformed).not.toContain(key.slice(6, 42));
  });

  it("masks keys of the configured prefix", () => {
    const custom = generateKey("kg_live_");
    const written: string[] = [];
    const stream = new Writable({ write: (chunk, _, done) => void (written.push(String(chunk)), done()) });
    createDecisionLog({ mode: "all", sample: 1, stream, keyPrefix: "kg_live_" }).record(input({ credential: custom, path: `/t/${custom.slice(0, 20)}` }), DENY);
    expect(written.join("")).toContain(`"path":"/t/${custom.slice(0, 12)}…"`);
  });
});

describe("incoming request ids", () => {
  it.each<[string, string[], string | undefined]>([
    ["kept: a UUID", ["X-Request-Id", "2b5c1b7e-1f0e-4c57-9a2c-1f7c2fdc2a11"], "2b5c1b7e-1f0e-4c57-9a2c-1f7c2fdc2a11"],
    ["kept: nginx $request_id", ["x-request-id", "f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7"], "f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7"],
    ["kept: dots, colons, base64", ["x-request-id", "gw.1:abc+/=="], "gw.1:abc+/=="],
    ["kept: the longest allowed", ["x-request-id", "a".repeat(MAX_REQUEST_ID_LENGTH)], "a".repeat(MAX_REQUEST_ID_LENGTH)],
    ["refused: too long", ["x-request-id", "a".repeat(MAX_REQUEST_ID_LENGTH + 1)], undefined],
    ["refused: empty", ["x-request-id", ""], undefined],
    ["refused: a newline", ["x-request-id", "a\nb"], undefined],
    ["refused: a quote", ["x-request-id", 'a"b'], undefined],
    ["refused: a space", ["x-request-id", "a b"], undefined],
    ["refused: non-ASCII", ["x-request-id", "r\u00e9q"], undefined],
    ["refused: sent twice", ["x-request-id", "a", "X-Request-ID", "b"], undefined],
    ["none sent", ["x-request-idx", "a", "request-id", "b"], undefined],
  ])("%s", (_, raw, expected) => {
    expect(incomingRequestId(["Host", "h", ...raw])).toBe(expected);
  });
});

describe("the log level", () => {
  const serve = (flags: Record<string, string>, env: Record<string, string>) => readServeConfig(flags, env, process.cwd());
  const shim = (flags: Record<string, string>, env: Record<string, string>) => readShimConfig({ upstream: "http://127.0.0.1:8080", ...flags }, env);

  it.each<[string, Record<string, string>, Record<string, string>, LogLevel]>([
    ["info by default", {}, {}, "info"],
    ["from KEYGATE_LOG_LEVEL", {}, { KEYGATE_LOG_LEVEL: "debug" }, "debug"],
    ["in any case", {}, { KEYGATE_LOG_LEVEL: "WARN" }, "warn"],
    ["--log-level over the variable", { "log-level": "error" }, { KEYGATE_LOG_LEVEL: "debug" }, "error"],
  ])("%s", (_, flags, env, level) => {
    for (const read of [serve, shim]) {
      const result = read(flags, env);
      if (!result.ok) throw new Error(result.errors.join("; "));
      expect(result.config.logLevel).toBe(level);
    }
  });

  it.each<[Record<string, string>, Record<string, string>, string]>([
    [{}, { KEYGATE_LOG_LEVEL: "loud" }, 'KEYGATE_LOG_LEVEL: "loud" must be one of debug, info, warn, error'],
    [{ "log-level": "trace" }, {}, '--log-level: "trace" must be one of debug, info, warn, error'],
  ])("refuses %j %j, naming the setting", (flags, env, message) => {
    for (const read of [serve, shim]) expect(read(flags, env)).toEqual({ ok: false, errors: [message] });
  });
});
