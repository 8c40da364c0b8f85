import { existsSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { BlockList, isIP } from "node:net";
import { fileURLToPath } from "node:url";
import type { z } from "zod";
import type { RateLimit } from "../core/ratelimit/rate-limit.js";
import type { DecisionLogMode } from "../telemetry/decision-log.js";
import type { LogLevel } from "../telemetry/logger.js";
import { readTracingConfig, type TracingConfig } from "../telemetry/tracing-config.js";
import { DEV_ALLOW_PUBLIC_PHRASE, OWNERSHIP_MODES, SETTINGS, type Command, type CredentialSource, type SettingName, type SettingSpec } from "./settings.js";

export { DEFAULT_TRUSTED_PROXIES, type CredentialSource } from "./settings.js";

/**
 * The only reader of process.env. Flags win over environment variables,
 * which win over defaults; an empty variable counts as unset. Every bad value
 * is refused with a message naming the flag or variable, so keygate never
 * starts half-configured. What each setting is, and how it is parsed, is in
 * settings.ts; this file reads the ones each command needs and checks the
 * rules between them.
 */

/** How the client's address is found: the TCP peer, or a trusted proxy's header. */
export interface ClientIpRules {
  /** Lower-cased header name ("x-forwarded-for", "x-real-ip"); unset = always the peer. */
  header: string | undefined;
  /** The peers whose header is believed. */
  trusted: BlockList;
}

export type OwnershipMode = (typeof OWNERSHIP_MODES)[number];

export interface StorageConfig {
  /** Set: real Postgres. Unset: embedded PGlite in dataDir. */
  databaseUrl: string | undefined;
  dataDir: string;
  /** The Postgres user when the URL names none (libpq would use $USER). */
  defaultDbUser: string;
  dbPoolSize: number;
}

export interface RuntimeConfig extends StorageConfig {
  policyDir: string;
  dev: boolean;
  /** Ownership checks on owned paths: "auto" is on in proxy mode (serve resolves it), off elsewhere. */
  ownership: OwnershipMode;
  keyPrefix: string;
  keyCacheTtlMs: number;
  negativeCacheTtlMs: number;
  keyCacheMaxEntries: number;
  usageFlushMs: number;
  /** Audit rows older than this are pruned by serve; null = kept forever. */
  auditRetentionMs: number | null;
  /** The allocation of keys without their own; null = unlimited. */
  defaultRateLimit: RateLimit | null;
  /** Set: rate-limit counters in this Redis, shared by every instance using it. Unset: per instance, in memory. */
  redisUrl: string | undefined;
  /** Invalid credentials per source answered normally per window (then slowed, then refused past twice as many); null = no guard. */
  authFailLimit: RateLimit | null;
  /** Addresses the failed-auth guard never slows or refuses (default: loopback). */
  authGuardExempt: ClientIpRules["trusted"];
}

export interface DecisionLogConfig {
  /** A file path, "-" for stdout, or undefined for no decision log. */
  target: string | undefined;
  mode: DecisionLogMode;
  /** Sampled mode: the fraction of allows logged (every deny is). */
  sample: number;
}

export interface ServeConfig extends RuntimeConfig {
  host: string;
  /** Dev mode may listen on a non-loopback address (--dev-allow-public with its exact phrase). */
  devAllowPublic: boolean;
  port: number;
  credentialPriority: CredentialSource[];
  shimPath: string;
  shutdownTimeoutMs: number;
  /** Quiet period after a policy-dir change before the policy is reloaded. */
  policyReloadDebounceMs: number;
  decisionLog: DecisionLogConfig;
  /** How the client's address is found for the failed-auth guard. */
  clientIp: ClientIpRules;
  /**
   * Plain unary Authorize calls (Connect, gRPC) answered without the
   * connect-node adapter; false sends every call through the adapter.
   */
  directAuthorize: boolean;
  /** The lowest log level written (--log-level / KEYGATE_LOG_LEVEL). */
  logLevel: LogLevel;
  /** Prometheus metrics at /metrics (KEYGATE_METRICS, default on). */
  metrics: boolean;
  /** OpenTelemetry traces, from the standard OTEL_* variables (off unless they ask for OTLP). */
  tracing: TracingConfig;
  /** Request line and headers, in bytes (KEYGATE_MAX_HEADER_BYTES): larger is refused with 431. */
  maxHeaderBytes: number;
  /** The whole HTTP/1.1 request must arrive within this (KEYGATE_REQUEST_TIMEOUT), or 408. */
  requestTimeoutMs: number;
  /** Its request line and headers within this (KEYGATE_HEADERS_TIMEOUT), or 408; also a new connection's first bytes. */
  headersTimeoutMs: number;
  /** An HTTP/2 connection with no open stream, or a streaming call with no message, this long is closed (KEYGATE_HTTP2_IDLE_TIMEOUT). */
  http2IdleTimeoutMs: number;
  /** Streams open at once on one HTTP/2 connection (KEYGATE_HTTP2_MAX_STREAMS). */
  http2MaxStreams: number;
  /** Connections open at once per listening port (KEYGATE_MAX_CONNECTIONS); undefined = derived from the open-file limit at start. */
  maxConnections: number | undefined;
  /** Proxy mode (--upstream): a second listener forwarding allowed requests to Cube; undefined = off. */
  proxy: ProxyConfig | undefined;
  /** The secret Cube signs its webhooks with (KEYGATE_CUBE_WEBHOOK_SECRET); unset, /webhooks/cube is off. */
  cubeWebhookSecret: string | undefined;
}

/** Proxy mode: where it listens, whom it forwards to, how long it waits. */
export interface ProxyConfig {
  /** The Cube (E2B API) server: origin, and a base path if it has one. */
  upstream: string;
  host: string;
  port: number;
  /** Upstream answer headers (then each stretch of the body) within this, or 504. */
  timeoutMs: number;
  /** Live sandboxes per org (KEYGATE_ORG_MAX_SANDBOXES); null = unlimited. */
  orgMaxSandboxes: number | null;
}

/** KEYGATE_OWNERSHIP as serve applies it: "auto" is on in proxy mode (--upstream), off otherwise. */
export function servedOwnership(config: Pick<ServeConfig, "ownership" | "proxy">): "on" | "off" {
  if (config.ownership === "auto") return config.proxy ? "on" : "off";
  return config.ownership;
}

/** The proxy's port when only --upstream is given. */
export const DEFAULT_PROXY_PORT = 8090;

export interface ShimConfig {
  host: string;
  port: number;
  upstream: string;
  credentialPriority: CredentialSource[];
  shimPath: string;
  shutdownTimeoutMs: number;
  clientIp: ClientIpRules;
  logLevel: LogLevel;
  /** Keys shaped like this prefix are masked in the logs. */
  keyPrefix: string;
}

export type Flags = Record<string, string | boolean | undefined>;
export type Env = Record<string, string | undefined>;
export type ConfigResult<T> = { ok: true; config: T } | { ok: false; errors: string[] };

type Settings = typeof SETTINGS;
/** A setting's parsed value; undefined only for one without a default. */
type Value<K extends SettingName> = z.output<Settings[K]["type"]> | (Settings[K] extends { default: string } ? never : undefined);

interface Read<K extends SettingName> {
  values: { [P in K]: Value<P> };
  /** The settings given (by flag or variable) and valid; the rest hold their defaults. */
  given: ReadonlySet<SettingName>;
}

/** The text of a setting and the name to blame for it: the flag, else a non-empty variable, else nothing. */
function rawValue(spec: SettingSpec, flags: Flags, env: Env): { text: string | boolean; source: string } | undefined {
  const flag = spec.flag === undefined ? undefined : flags[spec.flag];
  if (flag !== undefined) return { text: flag, source: `--${spec.flag}` };
  const variable = spec.env === undefined ? undefined : env[spec.env];
  if (variable !== undefined && variable !== "") return { text: variable, source: spec.env! };
  return undefined;
}

/** Who a message names: the flag or variable given, or both names for the settings that always named both. */
function blamed(spec: SettingSpec, source: string | undefined): string {
  if (spec.blame === "both" && spec.flag !== undefined && spec.env !== undefined) return `--${spec.flag}/${spec.env}`;
  return source ?? (spec.flag !== undefined ? `--${spec.flag}` : spec.env!);
}

/**
 * Parses the named settings from flags, then the environment, then their
 * defaults (`command`'s own where it has one). A bad value pushes one message
 * per problem onto `errors` and leaves the default in its place, so every
 * mistake is reported at once and the rules between settings still see sound
 * values.
 */
function readSettings<K extends SettingName>(names: readonly K[], flags: Flags, env: Env, errors: string[], command?: Command): Read<K> {
  const values: Record<string, unknown> = {};
  const given = new Set<SettingName>();
  for (const name of names) {
    const spec: SettingSpec = SETTINGS[name];
    const fallback = (command === undefined ? undefined : spec.defaultFor?.[command]) ?? spec.default;
    // A default that does not parse is a bug in settings.ts: thrown (test/unit/config-docs.test.ts parses them all).
    values[name] = fallback === undefined ? undefined : spec.type.parse(fallback);
    const raw = rawValue(spec, flags, env);
    if (raw === undefined) {
      if (spec.required !== undefined && (spec.requiredFor === undefined || (command !== undefined && spec.requiredFor.includes(command)))) errors.push(`${blamed(spec, undefined)}: required (${spec.required})`);
      continue;
    }
    // A switch given as a flag is true by being there; any other flag needs its value.
    const text = typeof raw.text === "boolean" && spec.arg === undefined ? String(raw.text) : raw.text;
    if (typeof text !== "string" || text === "") {
      errors.push(`${raw.source}: a value is required`);
      continue;
    }
    const result = spec.type.safeParse(text);
    if (!result.success) {
      const messages = new Set(result.error.issues.map((issue) => issue.message));
      for (const message of messages) errors.push(`${blamed(spec, raw.source)}: ${message}`);
      continue;
    }
    values[name] = result.data;
    given.add(name);
  }
  return { values: values as Read<K>["values"], given };
}

function absolute(path: string, cwd: string): string {
  return isAbsolute(path) ? path : resolve(cwd, path);
}

function result<T>(errors: string[], config: T): ConfigResult<T> {
  return errors.length > 0 ? { ok: false, errors } : { ok: true, config };
}

const STORAGE_SETTINGS = ["databaseUrl", "dataDir", "dbPoolSize", "pgUser"] as const;

function storage(flags: Flags, env: Env, cwd: string, errors: string[]): StorageConfig {
  const { values } = readSettings(STORAGE_SETTINGS, flags, env, errors);
  return {
    databaseUrl: values.databaseUrl,
    dataDir: absolute(values.dataDir, cwd),
    // libpq's own fallback; USER is the login, not a keygate setting.
    defaultDbUser: values.pgUser ?? (env.USER || "postgres"),
    dbPoolSize: values.dbPoolSize,
  };
}

export function readStorageConfig(flags: Flags, env: Env, cwd: string): ConfigResult<StorageConfig> {
  const errors: string[] = [];
  return result(errors, storage(flags, env, cwd, errors));
}

/** The default policy shipped with keygate: from dist/src/config/ (built) or src/config/ (tests). */
export const SHIPPED_POLICY_DIR = [new URL("../../../policies", import.meta.url), new URL("../../policies", import.meta.url)]
  .map((url) => fileURLToPath(url))
  .find((dir) => existsSync(resolve(dir, "model.conf"))) ?? resolve("policies");

/**
 * --policy-dir / KEYGATE_POLICY_DIR; by default ./policies when the working
 * directory has one, else the default policy keygate ships, so `keygate`
 * run from any directory still has a policy.
 */
function policyDir(flags: Flags, env: Env, cwd: string, errors: string[]): string {
  const { values } = readSettings(["policyDir"], flags, env, errors);
  if (values.policyDir !== undefined) return absolute(values.policyDir, cwd);
  const local = resolve(cwd, "policies");
  return existsSync(local) ? local : SHIPPED_POLICY_DIR;
}

/** Only the policy directory: the policy tools read files, so no other setting may stop them. */
export function readPolicyDir(flags: Flags, env: Env, cwd: string): ConfigResult<string> {
  const errors: string[] = [];
  return result(errors, policyDir(flags, env, cwd, errors));
}

const RUNTIME_SETTINGS = [
  "dev",
  "ownership",
  "keyPrefix",
  "keyCacheTtl",
  "negativeCacheTtl",
  "keyCacheSize",
  "usageFlushInterval",
  "auditRetention",
  "defaultRateLimit",
  "redisUrl",
  "authFailLimit",
  "authGuardExempt",
] as const;

function runtime(flags: Flags, env: Env, cwd: string, errors: string[]): RuntimeConfig {
  const storageConfig = storage(flags, env, cwd, errors);
  const dir = policyDir(flags, env, cwd, errors);
  const { values } = readSettings(RUNTIME_SETTINGS, flags, env, errors);
  return {
    ...storageConfig,
    policyDir: dir,
    dev: values.dev,
    ownership: values.ownership,
    keyPrefix: values.keyPrefix,
    keyCacheTtlMs: values.keyCacheTtl,
    negativeCacheTtlMs: values.negativeCacheTtl,
    keyCacheMaxEntries: values.keyCacheSize,
    usageFlushMs: values.usageFlushInterval,
    auditRetentionMs: values.auditRetention,
    defaultRateLimit: values.defaultRateLimit ?? null,
    redisUrl: values.redisUrl,
    authFailLimit: values.authFailLimit,
    authGuardExempt: values.authGuardExempt,
  };
}

export function readRuntimeConfig(flags: Flags, env: Env, cwd: string): ConfigResult<RuntimeConfig> {
  const errors: string[] = [];
  return result(errors, runtime(flags, env, cwd, errors));
}

/** What `serve` and `shim` share: where and how they listen. */
const LISTEN_SETTINGS = ["host", "port", "credentialPriority", "shimPath", "shutdownTimeout", "clientIpHeader", "trustedProxies", "logLevel"] as const;

const SERVE_SETTINGS = [
  ...LISTEN_SETTINGS,
  "policyReloadDebounce",
  "decisionLog",
  "decisionLogMode",
  "decisionLogSample",
  "directAuthorize",
  "metrics",
  "maxHeaderBytes",
  "requestTimeout",
  "headersTimeout",
  "http2IdleTimeout",
  "http2MaxStreams",
  "maxConnections",
  "upstream",
  "proxyPort",
  "proxyHost",
  "proxyTimeout",
  "orgMaxSandboxes",
  "cubeWebhookSecret",
  "devAllowPublic",
] as const;

/**
 * Proxy mode is on when an upstream is given. A proxy port or host without
 * one is a mistake (the proxy would silently not start), so it is refused.
 */
function proxyConfig(read: Read<"host" | "upstream" | "proxyPort" | "proxyHost" | "proxyTimeout" | "orgMaxSandboxes">, errors: string[]): ProxyConfig | undefined {
  const { values, given } = read;
  if (values.upstream === undefined) {
    if (given.has("proxyPort")) errors.push("--proxy-port/KEYGATE_PROXY_PORT: only with --upstream/KEYGATE_UPSTREAM (proxy mode)");
    if (given.has("proxyHost")) errors.push("--proxy-host/KEYGATE_PROXY_HOST: only with --upstream/KEYGATE_UPSTREAM (proxy mode)");
    return undefined;
  }
  return {
    upstream: values.upstream,
    host: values.proxyHost ?? values.host,
    port: values.proxyPort ?? DEFAULT_PROXY_PORT,
    timeoutMs: values.proxyTimeout,
    orgMaxSandboxes: values.orgMaxSandboxes ?? null,
  };
}

type ListenerSettings = "maxHeaderBytes" | "requestTimeout" | "headersTimeout" | "http2IdleTimeout" | "http2MaxStreams" | "maxConnections";
type ListenerLimitsConfig = Pick<ServeConfig, "maxHeaderBytes" | "requestTimeoutMs" | "headersTimeoutMs" | "http2IdleTimeoutMs" | "http2MaxStreams" | "maxConnections">;

function listenerLimits(read: Read<ListenerSettings>, errors: string[]): ListenerLimitsConfig {
  const { maxHeaderBytes, requestTimeout, headersTimeout, http2IdleTimeout, http2MaxStreams, maxConnections } = read.values;
  // The headers are part of the request: due no later than the whole of it.
  if (read.given.has("headersTimeout") && headersTimeout > requestTimeout) {
    errors.push(`KEYGATE_HEADERS_TIMEOUT: ${headersTimeout} ms is longer than KEYGATE_REQUEST_TIMEOUT (${requestTimeout} ms), which includes the headers`);
  }
  return {
    maxHeaderBytes,
    requestTimeoutMs: requestTimeout,
    headersTimeoutMs: Math.min(headersTimeout, requestTimeout),
    http2IdleTimeoutMs: http2IdleTimeout,
    http2MaxStreams,
    maxConnections,
  };
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");
LOOPBACK.addSubnet("::ffff:127.0.0.0", 104, "ipv6");

/** 127.0.0.0/8, ::1 (bracketed or not) and `localhost`; any other name or address may be reachable from elsewhere. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.startsWith("[") && host.endsWith("]") ? host.slice(1, -1) : host;
  if (bare.toLowerCase() === "localhost") return true;
  const family = isIP(bare);
  return family !== 0 && LOOPBACK.check(bare, family === 4 ? "ipv4" : "ipv6");
}

/**
 * Dev mode allows every request: on an address others can reach it is an
 * open door, and KEYGATE_HOST=0.0.0.0 (the Dockerfile's) makes it one with a
 * single variable. So it takes a second, deliberately awkward setting.
 */
function devListenRule(dev: boolean, listens: [string, string][], allowPublic: boolean, errors: string[]): void {
  if (!dev || allowPublic) return;
  for (const [host, setting] of listens) {
    if (isLoopbackHost(host)) continue;
    errors.push(
      `--dev/KEYGATE_DEV: refused on ${host} (${setting}), which is not a loopback address: dev mode allows every request from anyone who can reach it. ` +
        `Listen on 127.0.0.1, or, if you mean it, add --dev-allow-public=${DEV_ALLOW_PUBLIC_PHRASE} (KEYGATE_DEV_ALLOW_PUBLIC)`,
    );
  }
}

export function readServeConfig(flags: Flags, env: Env, cwd: string): ConfigResult<ServeConfig> {
  const errors: string[] = [];
  const runtimeConfig = runtime(flags, env, cwd, errors);
  const read = readSettings(SERVE_SETTINGS, flags, env, errors, "serve");
  const { values } = read;
  const proxy = proxyConfig(read, errors);
  const listens: [string, string][] = [[values.host, "--host/KEYGATE_HOST"]];
  if (proxy && proxy.host !== values.host) listens.push([proxy.host, "--proxy-host/KEYGATE_PROXY_HOST"]);
  devListenRule(runtimeConfig.dev, listens, values.devAllowPublic ?? false, errors);
  return result(errors, {
    ...runtimeConfig,
    host: values.host,
    port: values.port,
    credentialPriority: values.credentialPriority,
    shimPath: values.shimPath,
    shutdownTimeoutMs: values.shutdownTimeout,
    policyReloadDebounceMs: values.policyReloadDebounce,
    decisionLog: { target: values.decisionLog, mode: values.decisionLogMode, sample: values.decisionLogSample },
    clientIp: { header: values.clientIpHeader, trusted: values.trustedProxies },
    directAuthorize: values.directAuthorize,
    logLevel: values.logLevel,
    metrics: values.metrics,
    tracing: readTracingConfig(env, errors),
    cubeWebhookSecret: values.cubeWebhookSecret,
    ...listenerLimits(read, errors),
    proxy,
    devAllowPublic: values.devAllowPublic ?? false,
  });
}

export function readShimConfig(flags: Flags, env: Env): ConfigResult<ShimConfig> {
  const errors: string[] = [];
  const { values } = readSettings([...LISTEN_SETTINGS, "upstream", "keyPrefix"], flags, env, errors, "shim");
  return result(errors, {
    host: values.host,
    port: values.port,
    upstream: values.upstream ?? "",
    credentialPriority: values.credentialPriority,
    shimPath: values.shimPath,
    shutdownTimeoutMs: values.shutdownTimeout,
    clientIp: { header: values.clientIpHeader, trusted: values.trustedProxies },
    logLevel: values.logLevel,
    keyPrefix: values.keyPrefix,
  });
}

/** The request limits of the public port, as keygate starts without KEYGATE_MAX_HEADER_BYTES, _REQUEST_TIMEOUT or _HEADERS_TIMEOUT. */
export const DEFAULT_LISTENER_LIMITS: ListenerLimitsConfig = listenerLimits(
  readSettings(["maxHeaderBytes", "requestTimeout", "headersTimeout", "http2IdleTimeout", "http2MaxStreams", "maxConnections"], {}, {}, []),
  [],
);

/** The keys the CLI itself holds: --api-key/KEYGATE_API_KEY (with --server) and check's --key/KEYGATE_CHECK_KEY; undefined when not given. */
export interface CliKeys {
  apiKey: string | undefined;
  checkKey: string | undefined;
}

export function readCliKeys(flags: Flags, env: Env): ConfigResult<CliKeys> {
  const errors: string[] = [];
  const { values } = readSettings(["apiKey", "checkKey"], flags, env, errors);
  return result(errors, { apiKey: values.apiKey, checkKey: values.checkKey });
}
