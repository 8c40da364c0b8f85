import { existsSync } from "node:fs";
import type { BlockList } from "node:net";
import { isAbsolute, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseDuration } from "../core/time/duration.js";
import { DEFAULT_KEY_PREFIX, isValidKeyPrefix } from "../core/keys/key-format.js";
import { DEFAULT_AUTH_FAIL_LIMIT } from "../core/authorize/failed-auth-guard.js";
import { DECISION_LOG_MODES, type DecisionLogMode } from "../telemetry/decision-log.js";
import { parseRateLimit, type RateLimit } from "../core/ratelimit/rate-limit.js";
import { LOG_LEVELS, type LogLevel } from "../telemetry/logger.js";
import { parseAddressList } from "../core/request/address.js";
import { FORWARD_AUTH_PATHS, OPERATIONS_PATHS } from "./public-paths.js";

import { readTracingConfig, type TracingConfig } from "../telemetry/tracing-config.js";

/**
 * The only reader of process.env. Flags win over environment variables,
 * which win over defaults. Every bad value is refused with a message naming
 * the flag or variable, so keygate never starts half-configured.
 */

export type CredentialSource = "authorization" | "x-api-key";

/** How the client's address is found: the TCP peer, or a trusted proxy's header. */
export interface ClientIpRules {
  /** Lower-cased header name ("x-forwarded-for", "x-real-ip"); unset = always the peer. */
  header: string | undefined;
  /** The peers whose header is believed. */
  trusted: BlockList;
}

export const DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128";

/** The request limits of the public port (KEYGATE_MAX_HEADER_BYTES, KEYGATE_REQUEST_TIMEOUT, KEYGATE_HEADERS_TIMEOUT). */
export const DEFAULT_LISTENER_LIMITS = { maxHeaderBytes: 16 * 1024, requestTimeoutMs: 30_000, headersTimeoutMs: 15_000 } as const;

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
  keyPrefix: string;
  keyCacheTtlMs: number;
  negativeCacheTtlMs: number;
  keyCacheMaxEntries: number;
  usageFlushMs: number;
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
}

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

class Reader {
  readonly errors: string[] = [];
  constructor(
    private readonly flags: Flags,
    private readonly env: Env,
  ) {}

  /** The raw value and the name to blame for it. */
  raw(flag: string | undefined, envName: string | undefined): { value: string | boolean | undefined; source: string } {
    if (flag !== undefined && this.flags[flag] !== undefined) return { value: this.flags[flag], source: `--${flag}` };
    if (envName !== undefined && this.env[envName] !== undefined && this.env[envName] !== "") {
      return { value: this.env[envName], source: envName };
    }
    return { value: undefined, source: flag ? `--${flag}` : (envName ?? "?") };
  }

  string(flag: string | undefined, envName: string | undefined, fallback: string): string {
    const { value, source } = this.raw(flag, envName);
    if (value === undefined) return fallback;
    if (typeof value !== "string" || value === "") {
      this.errors.push(`${source}: a value is required`);
      return fallback;
    }
    return value;
  }

  int(flag: string | undefined, envName: string | undefined, fallback: number, min: number, max: number): number {
    const { value, source } = this.raw(flag, envName);
    if (value === undefined) return fallback;
    const text = String(value);
    if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) {
      this.errors.push(`${source}: "${text}" is not a whole number from ${min} to ${max}`);
      return fallback;
    }
    return Number(text);
  }

  bool(flag: string | undefined, envName: string | undefined, fallback = false): boolean {
    const { value, source } = this.raw(flag, envName);
    if (value === undefined) return fallback;
    if (typeof value === "boolean") return value;
    const text = value.toLowerCase();
    if (["1", "true", "yes", "on"].includes(text)) return true;
    if (["0", "false", "no", "off"].includes(text)) return false;
    this.errors.push(`${source}: "${value}" is not a boolean (use true or false)`);
    return false;
  }

  duration(flag: string | undefined, envName: string, fallback: string): number {
    const text = this.string(flag, envName, fallback);
    const parsed = parseDuration(text);
    if (!parsed.ok) {
      this.errors.push(`${this.raw(flag, envName).source}: ${parsed.error}`);
      return parseDuration(fallback).ok ? (parseDuration(fallback) as { ms: number }).ms : 0;
    }
    return parsed.ms;
  }

  /** A delay up to an hour: "200ms", or a duration such as "1s" ("0s" = none). */
  delay(envName: string, fallbackMs: number): number {
    const maxMs = 3_600_000;
    const text = this.string(undefined, envName, `${fallbackMs}ms`).trim();
    const millis = /^(\d{1,9})ms$/.exec(text);
    const parsed = millis ? { ok: true as const, ms: Number(millis[1]) } : parseDuration(text);
    if (!parsed.ok || parsed.ms > maxMs) {
      this.errors.push(`${envName}: "${text}" is not a duration from 0ms to 1h (e.g. 200ms, 1s)`);
      return fallbackMs;
    }
    return parsed.ms;
  }

  /** A timeout from 100ms to 1h: "500ms", or a duration such as "30s". */
  timeout(envName: string, fallbackMs: number): number {
    const text = this.string(undefined, envName, `${fallbackMs}ms`).trim();
    const millis = /^(\d{1,9})ms$/.exec(text);
    const parsed = millis ? { ok: true as const, ms: Number(millis[1]) } : parseDuration(text);
    if (!parsed.ok || parsed.ms < 100 || parsed.ms > 3_600_000) {
      this.errors.push(`${envName}: "${text}" is not a duration from 100ms to 1h (e.g. 500ms, 30s)`);
      return fallbackMs;
    }
    return parsed.ms;
  }

  /** The request limits of the public port; the headers must be due no later than the whole request. */
  requestLimits(): Pick<ServeConfig, "maxHeaderBytes" | "requestTimeoutMs" | "headersTimeoutMs"> {
    const maxHeaderBytes = this.int(undefined, "KEYGATE_MAX_HEADER_BYTES", DEFAULT_LISTENER_LIMITS.maxHeaderBytes, 1024, 1024 * 1024);
    const requestTimeoutMs = this.timeout("KEYGATE_REQUEST_TIMEOUT", DEFAULT_LISTENER_LIMITS.requestTimeoutMs);
    let headersTimeoutMs = this.timeout("KEYGATE_HEADERS_TIMEOUT", Math.min(DEFAULT_LISTENER_LIMITS.headersTimeoutMs, requestTimeoutMs));
    if (headersTimeoutMs > requestTimeoutMs) {
      this.errors.push(`KEYGATE_HEADERS_TIMEOUT: ${headersTimeoutMs} ms is longer than KEYGATE_REQUEST_TIMEOUT (${requestTimeoutMs} ms), which includes the headers`);
      headersTimeoutMs = requestTimeoutMs;
    }
    return { maxHeaderBytes, requestTimeoutMs, headersTimeoutMs };
  }

  host(): string {
    const host = this.string("host", "KEYGATE_HOST", "127.0.0.1");
    if (!/^[A-Za-z0-9.:[\]-]{1,253}$/.test(host)) this.errors.push(`--host/KEYGATE_HOST: "${host}" is not a host name or IP address`);
    return host;
  }

  credentialPriority(): CredentialSource[] {
    const text = this.string("credential-priority", "KEYGATE_CREDENTIAL_PRIORITY", "authorization,x-api-key");
    const parts = text.split(",").map((part) => part.trim().toLowerCase());
    const mapped = parts.map((part) => (part === "bearer" ? "authorization" : part));
    const valid = mapped.length === 2 && mapped.includes("authorization") && mapped.includes("x-api-key");
    if (!valid) {
      this.errors.push(
        `--credential-priority/KEYGATE_CREDENTIAL_PRIORITY: "${text}" must name both headers in order: "authorization,x-api-key" (Cube, the default) or "x-api-key,authorization" (SandBase)`,
      );
      return ["authorization", "x-api-key"];
    }
    return mapped as CredentialSource[];
  }

  defaultRateLimit(): RateLimit | null {
    const { value, source } = this.raw("default-rate-limit", "KEYGATE_DEFAULT_RATE_LIMIT");
    if (value === undefined) return null;
    const parsed = parseRateLimit(String(value));
    if (!parsed.ok) {
      this.errors.push(`${source}: ${parsed.error}`);
      return null;
    }
    return parsed.limit;
  }

  redisUrl(): string | undefined {
    const { value, source } = this.raw("redis-url", "REDIS_URL");
    if (value === undefined) return undefined;
    const text = String(value);
    let valid = false;
    try {
      const url = new URL(text);
      valid = (url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname !== "";
    } catch {
      valid = false;
    }
    // Never echo the URL: it may hold a password.
    if (!valid) this.errors.push(`${source}: not a redis:// or rediss:// URL with a host`);
    return valid ? text : undefined;
  }

  authFailLimit(): RateLimit | null {
    const { value, source } = this.raw("auth-fail-limit", "KEYGATE_AUTH_FAIL_LIMIT");
    if (value === undefined) return DEFAULT_AUTH_FAIL_LIMIT;
    if (String(value) === "off") return null;
    const parsed = parseRateLimit(String(value));
    if (!parsed.ok) {
      this.errors.push(`${source}: ${parsed.error} (or "off")`);
      return DEFAULT_AUTH_FAIL_LIMIT;
    }
    return parsed.limit;
  }

  decisionLog(): DecisionLogConfig {
    const target = this.string("decision-log", "KEYGATE_DECISION_LOG", "") || undefined;
    const modeText = this.string(undefined, "KEYGATE_DECISION_LOG_MODE", "all").toLowerCase();
    let mode = modeText as DecisionLogMode;
    if (!DECISION_LOG_MODES.includes(mode)) {
      this.errors.push(`KEYGATE_DECISION_LOG_MODE: "${modeText}" must be one of ${DECISION_LOG_MODES.join(", ")}`);
      mode = "all";
    }
    const sampleText = this.string(undefined, "KEYGATE_DECISION_LOG_SAMPLE", "0.1");
    let sample = Number(sampleText);
    if (!/^\d*\.?\d+$/.test(sampleText.trim()) || !(sample >= 0 && sample <= 1)) {
      this.errors.push(`KEYGATE_DECISION_LOG_SAMPLE: "${sampleText}" is not a fraction from 0 to 1 (e.g. 0.05)`);
      sample = 0.1;
    }
    return { target, mode, sample };
  }

  authGuardExempt(): ClientIpRules["trusted"] {
    const text = this.string(undefined, "KEYGATE_AUTH_GUARD_EXEMPT", DEFAULT_TRUSTED_PROXIES);
    const parsed = parseAddressList(text === "none" ? "" : text);
    if (!parsed.ok) {
      this.errors.push(`KEYGATE_AUTH_GUARD_EXEMPT: ${parsed.error} (or "none")`);
      return (parseAddressList(DEFAULT_TRUSTED_PROXIES) as { ok: true; list: ClientIpRules["trusted"] }).list;
    }
    return parsed.list;
  }

  clientIp(): ClientIpRules {
    const header = this.string("trusted-proxy-header", "KEYGATE_CLIENT_IP_HEADER", "").toLowerCase() || undefined;
    if (header !== undefined && !/^[a-z0-9-]{1,64}$/.test(header)) this.errors.push(`--trusted-proxy-header/KEYGATE_CLIENT_IP_HEADER: "${header}" is not a header name`);
    const proxiesText = this.string(undefined, "KEYGATE_TRUSTED_PROXIES", DEFAULT_TRUSTED_PROXIES);
    const proxies = parseAddressList(proxiesText);
    if (!proxies.ok) {
      this.errors.push(`KEYGATE_TRUSTED_PROXIES: ${proxies.error}`);
      return { header, trusted: (parseAddressList(DEFAULT_TRUSTED_PROXIES) as { ok: true; list: ClientIpRules["trusted"] }).list };
    }
    return { header, trusted: proxies.list };
  }

  shimPath(): string {
    const path = this.string("shim-path", "KEYGATE_SHIM_PATH", "/verify");
    if (!/^\/[A-Za-z0-9._~\/-]{0,200}$/.test(path) || path.includes("//") || path.startsWith("/keygate.v1.")) {
      this.errors.push(`--shim-path/KEYGATE_SHIM_PATH: "${path}" must be a plain absolute path such as /verify`);
    }
    if (FORWARD_AUTH_PATHS.includes(path)) this.errors.push(`--shim-path/KEYGATE_SHIM_PATH: "${path}" is taken by a gateway endpoint (${FORWARD_AUTH_PATHS.join(", ")})`);
    if (OPERATIONS_PATHS.includes(path)) this.errors.push(`--shim-path/KEYGATE_SHIM_PATH: "${path}" is taken by a health or metrics endpoint (${OPERATIONS_PATHS.join(", ")})`);
    return path;
  }

  logLevel(): LogLevel {
    const text = this.string("log-level", "KEYGATE_LOG_LEVEL", "info");
    const level = text.toLowerCase() as LogLevel;
    if (!LOG_LEVELS.includes(level)) {
      this.errors.push(`${this.raw("log-level", "KEYGATE_LOG_LEVEL").source}: "${text}" must be one of ${LOG_LEVELS.join(", ")}`);
      return "info";
    }
    return level;
  }

  result<T>(config: T): ConfigResult<T> {
    return this.errors.length > 0 ? { ok: false, errors: this.errors } : { ok: true, config };
  }
}

export function readStorageConfig(flags: Flags, env: Env, cwd: string): ConfigResult<StorageConfig> {
  const r = new Reader(flags, env);
  return r.result(storage(r, env, cwd));
}

function storage(r: Reader, env: Env, cwd: string): StorageConfig {
  const databaseUrl = r.raw("database-url", "DATABASE_URL").value;
  if (databaseUrl !== undefined) {
    let valid = false;
    try {
      const url = new URL(String(databaseUrl));
      valid = url.protocol === "postgres:" || url.protocol === "postgresql:";
    } catch {
      valid = false;
    }
    if (!valid) r.errors.push(`DATABASE_URL: not a postgres:// or postgresql:// URL`);
  }
  const dataDir = r.string("data-dir", "KEYGATE_DATA_DIR", ".keygate");
  return {
    databaseUrl: databaseUrl === undefined ? undefined : String(databaseUrl),
    dataDir: isAbsolute(dataDir) ? dataDir : resolve(cwd, dataDir),
    defaultDbUser: env.PGUSER || env.USER || "postgres",
    dbPoolSize: r.int("db-pool-size", "KEYGATE_DB_POOL_SIZE", 10, 1, 200),
  };
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
function policyDir(r: Reader, cwd: string): string {
  const given = r.raw("policy-dir", "KEYGATE_POLICY_DIR").value;
  if (given === undefined) {
    const local = resolve(cwd, "policies");
    return existsSync(local) ? local : SHIPPED_POLICY_DIR;
  }
  const dir = r.string("policy-dir", "KEYGATE_POLICY_DIR", "policies");
  return isAbsolute(dir) ? dir : resolve(cwd, dir);
}

/** Only the policy directory: the policy tools read files, so no other setting may stop them. */
export function readPolicyDir(flags: Flags, env: Env, cwd: string): ConfigResult<string> {
  const r = new Reader(flags, env);
  return r.result(policyDir(r, cwd));
}

function runtime(r: Reader, env: Env, cwd: string): RuntimeConfig {
  const keyPrefix = r.string("key-prefix", "KEYGATE_KEY_PREFIX", DEFAULT_KEY_PREFIX);
  if (!isValidKeyPrefix(keyPrefix)) r.errors.push(`--key-prefix/KEYGATE_KEY_PREFIX: "${keyPrefix}" must be 1-16 letters, digits, _ or -`);
  return {
    ...storage(r, env, cwd),
    policyDir: policyDir(r, cwd),
    dev: r.bool("dev", "KEYGATE_DEV"),
    keyPrefix,
    keyCacheTtlMs: r.duration("key-cache-ttl", "KEYGATE_KEY_CACHE_TTL", "5s"),
    negativeCacheTtlMs: r.duration(undefined, "KEYGATE_NEGATIVE_CACHE_TTL", "2s"),
    keyCacheMaxEntries: r.int(undefined, "KEYGATE_KEY_CACHE_SIZE", 100_000, 1, 100_000_000),
    usageFlushMs: Math.max(r.duration(undefined, "KEYGATE_USAGE_FLUSH_INTERVAL", "10s"), 100),
    defaultRateLimit: r.defaultRateLimit(),
    redisUrl: r.redisUrl(),
    authFailLimit: r.authFailLimit(),
    authGuardExempt: r.authGuardExempt(),
  };
}

export function readRuntimeConfig(flags: Flags, env: Env, cwd: string): ConfigResult<RuntimeConfig> {
  const r = new Reader(flags, env);
  return r.result(runtime(r, env, cwd));
}

export function readServeConfig(flags: Flags, env: Env, cwd: string): ConfigResult<ServeConfig> {
  const r = new Reader(flags, env);
  return r.result({
    ...runtime(r, env, cwd),
    host: r.host(),
    port: r.int("port", "PORT", 8080, 0, 65535),
    credentialPriority: r.credentialPriority(),
    shimPath: r.shimPath(),
    shutdownTimeoutMs: r.duration(undefined, "KEYGATE_SHUTDOWN_TIMEOUT", "10s"),
    policyReloadDebounceMs: r.delay("KEYGATE_POLICY_RELOAD_DEBOUNCE", 200),
    decisionLog: r.decisionLog(),
    clientIp: r.clientIp(),
    directAuthorize: r.bool(undefined, "KEYGATE_DIRECT_AUTHORIZE", true),
    logLevel: r.logLevel(),
    metrics: r.bool(undefined, "KEYGATE_METRICS", true),
    tracing: readTracingConfig(env, r.errors),
    ...r.requestLimits(),
  });
}

export function readShimConfig(flags: Flags, env: Env): ConfigResult<ShimConfig> {
  const r = new Reader(flags, env);
  const upstream = r.string("upstream", "KEYGATE_UPSTREAM", "");
  if (upstream === "") r.errors.push("--upstream/KEYGATE_UPSTREAM: required (the keygate server to ask, e.g. http://127.0.0.1:8080)");
  else {
    try {
      const url = new URL(upstream);
      if (url.protocol !== "http:" && url.protocol !== "https:") throw new Error("scheme");
    } catch {
      r.errors.push(`--upstream/KEYGATE_UPSTREAM: "${upstream}" is not an http:// or https:// URL`);
    }
  }
  return r.result({
    host: r.host(),
    port: r.int("port", "PORT", 8081, 0, 65535),
    upstream,
    credentialPriority: r.credentialPriority(),
    shimPath: r.shimPath(),
    shutdownTimeoutMs: r.duration(undefined, "KEYGATE_SHUTDOWN_TIMEOUT", "10s"),
    clientIp: r.clientIp(),
    logLevel: r.logLevel(),
    keyPrefix: r.string("key-prefix", "KEYGATE_KEY_PREFIX", DEFAULT_KEY_PREFIX),
  });
}
