import { mkdir } from "node:fs/promises";
import http from "node:http";
import { performance } from "node:perf_hooks";
import { readRuntimeConfig, readServeConfig, readShimConfig, readStorageConfig, servedOwnership } from "../config/config.js";
import { flagOptions } from "../config/settings.js";
import { openStore } from "../core/db/connect.js";
import { acquireLock, type DataDirLock } from "../core/db/data-dir-lock.js";
import { migrateToLatest } from "../core/db/migrate.js";
import { createLogger, errorFields, type Logger } from "../telemetry/logger.js";
import { currentRequestId, noteDecision, withRequestIds } from "../http/request-id.js";
import { openRuntime, storeTargetFor, type RuntimeOptions } from "../server/runtime.js";
import { formatRateLimit } from "../core/ratelimit/rate-limit.js";
import { startServer, type ServerStatus } from "../server/serve.js";
import { createCubeCallbackHandler, isCallbackUrl } from "../entries/cube/cube-callback.js";
import { createRemoteAuthorizer } from "../server/remote-authorizer.js";
import { SharedDatabaseError } from "../server/server-registry.js";
import { openDecisionLog, type DecisionLog } from "../telemetry/decision-log.js";
import { CliError, configOrThrow, help, parse } from "./args.js";
import { connectLocal, openError, securedDataDir } from "./connect.js";
import { createOut } from "./output.js";

const DEV_WARNING = [
  "",
  "  ############################################################",
  "  #  WARNING: keygate is in DEV MODE (--dev).                #",
  "  #  EVERY request is ALLOWED, with or without a key, and    #",
  "  #  anyone who can reach it may manage keys.                #",
  "  #  Never run dev mode in production.                       #",
  "  ############################################################",
  "",
].join("\n");

/** After KEYGATE_SHUTDOWN_TIMEOUT has closed the connections, how long closing the rest may take. */
const SHUTDOWN_CLEANUP_MS = 5_000;

function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (signal: NodeJS.Signals) => {
      process.off("SIGTERM", on);
      process.off("SIGINT", on);
      resolve(signal);
    };
    process.on("SIGTERM", on);
    process.on("SIGINT", on);
  });
}

async function lockDataDir(dataDir: string, role: string, log: Logger): Promise<DataDirLock> {
  await securedDataDir(dataDir, (message) => log.warn(message));
  const result = await acquireLock(dataDir, role);
  if (result.ok) return result.lock;
  const { owner } = result;
  throw new CliError(
    `data dir ${dataDir} is in use by pid ${owner.pid} on ${owner.host} (${owner.role}, since ${owner.since}).\n` +
      `  The embedded database allows one process per data dir: stop that process, pass another --data-dir,\n` +
      `  or set DATABASE_URL to run many instances over one Postgres.`,
  );
}

export async function runServe(args: string[]): Promise<number> {
  // Every flag the serve settings have (config/settings.ts), so the help and the parser agree.
  const { flags } = parse(args, flagOptions("serve"), 0);
  if (flags.help) return help();
  const config = configOrThrow(readServeConfig(flags, process.env, process.cwd()));
  const log = createLogger(config.logLevel, undefined, { keyPrefix: config.keyPrefix });
  const debug = config.logLevel === "debug";
  const started = performance.now();
  const lock = config.databaseUrl ? undefined : await lockDataDir(config.dataDir, "server", log);
  let decisionLog: DecisionLog | undefined;
  try {
    const { target, mode, sample } = config.decisionLog;
    if (target !== undefined && mode !== "none") {
      decisionLog = await openDecisionLog(target, {
        mode,
        sample,
        keyPrefix: config.keyPrefix,
        onDropped: (count) => log.warn("decision log behind, lines dropped", { dropped: count, total_dropped: decisionLog?.dropped() }),
        onError: (error) => log.error("decision log write failed; decisions are no longer logged", errorFields(error)),
      }).catch((error: unknown) => {
        throw new CliError(`cannot open the decision log ${target}: ${(error as Error).message}`, { cause: error });
      });
    }
    const record = decisionLog?.record;
    // At debug, each request's log line names its decision (request-id.ts).
    const onDecision: RuntimeOptions["onDecision"] = debug
      ? (input, decision) => {
          record?.(input, decision);
          noteDecision(input, decision);
        }
      : record;
    const runtime = await openRuntime({ ...config, ownership: servedOwnership(config) }, {
      // The core knows the request id only at debug level (request-id.ts); the edges log theirs.
      onError: (error) => log.error("decision failed, denied", { ...errorFields(error), ...(debug && { request_id: currentRequestId() }) }),
      log,
      ...(onDecision && { onDecision }),
    }).catch((error: unknown) => {
      throw openError(config, error);
    });
    const server = await startServer(config, runtime, log, lock).catch(async (error: unknown) => {
      await runtime.close();
      if (error instanceof SharedDatabaseError) throw new CliError(error.message, { cause: error });
      throw new CliError(`cannot listen on ${config.host}:${config.port}: ${(error as Error).message}`, { cause: error });
    });
    // SIGHUP reloads the policy now (the outcome is logged); without a handler it would end the process.
    const onHangup = () => void server.reloadPolicy("SIGHUP");
    process.on("SIGHUP", onHangup);
    if (config.dev) {
      process.stderr.write(DEV_WARNING + "\n");
      log.warn("DEV MODE: every request is allowed");
    }
    // Handlers first: whoever reads "listening" may send SIGTERM at once, and must get a clean stop.
    const stopSignal = waitForSignal();
    const policy = runtime.policy().info;
    log.info("keygate listening", {
      address: `${server.host}:${server.port}`,
      database: runtime.store.kind,
      location: runtime.store.location,
      migrations_applied: runtime.migration.applied.length,
      policy_version: policy.version,
      policy_rules: policy.rules,
      shim_path: config.shimPath,
      max_connections: server.maxConnections,
      ...(server.proxy && { proxy: `${server.proxy.host}:${server.proxy.port}`, upstream: server.proxy.upstream }),
      ownership: runtime.ownership,
      cube_webhook: config.cubeWebhookSecret ? "/webhooks/cube" : "off",
      rate_limits: config.redisUrl ? "redis" : "memory",
      default_rate_limit: config.defaultRateLimit ? formatRateLimit(config.defaultRateLimit) : null,
      auth_fail_limit: config.authFailLimit ? formatRateLimit(config.authFailLimit) : "off",
      decision_log: decisionLog ? { target: config.decisionLog.target, mode: config.decisionLog.mode } : null,
      dev: config.dev,
      startup_ms: Math.round(performance.now() - started),
    });
    const signal = await stopSignal;
    const stopping = performance.now();
    log.info("shutting down", { signal, timeout_ms: config.shutdownTimeoutMs });
    process.off("SIGHUP", onHangup);
    // The listener force-closes what is left at the timeout; this bounds the rest (database,
    // usage flush, decision log) so that an orchestrator never has to SIGKILL a stuck process.
    const deadline = setTimeout(() => {
      log.error("shutdown did not finish in time, exiting", { timeout_ms: config.shutdownTimeoutMs + SHUTDOWN_CLEANUP_MS });
      process.exit(1);
    }, config.shutdownTimeoutMs + SHUTDOWN_CLEANUP_MS);
    deadline.unref();
    await server.stop();
    await runtime.close();
    await decisionLog?.close();
    clearTimeout(deadline);
    if (decisionLog && decisionLog.dropped() > 0) log.warn("decision log lines dropped", { total_dropped: decisionLog.dropped() });
    log.info("stopped", { shutdown_ms: Math.round(performance.now() - stopping) });
    return 0;
  } finally {
    await decisionLog?.close();
    await lock?.release();
  }
}

export async function runShim(args: string[]): Promise<number> {
  const { flags } = parse(args, flagOptions("shim"), 0);
  if (flags.help) return help();
  const config = configOrThrow(readShimConfig(flags, process.env));
  const log = createLogger(config.logLevel, undefined, { keyPrefix: config.keyPrefix });
  const debug = config.logLevel === "debug";
  const authorize = createRemoteAuthorizer(config.upstream, (error) =>
    log.error("upstream Authorize failed, denied", { ...errorFields(error), ...(debug && { request_id: currentRequestId() }) }),
  );
  const handle = createCubeCallbackHandler({ authorize, credentialPriority: config.credentialPriority, clientIp: config.clientIp });
  const server = http.createServer(
    { requestTimeout: 30_000, headersTimeout: 15_000 },
    withRequestIds((req, res) => {
      if (isCallbackUrl(req.url, config.shimPath)) {
        void handle(req, res);
        return;
      }
      const body = JSON.stringify({ code: 404, message: `not found: the callback is ${config.shimPath}` });
      res.writeHead(404, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
      res.end(body);
    }, log),
  );
  await new Promise<void>((resolve, reject) => {
    server.once("error", (error) => reject(new CliError(`cannot listen on ${config.host}:${config.port}: ${error.message}`)));
    server.listen(config.port, config.host, () => resolve());
  });
  const address = server.address() as { port: number; address: string };
  const stopSignal = waitForSignal();
  log.info("keygate shim listening", { address: `${address.address}:${address.port}`, upstream: config.upstream, shim_path: config.shimPath });
  const signal = await stopSignal;
  log.info("shutting down", { signal });
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
    setTimeout(() => server.closeAllConnections(), config.shutdownTimeoutMs).unref();
  });
  return 0;
}

export async function runMigrate(args: string[]): Promise<number> {
  const { flags } = parse(args, {}, 0);
  if (flags.help) return help();
  const out = createOut(Boolean(flags.json));
  const config = configOrThrow(readStorageConfig(flags, process.env, process.cwd()));
  let lock: DataDirLock | undefined;
  if (!config.databaseUrl) {
    await securedDataDir(config.dataDir, (message) => process.stderr.write(`keygate: ${message}\n`));
    const result = await acquireLock(config.dataDir, "cli migrate");
    if (!result.ok) {
      const message = `a keygate server (pid ${result.owner.pid}) holds ${config.dataDir}; it applied every migration when it started`;
      if (out.json) out.print(JSON.stringify({ applied: [], note: message }));
      else out.print(message);
      return 0;
    }
    lock = result.lock;
  }
  try {
    const store = await openStore(storeTargetFor(config));
    try {
      const outcome = await migrateToLatest(store.db);
      if (out.json) out.print(JSON.stringify({ database: store.kind, location: store.location, ...outcome }));
      else {
        out.print(`database: ${store.kind} (${store.location})`);
        out.print(outcome.applied.length > 0 ? `applied: ${outcome.applied.join(", ")}` : "already up to date");
        out.print(`current: ${outcome.current}`);
      }
      return 0;
    } finally {
      await store.close();
    }
  } finally {
    await lock?.release();
  }
}

export async function runStatus(args: string[]): Promise<number> {
  const { flags } = parse(args, {}, 0);
  if (flags.help) return help();
  const out = createOut(Boolean(flags.json));
  const config = configOrThrow(readRuntimeConfig(flags, process.env, process.cwd()));
  const connection = await connectLocal(config, "status");
  try {
    const status = await connection.status();
    if (out.json) {
      out.print(JSON.stringify(status, null, 2));
      return 0;
    }
    if (status.dev) out.print(DEV_WARNING);
    const running = status.servers
      ? status.servers.map((s) => `pid ${s.pid}, on ${s.listen}, since ${s.since}${s.dev ? " (DEV MODE)" : ""}`).join("; ")
      : `pid ${status.pid}, on ${status.listen}, since ${status.startedAt}`;
    out.print(`server:    ${status.server === "running" ? `running, ${running}` : status.server}`);
    out.print(`mode:      ${status.dev ? "DEV MODE — every request is allowed" : "enforcing"}`);
    out.print(`database:  ${status.database.kind} (${status.database.location}), migration ${status.database.migration}`);
    out.print(`policy:    ${status.policy.dir} [${status.policy.files.join(", ")}], ${status.policy.rules} rules, version ${status.policy.version}`);
    const reload = status.policy.reload;
    if (reload) {
      const count = `${reload.reloads} reload${reload.reloads === 1 ? "" : "s"}`;
      out.print(`loaded:    ${status.policy.loadedAt} (${count} since start; ${reload.watching ? "watching for changes" : "NOT watching the policy dir: SIGHUP reloads"})`);
      if (reload.lastError) {
        out.print(`reload:    FAILED at ${reload.lastError.at} (${reload.lastError.trigger}): ${reload.lastError.message}`);
        out.print(`           still serving version ${status.policy.version}; fix the policy and save it again, or send SIGHUP`);
      }
    }
    out.print(`keys:      ${status.keys.total} (${status.keys.enabled} enabled)`);
    if (status.ownership) {
      const live = Object.entries(status.ownership.live).map(([kind, n]) => `${n} ${kind}`).join(", ");
      out.print(`ownership: ${status.ownership.enforced ? "on" : "off"}${live ? ` (${live} in the ledger)` : " (routes.yaml declares nothing owned)"}`);
    }
    out.print(`rate limits: ${rateLimitLine(status.rateLimits)}`);
    if (status.audit) out.print(`audit:     ${auditLine(status.audit)}`);
    return 0;
  } finally {
    await connection.close();
  }
}

function auditLine(audit: ServerStatus["audit"]): string {
  const kept = audit.retention ? `rows kept ${audit.retention}, older ones pruned hourly by serve` : "rows kept forever (KEYGATE_AUDIT_RETENTION=off)";
  const lost = audit.dropped + audit.sampledOut;
  return lost > 0 ? `${kept}; ${lost} refused attempts not written since start (${audit.dropped} dropped, ${audit.sampledOut} sampled away)` : kept;
}

function rateLimitLine(limits: ServerStatus["rateLimits"]): string {
  const fallback = `default ${limits.default ?? "none (keys without a limit are unlimited)"}`;
  if (limits.backend === "memory") return `per instance, in memory; ${fallback}`;
  if (limits.shared) return `redis ${limits.redis}, shared by every instance using it; ${fallback}`;
  return `redis ${limits.redis} unreachable since ${limits.unreachableSince}, using per-instance limits${limits.lastError ? ` (${limits.lastError})` : ""}; ${fallback}`;
}
