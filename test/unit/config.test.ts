import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_LISTENER_LIMITS,
  SHIPPED_POLICY_DIR,
  readCliKeys,
  readPolicyDir,
  readRuntimeConfig,
  readServeConfig,
  readShimConfig,
  readStorageConfig,
  servedOwnership,
  type CliKeys,
  type ConfigResult,
  type Env,
  type Flags,
  type ServeConfig,
  type ShimConfig,
} from "../../src/config/config.js";
import { FORWARD_AUTH_PATHS, OPERATIONS_PATHS } from "../../src/config/public-paths.js";
import { DEV_ALLOW_PUBLIC_PHRASE, KEY_COMMANDS, SETTINGS, SETTING_NAMES, type Command, type SettingName, type SettingSpec } from "../../src/config/settings.js";

/**
 * Every setting as a decision table: a valid value (from the flag and from the
 * variable) lands in the typed config, a bad one is refused naming the flag or
 * variable, the flag beats the variable, an empty variable is unset, and the
 * default holds when nothing is given. Then the rules between settings.
 * (The messages are the contract: test/e2e checks some through the real CLI.)
 */

/** A directory without policies/, so the policy dir falls back to the shipped one. */
const CWD = mkdtempSync(join(tmpdir(), "keygate-config-"));
const UPSTREAM = "http://127.0.0.1:8080";

const spec = (name: SettingName): SettingSpec => SETTINGS[name];

/** Where each setting lands in the config (a Record: a new setting without a row fails to type-check). */
const VIEW: Record<SettingName, (config: ServeConfig & ShimConfig & CliKeys) => unknown> = {
  port: (c) => c.port,
  host: (c) => c.host,
  upstream: (c) => c.proxy?.upstream,
  proxyPort: (c) => c.proxy?.port,
  proxyHost: (c) => c.proxy?.host,
  proxyTimeout: (c) => c.proxy?.timeoutMs,
  orgMaxSandboxes: (c) => c.proxy?.orgMaxSandboxes,
  shimPath: (c) => c.shimPath,
  credentialPriority: (c) => c.credentialPriority,
  dataDir: (c) => c.dataDir,
  databaseUrl: (c) => c.databaseUrl,
  dbPoolSize: (c) => c.dbPoolSize,
  pgUser: (c) => c.defaultDbUser,
  policyDir: (c) => c.policyDir,
  dev: (c) => c.dev,
  devAllowPublic: (c) => c.devAllowPublic,
  ownership: (c) => c.ownership,
  keyPrefix: (c) => c.keyPrefix,
  keyCacheTtl: (c) => c.keyCacheTtlMs,
  negativeCacheTtl: (c) => c.negativeCacheTtlMs,
  keyCacheSize: (c) => c.keyCacheMaxEntries,
  usageFlushInterval: (c) => c.usageFlushMs,
  auditRetention: (c) => c.auditRetentionMs,
  defaultRateLimit: (c) => c.defaultRateLimit,
  redisUrl: (c) => c.redisUrl,
  authFailLimit: (c) => c.authFailLimit,
  authGuardExempt: (c) => c.authGuardExempt.rules,
  clientIpHeader: (c) => c.clientIp.header,
  trustedProxies: (c) => c.clientIp.trusted.rules,
  shutdownTimeout: (c) => c.shutdownTimeoutMs,
  policyReloadDebounce: (c) => c.policyReloadDebounceMs,
  logLevel: (c) => c.logLevel,
  decisionLog: (c) => c.decisionLog.target,
  decisionLogMode: (c) => c.decisionLog.mode,
  decisionLogSample: (c) => c.decisionLog.sample,
  metrics: (c) => c.metrics,
  maxHeaderBytes: (c) => c.maxHeaderBytes,
  headersTimeout: (c) => c.headersTimeoutMs,
  requestTimeout: (c) => c.requestTimeoutMs,
  http2IdleTimeout: (c) => c.http2IdleTimeoutMs,
  http2MaxStreams: (c) => c.http2MaxStreams,
  maxConnections: (c) => c.maxConnections,
  directAuthorize: (c) => c.directAuthorize,
  cubeWebhookSecret: (c) => c.cubeWebhookSecret,
  apiKey: (c) => c.apiKey,
  checkKey: (c) => c.checkKey,
};

/** The keys the CLI holds itself: no server reads them (readCliKeys). */
const CLI_KEYS: SettingName[] = ["apiKey", "checkKey"];

/** The proxy's settings, read by serve only in proxy mode (given an upstream). */
const PROXY_SETTINGS: SettingName[] = ["proxyPort", "proxyHost", "proxyTimeout", "orgMaxSandboxes"];
const CUBE = "http://cube.internal:3000";

/** Serve's config for the settings serve reads, else the shim's (given an upstream unless that is the setting). */
function readFor(name: SettingName, flags: Flags, env: Env): ConfigResult<ServeConfig | ShimConfig | CliKeys> {
  if (CLI_KEYS.includes(name)) return readCliKeys(flags, env);
  if (PROXY_SETTINGS.includes(name)) return readServeConfig(flags, { KEYGATE_UPSTREAM: CUBE, ...env }, CWD);
  if (spec(name).commands.includes("serve")) return readServeConfig(flags, env, CWD);
  return readShimConfig(flags, name === "upstream" ? env : { KEYGATE_UPSTREAM: UPSTREAM, ...env });
}

function valueOf(name: SettingName, flags: Flags, env: Env): unknown {
  const result = readFor(name, flags, env);
  if (!result.ok) throw new Error(`expected ${name} to be accepted, got:\n  ${result.errors.join("\n  ")}`);
  return VIEW[name](result.config as ServeConfig & ShimConfig & CliKeys);
}

function errorsOf(name: SettingName, flags: Flags, env: Env): string[] {
  const result = readFor(name, flags, env);
  return result.ok ? [] : result.errors;
}

/** The settings whose messages have always named both the flag and the variable, whichever was given. */
const NAMED_TOGETHER: SettingName[] = ["host", "upstream", "shimPath", "credentialPriority", "keyPrefix", "clientIpHeader"];

function blamed(name: SettingName, given: "flag" | "env"): string {
  const { flag, env } = spec(name);
  if (NAMED_TOGETHER.includes(name)) return `--${flag}/${env}`;
  return given === "flag" ? `--${flag}` : env!;
}

const LOOPBACK = ["Subnet: IPv6 ::1/128", "Subnet: IPv4 127.0.0.0/8"];
const DURATION_HELP = "use a whole number and a unit, one of s m h d w mo y (e.g. 30s, 15m, 24h, 7d, 2w, 3mo, 1y)";
const RATE_HELP = "use N/WINDOW, a whole number of requests and a duration (e.g. 100/1s, 600/1m, 5000/1h)";
const PRIORITY_HELP = 'must name both headers in order: "authorization,x-api-key" (Cube, the default) or "x-api-key,authorization" (SandBase)';

/** With nothing given (and with the variable set to ""). */
const DEFAULTS: [SettingName, unknown][] = [
  ["port", 8080],
  ["host", "127.0.0.1"],
  ["shimPath", "/verify"],
  ["credentialPriority", ["authorization", "x-api-key"]],
  ["dataDir", resolve(CWD, ".keygate")],
  ["databaseUrl", undefined],
  ["dbPoolSize", 10],
  ["pgUser", "postgres"],
  ["policyDir", SHIPPED_POLICY_DIR],
  ["dev", false],
  ["devAllowPublic", false],
  ["ownership", "auto"],
  ["keyPrefix", "sk-sb-"],
  ["keyCacheTtl", 5_000],
  ["negativeCacheTtl", 2_000],
  ["keyCacheSize", 100_000],
  ["usageFlushInterval", 10_000],
  ["auditRetention", 90 * 24 * 3_600_000],
  ["defaultRateLimit", null],
  ["redisUrl", undefined],
  ["authFailLimit", { points: 20, windowSeconds: 60 }],
  ["authGuardExempt", LOOPBACK],
  ["clientIpHeader", undefined],
  ["trustedProxies", LOOPBACK],
  ["shutdownTimeout", 10_000],
  ["policyReloadDebounce", 200],
  ["logLevel", "info"],
  ["decisionLog", undefined],
  ["decisionLogMode", "all"],
  ["decisionLogSample", 0.1],
  ["metrics", true],
  ["maxHeaderBytes", 16_384],
  ["headersTimeout", 15_000],
  ["requestTimeout", 30_000],
  ["http2IdleTimeout", 65_000],
  ["http2MaxStreams", 100],
  ["maxConnections", undefined],
  ["directAuthorize", true],
  ["proxyPort", 8090],
  ["proxyHost", "127.0.0.1"],
  ["proxyTimeout", 60_000],
  ["orgMaxSandboxes", null],
  ["cubeWebhookSecret", undefined],
  ["apiKey", undefined],
  ["checkKey", undefined],
];

/** Raw text → the typed value. A switch's flag is tested as given (`--dev`), not with this text. */
const VALID: [SettingName, string, unknown][] = [
  ["port", "0", 0],
  ["port", "65535", 65_535],
  ["host", "0.0.0.0", "0.0.0.0"],
  ["host", "::1", "::1"],
  ["upstream", "https://keygate.internal:8443", "https://keygate.internal:8443"],
  ["shimPath", "/auth/cube", "/auth/cube"],
  ["credentialPriority", "x-api-key,authorization", ["x-api-key", "authorization"]],
  ["credentialPriority", " X-API-Key , Bearer ", ["x-api-key", "authorization"]],
  ["dataDir", "/var/lib/keygate", "/var/lib/keygate"],
  ["dataDir", "data", resolve(CWD, "data")],
  ["databaseUrl", "postgres://keygate:secret@db:5432/keygate", "postgres://keygate:secret@db:5432/keygate"],
  ["databaseUrl", "postgresql://db/keygate", "postgresql://db/keygate"],
  ["dbPoolSize", "200", 200],
  ["pgUser", "app", "app"],
  ["policyDir", "/etc/keygate/policies", "/etc/keygate/policies"],
  ["policyDir", "rules", resolve(CWD, "rules")],
  ["dev", "true", true],
  ["dev", "YES", true],
  ["dev", "off", false],
  ["devAllowPublic", DEV_ALLOW_PUBLIC_PHRASE, true],
  ["ownership", "ON", "on"],
  ["ownership", "off", "off"],
  ["keyPrefix", "sk_live-", "sk_live-"],
  ["keyCacheTtl", "1m", 60_000],
  ["keyCacheTtl", "0s", 0],
  ["negativeCacheTtl", "30s", 30_000],
  ["keyCacheSize", "1", 1],
  ["usageFlushInterval", "1m", 60_000],
  ["usageFlushInterval", "0s", 100], // the floor
  ["auditRetention", "30d", 30 * 24 * 3_600_000],
  ["auditRetention", "off", null],
  ["auditRetention", "0", null],
  ["auditRetention", "0s", null],
  ["defaultRateLimit", "100/1s", { points: 100, windowSeconds: 1 }],
  ["redisUrl", "rediss://:secret@redis:6380", "rediss://:secret@redis:6380"],
  ["authFailLimit", "5/1m", { points: 5, windowSeconds: 60 }],
  ["authFailLimit", "off", null],
  ["authGuardExempt", "10.0.0.0/8, 192.168.1.7", ["Address: IPv4 192.168.1.7", "Subnet: IPv4 10.0.0.0/8"]],
  ["authGuardExempt", "none", []],
  ["clientIpHeader", "X-Forwarded-For", "x-forwarded-for"],
  ["trustedProxies", "172.31.240.10", ["Address: IPv4 172.31.240.10"]],
  ["shutdownTimeout", "1h", 3_600_000],
  ["policyReloadDebounce", "0ms", 0],
  ["policyReloadDebounce", " 1s ", 1_000],
  ["logLevel", "WARN", "warn"],
  ["decisionLog", "-", "-"],
  ["decisionLogMode", "Sampled", "sampled"],
  ["decisionLogSample", ".05", 0.05],
  ["decisionLogSample", "1", 1],
  ["metrics", "false", false],
  ["maxHeaderBytes", "1024", 1_024],
  ["headersTimeout", "100ms", 100],
  ["requestTimeout", "1h", 3_600_000],
  ["http2IdleTimeout", "200ms", 200],
  ["http2IdleTimeout", "5m", 300_000],
  ["http2MaxStreams", "1", 1],
  ["maxConnections", "4096", 4_096],
  ["directAuthorize", "0", false],
  ["proxyPort", "0", 0],
  ["proxyHost", "0.0.0.0", "0.0.0.0"],
  ["proxyTimeout", "500ms", 500],
  ["orgMaxSandboxes", "25", 25],
  ["cubeWebhookSecret", "a shared secret, as Cube has it", "a shared secret, as Cube has it"],
  ["apiKey", "sk-sb-anAdminKeyAsGiven", "sk-sb-anAdminKeyAsGiven"],
  ["checkKey", "not even shaped like a key", "not even shaped like a key"],
];

/** Raw text → the message after "<flag or variable>: ". */
const INVALID: [SettingName, string, string][] = [
  ["port", "abc", '"abc" is not a whole number from 0 to 65535'],
  ["port", "70000", '"70000" is not a whole number from 0 to 65535'],
  ["port", "1e3", '"1e3" is not a whole number from 0 to 65535'],
  ["host", "bad host", '"bad host" is not a host name or IP address'],
  ["upstream", "ftp://keygate", '"ftp://keygate" is not an http:// or https:// URL'],
  ["shimPath", "verify", '"verify" must be a plain absolute path such as /verify'],
  ["shimPath", "/a//b", '"/a//b" must be a plain absolute path such as /verify'],
  ["shimPath", "/keygate.v1.AuthorizeService/Authorize", '"/keygate.v1.AuthorizeService/Authorize" must be a plain absolute path such as /verify'],
  ["credentialPriority", "x-api-key", `"x-api-key" ${PRIORITY_HELP}`],
  ["credentialPriority", "authorization,authorization", `"authorization,authorization" ${PRIORITY_HELP}`],
  ["databaseUrl", "mysql://db/keygate", "not a postgres:// or postgresql:// URL"],
  ["dbPoolSize", "0", '"0" is not a whole number from 1 to 200'],
  ["dev", "maybe", '"maybe" is not a boolean (use true or false)'],
  ["devAllowPublic", "yes", `must be exactly "${DEV_ALLOW_PUBLIC_PHRASE}" (dev mode allows every request from anyone who can reach it)`],
  ["ownership", "enforce", '"enforce" must be one of auto, on, off'],
  ["keyPrefix", "sk live", '"sk live" must be 1-16 letters, digits, _ or -'],
  ["keyCacheTtl", "5pc", `invalid duration "5pc": ${DURATION_HELP}`],
  ["negativeCacheTtl", "2", `invalid duration "2": ${DURATION_HELP}`],
  ["keyCacheSize", "0", '"0" is not a whole number from 1 to 100000000'],
  ["usageFlushInterval", "soon", `invalid duration "soon": ${DURATION_HELP}`],
  ["auditRetention", "forever", `invalid duration "forever": ${DURATION_HELP}`],
  ["defaultRateLimit", "fast", `invalid rate limit "fast": ${RATE_HELP}`],
  ["defaultRateLimit", "0/1s", 'invalid rate limit "0/1s": the number of requests must be a whole number from 1 to 1000000000'],
  ["redisUrl", "http://redis:6379", "not a redis:// or rediss:// URL with a host"],
  ["redisUrl", "redis://", "not a redis:// or rediss:// URL with a host"],
  ["authFailLimit", "lots", `invalid rate limit "lots": ${RATE_HELP} (or "off")`],
  ["authGuardExempt", "everyone", '"everyone" is not an IP address or CIDR (or "none")'],
  ["clientIpHeader", "X Forwarded", '"x forwarded" is not a header name'],
  ["trustedProxies", "10.0.0.0/99", '"10.0.0.0/99" has an invalid prefix length'],
  ["shutdownTimeout", "10", `invalid duration "10": ${DURATION_HELP}`],
  ["policyReloadDebounce", "2h", '"2h" is not a duration from 0ms to 1h (e.g. 200ms, 1s)'],
  ["logLevel", "Loud", '"Loud" must be one of debug, info, warn, error'],
  ["decisionLogMode", "Some", '"some" must be one of none, denies, all, sampled'],
  ["decisionLogSample", "1.5", '"1.5" is not a fraction from 0 to 1 (e.g. 0.05)'],
  ["decisionLogSample", "-0.1", '"-0.1" is not a fraction from 0 to 1 (e.g. 0.05)'],
  ["metrics", "sometimes", '"sometimes" is not a boolean (use true or false)'],
  ["maxHeaderBytes", "100", '"100" is not a whole number from 1024 to 1048576'],
  ["headersTimeout", "10ms", '"10ms" is not a duration from 100ms to 1h (e.g. 500ms, 30s)'],
  ["requestTimeout", "soon", '"soon" is not a duration from 100ms to 1h (e.g. 500ms, 30s)'],
  ["http2IdleTimeout", "0s", '"0s" is not a duration from 100ms to 1h (e.g. 500ms, 65s)'],
  ["http2MaxStreams", "0", '"0" is not a whole number from 1 to 10000'],
  ["maxConnections", "unlimited", '"unlimited" is not a whole number from 1 to 1000000'],
  ["directAuthorize", "2", '"2" is not a boolean (use true or false)'],
  ["proxyPort", "80a", '"80a" is not a whole number from 0 to 65535'],
  ["proxyHost", "a host", '"a host" is not a host name or IP address'],
  ["proxyTimeout", "forever", '"forever" is not a duration from 100ms to 1h (e.g. 500ms, 60s)'],
  ["orgMaxSandboxes", "-1", '"-1" is not a whole number from 0 to 1000000000'],
  ["cubeWebhookSecret", "too-short", "must be at least 16 characters (the secret Cube signs its webhooks with, WEBHOOK_SECRET)"],
];

/** Settings that take any text: only an empty flag is refused. */
const ANY_TEXT: SettingName[] = ["dataDir", "pgUser", "policyDir", "decisionLog", "apiKey", "checkKey"];

const withFlag = <T extends [SettingName, ...unknown[]]>(rows: T[]) => rows.filter(([name]) => spec(name).flag !== undefined);
const isSwitch = (name: SettingName) => spec(name).flag !== undefined && spec(name).arg === undefined;

describe("the decision table covers every setting", () => {
  it.each(SETTING_NAMES)("%s", (name) => {
    expect(VALID.some(([row]) => row === name), "a valid value").toBe(true);
    if (spec(name).required === undefined) expect(DEFAULTS.some(([row]) => row === name), "its default").toBe(true);
    expect(INVALID.some(([row]) => row === name) || ANY_TEXT.includes(name), "a bad value, or listed as taking any text").toBe(true);
  });
});

describe("a valid value lands in the config", () => {
  it.each(VALID)("%s = %j, from the variable", (name, text, expected) => {
    expect(valueOf(name, {}, { [spec(name).env!]: text })).toEqual(expected);
  });

  it.each(withFlag(VALID).filter(([name]) => !isSwitch(name)))("%s = %j, from the flag", (name, text, expected) => {
    expect(valueOf(name, { [spec(name).flag!]: text }, {})).toEqual(expected);
  });

  it("a switch's flag is on by being given (--dev)", () => {
    expect(valueOf("dev", { dev: true }, {})).toBe(true);
    expect(valueOf("dev", { dev: true }, { KEYGATE_DEV: "false" })).toBe(true);
  });
});

describe("a bad value is refused, naming the flag or variable", () => {
  it.each(INVALID)("%s = %j, from the variable", (name, text, message) => {
    expect(errorsOf(name, {}, { [spec(name).env!]: text })).toEqual([`${blamed(name, "env")}: ${message}`]);
  });

  it.each(withFlag(INVALID).filter(([name]) => !isSwitch(name)))("%s = %j, from the flag", (name, text, message) => {
    expect(errorsOf(name, { [spec(name).flag!]: text }, {})).toEqual([`${blamed(name, "flag")}: ${message}`]);
  });

  it.each(SETTING_NAMES.filter((name) => spec(name).flag !== undefined && !isSwitch(name)))("--%s with an empty value: a value is required", (name) => {
    expect(errorsOf(name, { [spec(name).flag!]: "" }, {})).toEqual([`--${spec(name).flag}: a value is required`]);
  });
});

describe("flags win over variables, which win over defaults", () => {
  // The first valid and the first bad value of each setting with a flag: the variable is not even parsed.
  const firsts = withFlag(VALID)
    .filter(([name], i, rows) => rows.findIndex(([other]) => other === name) === i && !isSwitch(name))
    .map(([name, text, expected]) => [name, text, expected, INVALID.find(([other]) => other === name)?.[1] ?? "from the variable"] as const);

  it.each(firsts)("--%s %j beats the variable set to %j", (name, text, expected, fromEnv) => {
    expect(valueOf(name, { [spec(name).flag!]: text }, { [spec(name).env!]: fromEnv })).toEqual(expected);
  });

  it.each(DEFAULTS)("%s defaults to %j, and an empty variable is unset", (name, expected) => {
    expect(valueOf(name, {}, {})).toEqual(expected);
    expect(valueOf(name, {}, { [spec(name).env!]: "" })).toEqual(expected);
  });

  it("the standalone shim has its own default port; PORT moves both", () => {
    const shim = (env: Env) => readShimConfig({ upstream: UPSTREAM }, env);
    expect(shim({})).toMatchObject({ ok: true, config: { port: 8081 } });
    expect(shim({ PORT: "9000" })).toMatchObject({ ok: true, config: { port: 9000 } });
    expect(readServeConfig({}, { PORT: "9000" }, CWD)).toMatchObject({ ok: true, config: { port: 9000 } });
  });

  it("the Postgres user: PGUSER, else the login (USER), else postgres", () => {
    const user = (env: Env) => readStorageConfig({}, env, CWD);
    expect(user({ PGUSER: "app", USER: "me" })).toMatchObject({ ok: true, config: { defaultDbUser: "app" } });
    expect(user({ USER: "me" })).toMatchObject({ ok: true, config: { defaultDbUser: "me" } });
    expect(user({ PGUSER: "", USER: "" })).toMatchObject({ ok: true, config: { defaultDbUser: "postgres" } });
  });

  it("the policy dir: ./policies when the working directory has one, else the shipped policy", () => {
    const withPolicies = mkdtempSync(join(tmpdir(), "keygate-config-"));
    mkdirSync(join(withPolicies, "policies"));
    expect(readPolicyDir({}, {}, withPolicies)).toEqual({ ok: true, config: join(withPolicies, "policies") });
    expect(readPolicyDir({}, {}, CWD)).toEqual({ ok: true, config: SHIPPED_POLICY_DIR });
  });
});

describe("each setting is read by the commands the schema names", () => {
  // Each reader serves these commands (the key commands share readRuntimeConfig).
  const READERS: [string, readonly Command[], (flags: Flags, env: Env) => ConfigResult<unknown>][] = [
    ["readServeConfig", ["serve"], (flags, env) => readServeConfig(flags, env, CWD)],
    ["readShimConfig", ["shim"], (flags, env) => readShimConfig(flags, { KEYGATE_UPSTREAM: UPSTREAM, ...env })],
    ["readRuntimeConfig", KEY_COMMANDS, (flags, env) => readRuntimeConfig(flags, env, CWD)],
    ["readStorageConfig", ["migrate"], (flags, env) => readStorageConfig(flags, env, CWD)],
    ["readPolicyDir", ["policy"], (flags, env) => readPolicyDir(flags, env, CWD)],
  ];
  // A bad variable if the setting can have one, else an empty flag: refused exactly by the readers that read it.
  const probes = SETTING_NAMES.filter((name) => name !== "upstream" && name !== "pgUser" && !CLI_KEYS.includes(name)).map((name) => {
    const bad = INVALID.find(([other]) => other === name);
    const given: [Flags, Env] = bad ? [{}, { [spec(name).env!]: bad[1] }] : [{ [spec(name).flag!]: "" }, {}];
    return [name, given] as const;
  });

  it.each(probes)("%s", (name, [flags, env]) => {
    const { commands } = spec(name);
    for (const [reader, served, read] of READERS) {
      const reads = served.some((command) => commands.includes(command));
      expect(read(flags, env).ok, `${reader} ${reads ? "reads" : "does not read"} ${name}`).toBe(!reads);
    }
  });

  // The runtime the key commands open is one (readRuntimeConfig); check's own key is check's alone.
  it.each(SETTING_NAMES.filter((name) => !CLI_KEYS.includes(name)))("%s: the key commands read it all or none", (name) => {
    const count = KEY_COMMANDS.filter((command) => spec(name).commands.includes(command)).length;
    expect([0, KEY_COMMANDS.length]).toContain(count);
  });

  it("the CLI's own keys are read by readCliKeys alone, which reads nothing else", () => {
    const keys: Env = { KEYGATE_API_KEY: "sk-sb-admin", KEYGATE_CHECK_KEY: "sk-sb-checked" };
    expect(readCliKeys({}, keys)).toEqual({ ok: true, config: { apiKey: "sk-sb-admin", checkKey: "sk-sb-checked" } });
    expect(readCliKeys({ "api-key": "", key: "" }, {})).toEqual({ ok: false, errors: ["--api-key: a value is required", "--key: a value is required"] });
    expect(readCliKeys({}, { PORT: "abc", KEYGATE_DEV: "maybe" }).ok).toBe(true);
    expect(readRuntimeConfig({ "api-key": "", key: "" }, {}, CWD).ok).toBe(true);
    expect(readServeConfig({ "api-key": "", key: "" }, {}, CWD).ok).toBe(true);
  });

  it("the shim needs an upstream; serve takes one to turn proxy mode on; the others never read one", () => {
    expect(readShimConfig({}, {})).toEqual({ ok: false, errors: ["--upstream/KEYGATE_UPSTREAM: required (the keygate server to ask, e.g. http://127.0.0.1:8080)"] });
    expect(readServeConfig({}, {}, CWD)).toMatchObject({ ok: true, config: { proxy: undefined } });
    expect(readServeConfig({}, { KEYGATE_UPSTREAM: "ftp://x" }, CWD).ok).toBe(false);
    expect(readRuntimeConfig({}, { KEYGATE_UPSTREAM: "ftp://x" }, CWD).ok).toBe(true);
  });

  it.each<[string, Env, "on" | "off"]>([
    ["auto, in proxy mode", { KEYGATE_UPSTREAM: CUBE }, "on"],
    ["auto, no proxy", {}, "off"],
    ["on, no proxy", { KEYGATE_OWNERSHIP: "on" }, "on"],
    ["off, in proxy mode", { KEYGATE_UPSTREAM: CUBE, KEYGATE_OWNERSHIP: "off" }, "off"],
  ])("KEYGATE_OWNERSHIP as serve applies it: %s → %s", (_, env, expected) => {
    const result = readServeConfig({}, env, CWD);
    if (!result.ok) throw new Error(result.errors.join("\n"));
    expect(servedOwnership(result.config)).toBe(expected);
  });

  it("proxy mode: port 8090 and serve's host unless given; a proxy port or host without an upstream is refused", () => {
    expect(readServeConfig({ upstream: CUBE, host: "0.0.0.0" }, {}, CWD)).toMatchObject({
      ok: true,
      config: { proxy: { upstream: CUBE, host: "0.0.0.0", port: 8090, timeoutMs: 60_000, orgMaxSandboxes: null } },
    });
    expect(readServeConfig({ "proxy-port": "9000" }, { KEYGATE_PROXY_HOST: "::1" }, CWD)).toEqual({
      ok: false,
      errors: ["--proxy-port/KEYGATE_PROXY_PORT: only with --upstream/KEYGATE_UPSTREAM (proxy mode)", "--proxy-host/KEYGATE_PROXY_HOST: only with --upstream/KEYGATE_UPSTREAM (proxy mode)"],
    });
  });
});

describe("the rules between settings", () => {
  const serveErrors = (env: Env, flags: Flags = {}) => {
    const result = readServeConfig(flags, env, CWD);
    return result.ok ? [] : result.errors;
  };

  it.each<[string, Env, Partial<ServeConfig> | string]>([
    ["the defaults", {}, { requestTimeoutMs: 30_000, headersTimeoutMs: 15_000 }],
    ["headers as long as the request", { KEYGATE_REQUEST_TIMEOUT: "5s", KEYGATE_HEADERS_TIMEOUT: "5s" }, { requestTimeoutMs: 5_000, headersTimeoutMs: 5_000 }],
    ["a short request cuts the default headers timeout", { KEYGATE_REQUEST_TIMEOUT: "5s" }, { requestTimeoutMs: 5_000, headersTimeoutMs: 5_000 }],
    ["headers longer than the request", { KEYGATE_REQUEST_TIMEOUT: "5s", KEYGATE_HEADERS_TIMEOUT: "10s" }, "KEYGATE_HEADERS_TIMEOUT: 10000 ms is longer than KEYGATE_REQUEST_TIMEOUT (5000 ms), which includes the headers"],
    ["a bad headers timeout is reported once, not compared", { KEYGATE_REQUEST_TIMEOUT: "5s", KEYGATE_HEADERS_TIMEOUT: "soon" }, '"soon" is not a duration'],
  ])("headers timeout within the request timeout: %s", (_, env, expected) => {
    const result = readServeConfig({}, env, CWD);
    if (typeof expected === "string") {
      expect(!result.ok && result.errors).toHaveLength(1);
      expect(!result.ok && result.errors[0]).toContain(expected);
    } else {
      expect(result).toMatchObject({ ok: true, config: expected });
    }
  });

  // Issue 14, item 4: KEYGATE_DEV=yes with the Dockerfile's KEYGATE_HOST=0.0.0.0 served an allow-all port to the world.
  const devRefused = (host: string, setting = "--host/KEYGATE_HOST") =>
    `--dev/KEYGATE_DEV: refused on ${host} (${setting}), which is not a loopback address: dev mode allows every request from anyone who can reach it. ` +
    `Listen on 127.0.0.1, or, if you mean it, add --dev-allow-public=${DEV_ALLOW_PUBLIC_PHRASE} (KEYGATE_DEV_ALLOW_PUBLIC)`;
  it.each<[string, Flags, Env, string[]]>([
    ["dev on the default host", { dev: true }, {}, []],
    ["dev on 127.1.2.3", {}, { KEYGATE_DEV: "yes", KEYGATE_HOST: "127.1.2.3" }, []],
    ["dev on ::1", {}, { KEYGATE_DEV: "yes", KEYGATE_HOST: "::1" }, []],
    ["dev on [::1]", {}, { KEYGATE_DEV: "yes", KEYGATE_HOST: "[::1]" }, []],
    ["dev on localhost", {}, { KEYGATE_DEV: "yes", KEYGATE_HOST: "LocalHost" }, []],
    ["dev on ::ffff:127.0.0.1", {}, { KEYGATE_DEV: "yes", KEYGATE_HOST: "::ffff:127.0.0.1" }, []],
    ["KEYGATE_DEV=yes with KEYGATE_HOST=0.0.0.0", {}, { KEYGATE_DEV: "yes", KEYGATE_HOST: "0.0.0.0" }, [devRefused("0.0.0.0")]],
    ["--dev --host ::", { dev: true, host: "::" }, {}, [devRefused("::")]],
    ["dev on a LAN address", { dev: true }, { KEYGATE_HOST: "10.0.0.5" }, [devRefused("10.0.0.5")]],
    ["dev on a host name", { dev: true }, { KEYGATE_HOST: "keygate.internal" }, [devRefused("keygate.internal")]],
    ["dev with a public proxy host", { dev: true }, { KEYGATE_UPSTREAM: CUBE, KEYGATE_PROXY_HOST: "0.0.0.0" }, [devRefused("0.0.0.0", "--proxy-host/KEYGATE_PROXY_HOST")]],
    ["dev on 0.0.0.0 with the phrase", { dev: true, host: "0.0.0.0", "dev-allow-public": DEV_ALLOW_PUBLIC_PHRASE }, {}, []],
    ["dev on 0.0.0.0 with the phrase in the variable", {}, { KEYGATE_DEV: "1", KEYGATE_HOST: "0.0.0.0", KEYGATE_DEV_ALLOW_PUBLIC: DEV_ALLOW_PUBLIC_PHRASE }, []],
    [
      "dev on 0.0.0.0 with anything but the phrase",
      {},
      { KEYGATE_DEV: "1", KEYGATE_HOST: "0.0.0.0", KEYGATE_DEV_ALLOW_PUBLIC: "true" },
      [`KEYGATE_DEV_ALLOW_PUBLIC: must be exactly "${DEV_ALLOW_PUBLIC_PHRASE}" (dev mode allows every request from anyone who can reach it)`, devRefused("0.0.0.0")],
    ],
    ["no dev on 0.0.0.0", {}, { KEYGATE_HOST: "0.0.0.0" }, []],
  ])("dev mode listens on loopback unless the awkward phrase is given: %s", (_, flags, env, expected) => {
    expect(serveErrors(env, flags)).toEqual(expected);
  });

  it("DEFAULT_LISTENER_LIMITS are the listener settings' defaults", () => {
    expect(DEFAULT_LISTENER_LIMITS).toEqual({ maxHeaderBytes: 16_384, requestTimeoutMs: 30_000, headersTimeoutMs: 15_000, http2IdleTimeoutMs: 65_000, http2MaxStreams: 100, maxConnections: undefined });
  });

  it.each([
    ...FORWARD_AUTH_PATHS.map((path) => [path, `"${path}" is taken by a gateway endpoint (${FORWARD_AUTH_PATHS.join(", ")})`]),
    ...OPERATIONS_PATHS.map((path) => [path, `"${path}" is taken by a health or metrics endpoint (${OPERATIONS_PATHS.join(", ")})`]),
  ])("--shim-path may not take the fixed path %s", (path, message) => {
    expect(serveErrors({}, { "shim-path": path })).toEqual([`--shim-path/KEYGATE_SHIM_PATH: ${message}`]);
    expect(serveErrors({ KEYGATE_SHIM_PATH: path })).toEqual([`--shim-path/KEYGATE_SHIM_PATH: ${message}`]);
    expect(readShimConfig({ upstream: UPSTREAM, "shim-path": path }, {})).toEqual({ ok: false, errors: [`--shim-path/KEYGATE_SHIM_PATH: ${message}`] });
  });

  it.each<[string, Flags, Env]>([
    ["DATABASE_URL", {}, { DATABASE_URL: "mysql://keygate:hunter2@db/keygate" }],
    ["DATABASE_URL, malformed", {}, { DATABASE_URL: "postgres//keygate:hunter2@db" }],
    ["--database-url", { "database-url": "mysql://keygate:hunter2@db/keygate" }, {}],
    ["REDIS_URL", {}, { REDIS_URL: "http://:hunter2@redis:6379" }],
    ["REDIS_URL without a host", {}, { REDIS_URL: "redis://:hunter2@" }],
    ["--redis-url", { "redis-url": "redis:/hunter2" }, {}],
  ])("a bad %s is refused without echoing it (it may hold a password)", (_, flags, env) => {
    const errors = serveErrors(env, flags);
    expect(errors).toHaveLength(1);
    expect(errors[0]).not.toContain("hunter2");
  });

  it("the credential priority must name both headers, and says which orders are meant", () => {
    for (const text of ["authorization", "x-api-key,x-api-key", "authorization,x-api-key,cookie"]) {
      expect(serveErrors({ KEYGATE_CREDENTIAL_PRIORITY: text })).toEqual([`--credential-priority/KEYGATE_CREDENTIAL_PRIORITY: "${text}" ${PRIORITY_HELP}`]);
    }
  });

  it("tracing comes from the OTEL_* variables, and a bad one is refused by serve only", () => {
    expect(readServeConfig({}, { OTEL_TRACES_EXPORTER: "otlp" }, CWD)).toMatchObject({ ok: true, config: { tracing: { enabled: true } } });
    expect(serveErrors({ OTEL_TRACES_EXPORTER: "jaeger" })).toEqual(['OTEL_TRACES_EXPORTER: "jaeger": keygate exports traces over OTLP only (otlp, or none)']);
    expect(readRuntimeConfig({}, { OTEL_TRACES_EXPORTER: "jaeger" }, CWD).ok).toBe(true);
  });

  it("every bad value is reported at once, each named", () => {
    const errors = serveErrors({ PORT: "abc", KEYGATE_DEV: "maybe", REDIS_URL: "nope", OTEL_TRACES_SAMPLER: "sometimes", OTEL_TRACES_EXPORTER: "otlp" }, { "log-level": "loud" });
    expect(errors).toEqual(
      expect.arrayContaining([
        'PORT: "abc" is not a whole number from 0 to 65535',
        'KEYGATE_DEV: "maybe" is not a boolean (use true or false)',
        "REDIS_URL: not a redis:// or rediss:// URL with a host",
        '--log-level: "loud" must be one of debug, info, warn, error',
        expect.stringMatching(/^OTEL_TRACES_SAMPLER: "sometimes"/),
      ]),
    );
    expect(errors).toHaveLength(5);
  });
});
