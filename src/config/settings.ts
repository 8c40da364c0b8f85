import { z } from "zod";
import { DEFAULT_AUTH_FAIL_LIMIT } from "../core/authorize/failed-auth-guard.js";
import { DEFAULT_KEY_PREFIX, isValidKeyPrefix } from "../core/keys/key-format.js";
import { formatRateLimit, parseRateLimit } from "../core/ratelimit/rate-limit.js";
import { parseAddressList } from "../core/request/address.js";
import { parseDuration } from "../core/time/duration.js";
import { DECISION_LOG_MODES } from "../telemetry/decision-log.js";
import { LOG_LEVELS, type LogLevel } from "../telemetry/logger.js";
import { DEFAULT_SERVICE_NAME, DEFAULT_TRACES_ENDPOINT, SAMPLERS } from "../telemetry/tracing-config.js";
import { FORWARD_AUTH_PATHS, OPERATIONS_PATHS } from "./public-paths.js";

/**
 * Every setting keygate reads, once: its flag, its variable, its default as a
 * user writes it, what it means, which commands read it, and the zod type that
 * parses and checks the raw text. config.ts builds the typed config from it;
 * settings-docs.ts renders the help text and docs/configuration.md's table
 * from it (test/unit/config-docs.test.ts fails when the docs drift).
 */

export const COMMANDS = ["serve", "shim", "migrate", "status", "keygen", "keys", "check", "audit", "resources", "policy"] as const;
export type Command = (typeof COMMANDS)[number];

/** Status and the key commands: each opens the data (unless given --server), so reads what the runtime needs. */
export const KEY_COMMANDS = ["status", "keygen", "keys", "check", "audit", "resources"] as const satisfies readonly Command[];

const SERVERS = ["serve", "shim"] as const satisfies readonly Command[];
const RUNTIME = ["serve", ...KEY_COMMANDS] as const satisfies readonly Command[];
const STORAGE = [...RUNTIME, "migrate"] as const satisfies readonly Command[];

export type CredentialSource = "authorization" | "x-api-key";

/** The value --dev-allow-public must have: awkward on purpose, so that nobody sets it by accident. */
export const DEV_ALLOW_PUBLIC_PHRASE = "i-understand-every-request-is-allowed";

/** Loopback: a gateway or an Envoy on this host. */
export const DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128";

export interface SettingSpec<T = unknown> {
  /** The CLI flag, without the dashes. */
  flag?: string;
  /** What the flag's value looks like in the help ("N", "DIR"); a flag without one is a switch (--dev). */
  arg?: string;
  /** The environment variable. */
  env?: string;
  /** The default as a user would write it: parsed by `type`, like any given value. */
  default?: string;
  /** A command whose default differs (the standalone shim listens next to the server). */
  defaultFor?: Partial<Record<Command, string>>;
  /** What having no value means, when there is no default (markdown): "unlimited". */
  unset?: string;
  /** Having no value is refused with this hint. */
  required?: string;
  /** The commands `required` holds for; unset = every command that reads it. */
  requiredFor?: readonly Command[];
  /** One line (markdown): the help text and the docs table. */
  description: string;
  /** More for the docs table only (markdown). */
  details?: string;
  /** The commands that read it. */
  commands: readonly Command[];
  /** Messages name "--flag/VARIABLE" whichever was given (as these always have), not just the one given. */
  blame?: "both";
  /** Parses and checks the raw text; an issue's message follows "<flag or variable>: ". */
  type: z.ZodType<T, string>;
}

// --- the types settings share --------------------------------------------------------

type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

/** A core parser (durations, rate limits, address lists) as a zod type: its error is the message. */
function parsedBy<T>(parse: (text: string) => Parsed<T>): z.ZodType<T, string> {
  return z.string().transform((text, ctx) => {
    const result = parse(text);
    if (result.ok) return result.value;
    ctx.issues.push({ code: "custom", message: result.error, input: text });
    return z.NEVER;
  });
}

const quoted = (input: unknown) => `"${String(input)}"`;

/** Decimal digits only: "1e3", "+5" and " 8" are refused, not coerced. */
function wholeNumber(min: number, max: number) {
  return z
    .string()
    .refine((text) => /^\d+$/.test(text) && Number(text) >= min && Number(text) <= max, {
      error: (issue) => `${quoted(issue.input)} is not a whole number from ${min} to ${max}`,
    })
    .transform(Number);
}

/** The words a switch takes, from a variable (a flag is `true` by being there). */
const toggle = () =>
  z.stringbool({
    truthy: ["1", "true", "yes", "on"],
    falsy: ["0", "false", "no", "off"],
    error: (issue) => `${quoted(issue.input)} is not a boolean (use true or false)`,
  });

/** A duration in the keys' style: 30s 15m 24h 7d. */
const duration = () => parsedBy((text) => {
  const result = parseDuration(text);
  return result.ok ? { ok: true, value: result.ms } : result;
});

const HOUR_MS = 3_600_000;

/** "500ms", or a duration such as "30s", from minMs to an hour. */
function milliseconds(minMs: number, examples: string) {
  return z
    .string()
    .trim()
    .transform((text, ctx) => {
      const millis = /^(\d{1,9})ms$/.exec(text);
      const result = millis ? { ok: true as const, ms: Number(millis[1]) } : parseDuration(text);
      if (result.ok && result.ms >= minMs && result.ms <= HOUR_MS) return result.ms;
      ctx.issues.push({ code: "custom", message: `"${text}" is not a duration from ${minMs}ms to 1h (e.g. ${examples})`, input: text });
      return z.NEVER;
    });
}

/** N/WINDOW; `off` (when given) means no limit at all. */
function rateLimit(off?: string) {
  return parsedBy((text) => {
    if (off !== undefined && text === off) return { ok: true, value: null };
    const result = parseRateLimit(text);
    if (result.ok) return { ok: true, value: result.limit };
    return { ok: false, error: off === undefined ? result.error : `${result.error} (or "${off}")` };
  });
}

/** IPs and CIDRs, comma-separated; `none` (when given) is the empty list. */
function addressList(none?: string) {
  return parsedBy((text) => {
    const result = parseAddressList(none !== undefined && text === none ? "" : text);
    if (result.ok) return { ok: true, value: result.list };
    return { ok: false, error: none === undefined ? result.error : `${result.error} (or "${none}")` };
  });
}

const CREDENTIAL_PRIORITIES = ["authorization,x-api-key", "x-api-key,authorization"];

const credentialPriority = () =>
  z.string().transform((text, ctx) => {
    // "bearer" is the Authorization header by its scheme.
    const order = text.split(",").map((part) => part.trim().toLowerCase()).map((part) => (part === "bearer" ? "authorization" : part));
    if (CREDENTIAL_PRIORITIES.includes(order.join(","))) return order as CredentialSource[];
    ctx.issues.push({
      code: "custom",
      message: `"${text}" must name both headers in order: "authorization,x-api-key" (Cube, the default) or "x-api-key,authorization" (SandBase)`,
      input: text,
    });
    return z.NEVER;
  });

/** The callback's path: plain, absolute, and none of the public port's fixed paths. */
const shimPath = () =>
  z.string().check((ctx) => {
    const path = ctx.value;
    const problem = (message: string) => ctx.issues.push({ code: "custom", message, input: path });
    if (!/^\/[A-Za-z0-9._~/-]{0,200}$/.test(path) || path.includes("//") || path.startsWith("/keygate.v1.")) {
      problem(`"${path}" must be a plain absolute path such as /verify`);
    }
    if (FORWARD_AUTH_PATHS.includes(path)) problem(`"${path}" is taken by a gateway endpoint (${FORWARD_AUTH_PATHS.join(", ")})`);
    if (OPERATIONS_PATHS.includes(path)) problem(`"${path}" is taken by a health or metrics endpoint (${OPERATIONS_PATHS.join(", ")})`);
  });

/** Whether decisions consult the ownership ledger. */
export const OWNERSHIP_MODES = ["auto", "on", "off"] as const;

const code = (text: string) => `\`${text}\``;
const oneOf = (values: readonly string[]) => values.map(code).join(", ");

// --- the settings ---------------------------------------------------------------------

/** In the order of the docs table. */
export const SETTINGS = {
  port: {
    flag: "port",
    arg: "N",
    env: "PORT",
    default: "8080",
    defaultFor: { shim: "8081" },
    description: "port for gRPC, Connect, gRPC-Web and the Cube callback (`0` = any free port)",
    commands: SERVERS,
    type: wholeNumber(0, 65535),
  },
  host: {
    flag: "host",
    arg: "HOST",
    env: "KEYGATE_HOST",
    default: "127.0.0.1",
    description: "address to listen on (`0.0.0.0` for all)",
    commands: SERVERS,
    blame: "both",
    type: z.string().regex(/^[A-Za-z0-9.:[\]-]{1,253}$/, { error: (issue) => `${quoted(issue.input)} is not a host name or IP address` }),
  },
  upstream: {
    flag: "upstream",
    arg: "URL",
    env: "KEYGATE_UPSTREAM",
    required: "the keygate server to ask, e.g. http://127.0.0.1:8080",
    requiredFor: ["shim"],
    unset: "`shim`: required; `serve`: no proxy",
    description: "`keygate shim`: the keygate server to ask; `keygate serve`: the Cube (E2B API) server to proxy to, which turns proxy mode on; `http://` or `https://`",
    commands: SERVERS,
    blame: "both",
    type: z.url({ protocol: /^https?$/, error: (issue) => `${quoted(issue.input)} is not an http:// or https:// URL` }),
  },
  proxyPort: {
    flag: "proxy-port",
    arg: "N",
    env: "KEYGATE_PROXY_PORT",
    unset: "`8090` when `--upstream` is given, else no proxy",
    description: "port of the proxy in front of `--upstream` (`0` = any free port)",
    commands: ["serve"],
    type: wholeNumber(0, 65535),
  },
  proxyHost: {
    flag: "proxy-host",
    arg: "HOST",
    env: "KEYGATE_PROXY_HOST",
    unset: "the same as `--host`",
    description: "address the proxy listens on",
    commands: ["serve"],
    type: z.string().regex(/^[A-Za-z0-9.:[\]-]{1,253}$/, { error: (issue) => `${quoted(issue.input)} is not a host name or IP address` }),
  },
  proxyTimeout: {
    env: "KEYGATE_PROXY_TIMEOUT",
    default: "60s",
    description: "the proxy's upstream must answer (headers, then each stretch of the body) within this, or 504 (`100ms`–`1h`)",
    commands: ["serve"],
    type: milliseconds(100, "500ms, 60s"),
  },
  orgMaxSandboxes: {
    env: "KEYGATE_ORG_MAX_SANDBOXES",
    unset: "unlimited",
    description: "proxy mode: live sandboxes per org (a key's own `--max-sandboxes` also applies); a create over it gets 429",
    commands: ["serve"],
    type: wholeNumber(0, 1_000_000_000),
  },
  shimPath: {
    flag: "shim-path",
    arg: "PATH",
    env: "KEYGATE_SHIM_PATH",
    default: "/verify",
    description: "path of the Cube callback (not one of the gateway, health or metrics paths)",
    commands: SERVERS,
    blame: "both",
    type: shimPath(),
  },
  credentialPriority: {
    flag: "credential-priority",
    arg: "ORDER",
    env: "KEYGATE_CREDENTIAL_PRIORITY",
    default: CREDENTIAL_PRIORITIES[0]!,
    description: "which credential header wins: `authorization,x-api-key` (Cube) or `x-api-key,authorization` (SandBase)",
    commands: SERVERS,
    blame: "both",
    type: credentialPriority(),
  },
  dataDir: {
    flag: "data-dir",
    arg: "DIR",
    env: "KEYGATE_DATA_DIR",
    default: ".keygate",
    description: "embedded database directory (unused with `DATABASE_URL`)",
    commands: STORAGE,
    type: z.string(),
  },
  databaseUrl: {
    flag: "database-url",
    arg: "URL",
    env: "DATABASE_URL",
    unset: "the embedded database",
    description: "`postgres://…`: use this Postgres server",
    commands: STORAGE,
    // Never echoed: it may hold a password.
    type: z.url({ protocol: /^postgres(ql)?$/, error: "not a postgres:// or postgresql:// URL" }),
  },
  dbPoolSize: {
    flag: "db-pool-size",
    arg: "N",
    env: "KEYGATE_DB_POOL_SIZE",
    default: "10",
    description: "Postgres connections",
    commands: STORAGE,
    type: wholeNumber(1, 200),
  },
  pgUser: {
    env: "PGUSER",
    unset: "`$USER`, else `postgres`",
    description: "the Postgres user when `DATABASE_URL` names none (as libpq)",
    commands: STORAGE,
    type: z.string(),
  },
  policyDir: {
    flag: "policy-dir",
    arg: "DIR",
    env: "KEYGATE_POLICY_DIR",
    unset: "`./policies` if there is one, else the policy keygate ships",
    description: "`model.conf` and `*.csv` rules",
    commands: [...RUNTIME, "policy"],
    type: z.string(),
  },
  dev: {
    flag: "dev",
    env: "KEYGATE_DEV",
    default: "false",
    description: "allow every request, with a loud warning at start and in `status` (never in production)",
    commands: RUNTIME,
    type: toggle(),
  },
  devAllowPublic: {
    flag: "dev-allow-public",
    arg: "PHRASE",
    env: "KEYGATE_DEV_ALLOW_PUBLIC",
    unset: "dev mode listens on loopback only",
    description: `dev mode on an address other than loopback (\`127.0.0.0/8\`, \`::1\`, \`localhost\`): exactly \`${DEV_ALLOW_PUBLIC_PHRASE}\``,
    details: "without it, `--dev` with `--host 0.0.0.0` (as the Dockerfile sets) or any other non-loopback address or proxy host is refused",
    commands: ["serve"],
    type: z.string().refine((text) => text === DEV_ALLOW_PUBLIC_PHRASE, { error: `must be exactly "${DEV_ALLOW_PUBLIC_PHRASE}" (dev mode allows every request from anyone who can reach it)` }).transform(() => true),
  },
  ownership: {
    flag: "ownership",
    arg: "MODE",
    env: "KEYGATE_OWNERSHIP",
    default: "auto",
    description: `sandbox ownership (the ledger, \`routes.yaml\` owned paths): ${oneOf(OWNERSHIP_MODES)}; \`auto\` = on in proxy mode (\`--upstream\`), off otherwise`,
    details: "on: an owned path is allowed only to keys of the owner's org and namespace (and org `*` keys); a sandbox nobody owns is not found",
    commands: RUNTIME,
    type: z
      .string()
      .toLowerCase()
      .pipe(z.enum(OWNERSHIP_MODES, { error: (issue) => `${quoted(issue.input)} must be one of ${OWNERSHIP_MODES.join(", ")}` })),
  },
  keyPrefix: {
    flag: "key-prefix",
    arg: "PREFIX",
    env: "KEYGATE_KEY_PREFIX",
    default: DEFAULT_KEY_PREFIX,
    description: "prefix of new keys (and of keys accepted); keys shaped like it are masked in logs",
    commands: [...RUNTIME, "shim"],
    blame: "both",
    type: z.string().refine(isValidKeyPrefix, { error: (issue) => `${quoted(issue.input)} must be 1-16 letters, digits, _ or -` }),
  },
  keyCacheTtl: {
    flag: "key-cache-ttl",
    arg: "DUR",
    env: "KEYGATE_KEY_CACHE_TTL",
    default: "5s",
    description: "how long a key record is cached (`0s` = off)",
    details: "over Postgres, the most a missed change notification can leave stale",
    commands: RUNTIME,
    type: duration(),
  },
  negativeCacheTtl: {
    env: "KEYGATE_NEGATIVE_CACHE_TTL",
    default: "2s",
    description: "how long an unknown key is remembered as unknown",
    commands: RUNTIME,
    type: duration(),
  },
  keyCacheSize: {
    env: "KEYGATE_KEY_CACHE_SIZE",
    default: "100000",
    description: "most cached keys",
    commands: RUNTIME,
    type: wholeNumber(1, 100_000_000),
  },
  usageFlushInterval: {
    env: "KEYGATE_USAGE_FLUSH_INTERVAL",
    default: "10s",
    description: "how often last-used times and usage counts are written (at least every 100 ms)",
    commands: RUNTIME,
    // A floor, so that "0s" cannot turn the flush into a busy loop.
    type: duration().transform((ms) => Math.max(ms, 100)),
  },
  auditRetention: {
    env: "KEYGATE_AUDIT_RETENTION",
    default: "90d",
    description: "how long audit rows are kept (`off` or `0s`: forever)",
    details: "older rows are deleted by `serve` in the background, at start and every hour, 1,000 at a time",
    commands: RUNTIME,
    // null: keep forever.
    type: parsedBy<number | null>((text) => {
      if (text === "off" || text === "0") return { ok: true, value: null };
      const result = parseDuration(text);
      return result.ok ? { ok: true, value: result.ms === 0 ? null : result.ms } : result;
    }),
  },
  defaultRateLimit: {
    flag: "default-rate-limit",
    arg: "N/WINDOW",
    env: "KEYGATE_DEFAULT_RATE_LIMIT",
    unset: "unlimited",
    description: "the limit of keys without one of their own, e.g. `100/1s`",
    commands: RUNTIME,
    type: rateLimit(),
  },
  redisUrl: {
    flag: "redis-url",
    arg: "URL",
    env: "REDIS_URL",
    unset: "per instance, in memory",
    description: "`redis://` or `rediss://`: keep rate-limit counters in this Redis, shared by every instance using it",
    commands: RUNTIME,
    // Never echoed: it may hold a password.
    type: z.url({ protocol: /^rediss?$/, hostname: /./, error: "not a redis:// or rediss:// URL with a host" }),
  },
  authFailLimit: {
    flag: "auth-fail-limit",
    arg: "N/WINDOW",
    env: "KEYGATE_AUTH_FAIL_LIMIT",
    default: formatRateLimit(DEFAULT_AUTH_FAIL_LIMIT),
    description: "failed-auth guard: invalid keys per address per window answered normally (then slowed; past twice as many, refused); `off` = no guard",
    commands: RUNTIME,
    type: rateLimit("off"),
  },
  authGuardExempt: {
    env: "KEYGATE_AUTH_GUARD_EXEMPT",
    default: DEFAULT_TRUSTED_PROXIES,
    description: "addresses the failed-auth guard never slows or refuses (`none` = guard every address)",
    details: "a gateway on this host should forward the client's address instead",
    commands: RUNTIME,
    type: addressList("none"),
  },
  clientIpHeader: {
    flag: "trusted-proxy-header",
    arg: "HEADER",
    env: "KEYGATE_CLIENT_IP_HEADER",
    unset: "the peer",
    description: "read the client's address from this header (`X-Forwarded-For`: right-most entry; `X-Real-IP`), only from a trusted proxy",
    commands: SERVERS,
    blame: "both",
    type: z
      .string()
      .toLowerCase()
      .regex(/^[a-z0-9-]{1,64}$/, { error: (issue) => `${quoted(issue.input)} is not a header name` }),
  },
  trustedProxies: {
    env: "KEYGATE_TRUSTED_PROXIES",
    default: DEFAULT_TRUSTED_PROXIES,
    description: "comma list of IPs/CIDRs whose client-IP header is believed",
    commands: SERVERS,
    type: addressList(),
  },
  shutdownTimeout: {
    env: "KEYGATE_SHUTDOWN_TIMEOUT",
    default: "10s",
    description: "in-flight requests get this long after SIGTERM/SIGINT",
    commands: SERVERS,
    type: duration(),
  },
  policyReloadDebounce: {
    env: "KEYGATE_POLICY_RELOAD_DEBOUNCE",
    default: "200ms",
    description: "quiet period after a policy-dir change before reloading (`0ms`–`1h`)",
    commands: ["serve"],
    type: milliseconds(0, "200ms, 1s"),
  },
  logLevel: {
    flag: "log-level",
    arg: "LEVEL",
    env: "KEYGATE_LOG_LEVEL",
    default: "info",
    description: `the lowest level logged: ${oneOf(LOG_LEVELS)} (JSON lines on stderr)`,
    commands: SERVERS,
    type: z
      .string()
      .refine((text) => LOG_LEVELS.includes(text.toLowerCase() as LogLevel), {
        error: (issue) => `${quoted(issue.input)} must be one of ${LOG_LEVELS.join(", ")}`,
      })
      .transform((text) => text.toLowerCase() as LogLevel),
  },
  decisionLog: {
    flag: "decision-log",
    arg: "FILE",
    env: "KEYGATE_DECISION_LOG",
    unset: "none",
    description: "write the decision log (JSON lines) to this file, appending; `-` = stdout",
    commands: ["serve"],
    type: z.string(),
  },
  decisionLogMode: {
    env: "KEYGATE_DECISION_LOG_MODE",
    default: "all",
    description: `which decisions the decision log holds: ${oneOf(DECISION_LOG_MODES)}`,
    commands: ["serve"],
    type: z
      .string()
      .toLowerCase()
      .pipe(z.enum(DECISION_LOG_MODES, { error: (issue) => `${quoted(issue.input)} must be one of ${DECISION_LOG_MODES.join(", ")}` })),
  },
  decisionLogSample: {
    env: "KEYGATE_DECISION_LOG_SAMPLE",
    default: "0.1",
    description: "`sampled` mode: the fraction (0–1) of allows logged; every deny is",
    commands: ["serve"],
    type: z
      .string()
      .refine((text) => /^\d*\.?\d+$/.test(text.trim()) && Number(text) >= 0 && Number(text) <= 1, {
        error: (issue) => `${quoted(issue.input)} is not a fraction from 0 to 1 (e.g. 0.05)`,
      })
      .transform(Number),
  },
  metrics: {
    env: "KEYGATE_METRICS",
    default: "true",
    description: "serve Prometheus metrics at `/metrics` (`false` = no `/metrics`)",
    commands: ["serve"],
    type: toggle(),
  },
  maxHeaderBytes: {
    env: "KEYGATE_MAX_HEADER_BYTES",
    default: "16384",
    description: "request line and headers (HTTP/1.1), header list (HTTP/2); larger: 431, or `RESOURCE_EXHAUSTED` (1024 – 1 MiB)",
    commands: ["serve"],
    type: wholeNumber(1024, 1024 * 1024),
  },
  headersTimeout: {
    env: "KEYGATE_HEADERS_TIMEOUT",
    default: "15s",
    description: "request line and headers must arrive within this, or 408; also a new connection's first bytes (at most 10 s)",
    details: "no longer than `KEYGATE_REQUEST_TIMEOUT` (the default is cut to it)",
    commands: ["serve"],
    type: milliseconds(100, "500ms, 30s"),
  },
  requestTimeout: {
    env: "KEYGATE_REQUEST_TIMEOUT",
    default: "30s",
    description: "a whole HTTP/1.1 request must arrive within this, or 408 (`100ms`–`1h`)",
    commands: ["serve"],
    type: milliseconds(100, "500ms, 30s"),
  },
  http2IdleTimeout: {
    env: "KEYGATE_HTTP2_IDLE_TIMEOUT",
    default: "65s",
    description: "an HTTP/2 connection with no open stream, or a streaming call (`AuthorizeStream`) with no message either way, for this long is closed (`100ms`–`1h`)",
    details: "as long as HTTP/1.1 keeps an idle keep-alive connection; a new HTTP/2 connection must open its first stream within `KEYGATE_HEADERS_TIMEOUT` (at most 10 s)",
    commands: ["serve"],
    type: milliseconds(100, "500ms, 65s"),
  },
  http2MaxStreams: {
    env: "KEYGATE_HTTP2_MAX_STREAMS",
    default: "100",
    description: "streams open at once on one HTTP/2 connection (`SETTINGS_MAX_CONCURRENT_STREAMS`); one more is refused (`REFUSED_STREAM`)",
    commands: ["serve"],
    type: wholeNumber(1, 10_000),
  },
  maxConnections: {
    env: "KEYGATE_MAX_CONNECTIONS",
    unset: "the open-file limit (`ulimit -n`) less the database's share (the pool + 1 over Postgres, 256 for PGlite's files) and 64 for the process's own, at least 32; in proxy mode a third of that per port",
    description: "connections open at once on each listening port; at the cap a new connection closes the longest-idle one, or is closed itself when none is idle",
    details: "the cap chosen is logged at start (`max_connections`)",
    commands: ["serve"],
    type: wholeNumber(1, 1_000_000),
  },
  directAuthorize: {
    env: "KEYGATE_DIRECT_AUTHORIZE",
    default: "true",
    description: "answer plain unary Authorize calls (Connect, gRPC; no compression) without the connect-node adapter",
    details: "same answers, a fraction of the cost; `false` sends every call through the adapter",
    commands: ["serve"],
    type: toggle(),
  },
  cubeWebhookSecret: {
    env: "KEYGATE_CUBE_WEBHOOK_SECRET",
    unset: "off: `/webhooks/cube` answers 404",
    description: "Cube's webhook signing secret (its `WEBHOOK_SECRET`): turns on `POST /webhooks/cube`, where a signed `sandbox.deleted` releases the sandbox's ownership entry",
    details: "at least 16 characters; never echoed",
    commands: ["serve"],
    type: z.string().refine((text) => text.length >= 16, { error: "must be at least 16 characters (the secret Cube signs its webhooks with, WEBHOOK_SECRET)" }),
  },
  apiKey: {
    flag: "api-key",
    arg: "KEY",
    env: "KEYGATE_API_KEY",
    unset: "none: `--server` needs it",
    description: "with `--server URL`: the admin key the CLI manages keys and reads the audit log with, over ManageKey",
    details: "never echoed; the variable keeps it out of the shell's history and `ps`",
    commands: KEY_COMMANDS,
    type: z.string(),
  },
  checkKey: {
    flag: "key",
    arg: "KEY",
    env: "KEYGATE_CHECK_KEY",
    unset: "none: `check` needs it",
    description: "`keygate check`: the key to decide for",
    details: "never echoed; the variable keeps it out of the shell's history and `ps`",
    commands: ["check"],
    type: z.string(),
  },
} as const satisfies Record<string, SettingSpec>;

export type SettingName = keyof typeof SETTINGS;
export const SETTING_NAMES = Object.keys(SETTINGS) as SettingName[];

/**
 * The standard OpenTelemetry variables, read by telemetry/tracing-config.ts
 * (which speaks their spec, not this schema); listed here for the docs.
 */
export interface TracingVariable {
  env: string;
  default?: string;
  unset?: string;
  description: string;
}

export const TRACING_VARIABLES: readonly TracingVariable[] = [
  { env: "OTEL_TRACES_EXPORTER", unset: "off, unless an endpoint below is set", description: "`otlp` turns tracing on, `none` off; no other exporter is built in" },
  { env: "OTEL_EXPORTER_OTLP_ENDPOINT", default: new URL(DEFAULT_TRACES_ENDPOINT).origin, description: "the collector's OTLP/HTTP base URL (`/v1/traces` is appended); setting it turns tracing on" },
  { env: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", unset: "from `OTEL_EXPORTER_OTLP_ENDPOINT`", description: "the full URL spans are POSTed to; setting it turns tracing on" },
  { env: "OTEL_EXPORTER_OTLP_PROTOCOL", default: "http/protobuf", description: "`http/protobuf` or `http/json` (`grpc` is not built in)" },
  { env: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", unset: "from `OTEL_EXPORTER_OTLP_PROTOCOL`", description: "the same, for traces only" },
  { env: "OTEL_SERVICE_NAME", default: DEFAULT_SERVICE_NAME, description: "`service.name` of every span" },
  { env: "OTEL_RESOURCE_ATTRIBUTES", unset: "none", description: "`key=value,…` (values percent-encoded) on every span" },
  { env: "OTEL_TRACES_SAMPLER", default: "parentbased_always_on", description: `one of ${oneOf(SAMPLERS)}` },
  { env: "OTEL_TRACES_SAMPLER_ARG", default: "1", description: "the ratio (0–1) of the `*traceidratio` samplers" },
  { env: "OTEL_SDK_DISABLED", default: "false", description: "`true`: no tracing, whatever else is set" },
];

/** Every environment variable keygate reads (for the deploy files' test, among others). */
export const ENV_VARIABLES: readonly string[] = [
  ...Object.values(SETTINGS as Record<string, SettingSpec>).flatMap((spec) => (spec.env === undefined ? [] : [spec.env])),
  ...TRACING_VARIABLES.map((variable) => variable.env),
];

/** The parseArgs options of the flags a command reads: `keygate <command>` accepts exactly these (besides the common ones). */
export function flagOptions(command: Command): Record<string, { type: "string" | "boolean" }> {
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const spec of Object.values(SETTINGS as Record<string, SettingSpec>)) {
    if (spec.flag !== undefined && spec.commands.includes(command)) options[spec.flag] = { type: spec.arg === undefined ? "boolean" : "string" };
  }
  return options;
}
