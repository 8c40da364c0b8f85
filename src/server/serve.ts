import { mkdtemp, rm, chmod } from "node:fs/promises";
import http from "node:http";
import { createHash } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import type { ServeConfig } from "../config/config.js";
import type { DataDirLock } from "../core/db/data-dir-lock.js";
import { countKeys } from "../core/keys/key.repository.js";
import { watchPolicy, type PolicyWatcher, type ReloadOutcome } from "../core/policy/policy-watcher.js";
import type { Logger } from "../telemetry/logger.js";
import { errorFields } from "../telemetry/logger.js";
import { requestIdOf, setRequestIdHeader, withRequestIdValue, withRequestIds } from "../http/request-id.js";
import type { Runtime } from "./runtime.js";
import { formatRateLimit } from "../core/ratelimit/rate-limit.js";
import { formatDuration } from "../core/time/duration.js";
import type { RateLimiterHealth } from "../core/ratelimit/rate-limiter.js";
import { createCubeCallbackHandler } from "../entries/cube/cube-callback.js";
import { headerReader } from "../http/header-reader.js";
import { forwardAuthEndpoints } from "../entries/gateway/forward-auth.js";
import { listenForKeyChanges, type KeyChangeListener } from "./key-change-listener.js";
import { operationsEndpoints } from "../entries/operations/operations-endpoints.js";
import { createReadinessCheck } from "../core/authorize/readiness.js";
import { createListener, urlPath, type Handler, type ListenerLimits } from "../http/listener.js";
import { defaultMaxConnections, openFileLimit } from "../http/connection-cap.js";
import { refuseSharedDev, serverApplicationName, type ServerEntry } from "./server-registry.js";
import { requestSource } from "../http/client-ip.js";
import { sourceContextValues } from "../http/rpc-context.js";
import { createAuthorizeCall } from "../entries/rpc/authorize-call.js";
import { createDirectAuthorize } from "../entries/rpc/direct-authorize.js";
import { createRoutes, SERVED_SERVICES, webhookEndpoints } from "./routes.js";
import { createSandboxProxy, type SandboxProxy } from "../entries/proxy/sandbox-proxy.js";
import type { Listener } from "../http/listener.js";

/** A key's own live-sandbox limit, from the key record the decision just cached. */
function keyMaxSandboxes(runtime: Runtime): (credential: string) => Promise<number | null> {
  return async (credential) => {
    const found = await runtime.lookupKey(credential);
    return found.status === "ok" ? (found.key.maxSandboxes ?? null) : null;
  };
}

export interface RunningServer {
  port: number;
  host: string;
  /** Proxy mode's listener, when --upstream is given. */
  proxy: { port: number; host: string; upstream: string } | undefined;
  /** The local control socket (PGlite only), for the CLI on this machine. */
  controlSocket: string | undefined;
  /** Connections open at once per listening port (KEYGATE_MAX_CONNECTIONS, or derived from the open-file limit). */
  maxConnections: number;
  /** Reloads the policy now (SIGHUP), logging the outcome as a file change would. */
  reloadPolicy(trigger: string): Promise<ReloadOutcome>;
  stop(): Promise<void>;
}

export const CONTROL_SOCKET = "keygate.sock";
/** Authorize and ManageKey requests are small; larger bodies are refused before decoding. */
const RPC_READ_MAX_BYTES = 64 * 1024;
/**
 * The plain HTTP endpoints (Cube callback, gateways, probes) read no body and
 * drain whatever comes; a declared body larger than this is refused (413)
 * rather than read and thrown away.
 */
const ENDPOINT_BODY_MAX_BYTES = 64 * 1024;

/**
 * The public port's requests: the Cube callback, plain unary Authorize calls
 * answered directly, and everything else (gRPC, Connect, gRPC-Web) through
 * the connect-node adapter.
 */
export function createRequestHandler(
  config: Pick<ServeConfig, "credentialPriority" | "clientIp" | "shimPath" | "directAuthorize"> & Partial<Pick<ServeConfig, "cubeWebhookSecret">>,
  runtime: Runtime,
  log: Logger,
  shutdown?: AbortSignal,
): Handler {
  const routes = createRoutes(runtime, config.credentialPriority, log, false, { clientIp: config.clientIp, ...(shutdown && { shutdown }) });
  const rpc = connectNodeAdapter({ routes, readMaxBytes: RPC_READ_MAX_BYTES, contextValues: withRequestIdValue(sourceContextValues(config.clientIp)) });
  // Gateways call unary Authorize once per request of theirs: the plain shapes skip the adapter.
  const direct = config.directAuthorize
    ? createDirectAuthorize({
        call: createAuthorizeCall(runtime.authorize, false),
        sourceOf: (req) => requestSource(config.clientIp, req),
        readMaxBytes: RPC_READ_MAX_BYTES,
        onError: (error, req) => log.error("authorize error", { ...errorFields(error), request_id: requestIdOf(req) }),
      })
    : undefined;
  const shim = createCubeCallbackHandler({
    authorize: runtime.authorize,
    credentialPriority: config.credentialPriority,
    clientIp: config.clientIp,
    onError: (error, req) => log.error("shim error", { ...errorFields(error), request_id: requestIdOf(req) }),
  });
  // Plain HTTP endpoints by exact path (the query string is ignored): the Cube callback, and
  // alongside it any probe or gateway endpoint. Every other request is an RPC.
  const shimEndpoint: Handler = (req, res) => void shim(req, res);
  const endpoints = new Map<string, Handler>([[config.shimPath, shimEndpoint]]);
  // nginx auth_request and Traefik forwardAuth, at fixed paths (/auth/nginx, /auth/traefik).
  for (const [path, handler] of forwardAuthEndpoints(config, runtime.authorize, log)) endpoints.set(path, handler);
  // /healthz, /readyz (503 once shutdown begins) and /metrics.
  const operations = operationsEndpoints({
    readiness: createReadinessCheck({ db: runtime.store.db, policyHolder: runtime.policyHolder }),
    ...(runtime.metrics && { metrics: runtime.metrics }),
    ...(shutdown && { shutdown }),
    onError: (error) => log.error("operations endpoint error", errorFields(error)),
    onNotReady: (state) => log.warn("readiness check failing", { database: state.checks.database, policy: state.checks.policy }),
  });
  for (const [path, handler] of operations) endpoints.set(path, handler);
  // Webhooks (/webhooks/cube) read a body and cap it themselves.
  const webhooks = new Set<Handler>();
  for (const [path, handler] of webhookEndpoints(runtime, config, log)) {
    endpoints.set(path, handler);
    webhooks.add(handler);
  }
  // Every request gets an id (x-request-id in and out); at debug level, a log line when it ends.
  // The Cube callback and the direct Authorize path put x-request-id in their own writeHead (the
  // fast path); everything else gets it set here first.
  return withRequestIds<Parameters<Handler>[0], Parameters<Handler>[1]>(
    (req, res) => {
      const endpoint = endpoints.get(urlPath(req.url));
      if (endpoint && !webhooks.has(endpoint) && declaredLength(req) > ENDPOINT_BODY_MAX_BYTES) {
        setRequestIdHeader(req, res);
        refuseBody(req, res);
      } else if (endpoint === shimEndpoint) endpoint(req, res);
      else if (endpoint) {
        setRequestIdHeader(req, res);
        endpoint(req, res);
      } else if (!direct?.(req, res)) {
        setRequestIdHeader(req, res);
        rpc(req as http.IncomingMessage, res as http.ServerResponse);
      }
    },
    log,
    "handler",
  );
}

/** The Content-Length a request declares (0 if none), read from the raw list: the Cube callback never builds `req.headers`. */
function declaredLength(req: Parameters<Handler>[0]): number {
  return Number(headerReader(req)("content-length")) || 0;
}

/** 413 for a body an endpoint would only have drained; over HTTP/1.1 the connection closes rather than read it. */
function refuseBody(req: Parameters<Handler>[0], res: Parameters<Handler>[1]): void {
  const body = JSON.stringify({ code: 413, message: `request body larger than ${ENDPOINT_BODY_MAX_BYTES} bytes (this endpoint reads no body)` });
  if (req.httpVersionMajor === 1) (res as http.ServerResponse).shouldKeepAlive = false;
  res.writeHead(413, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), "cache-control": "no-store" });
  res.end(body);
  req.resume();
}

/** Client- and bidi-streaming RPCs of every served service: the listener gives them an idle timeout, not a request deadline. */
const STREAMING_PATHS: ReadonlySet<string> = new Set(
  SERVED_SERVICES.flatMap((service) => service.methods.filter((m) => m.methodKind === "client_streaming" || m.methodKind === "bidi_streaming").map((m) => `/${service.typeName}/${m.name}`)),
);

/** The public port's limits; the connection cap derived from the open-file limit unless KEYGATE_MAX_CONNECTIONS is given. */
export function listenerLimits(config: ServeConfig): ListenerLimits & { maxConnections: number } {
  return {
    maxHeaderBytes: config.maxHeaderBytes,
    requestTimeoutMs: config.requestTimeoutMs,
    headersTimeoutMs: config.headersTimeoutMs,
    http2IdleTimeoutMs: config.http2IdleTimeoutMs,
    http2MaxStreams: config.http2MaxStreams,
    maxConnections:
      config.maxConnections ?? defaultMaxConnections({ fdLimit: openFileLimit(), dbPoolSize: config.databaseUrl ? config.dbPoolSize : undefined, proxy: config.proxy !== undefined }),
    streamingPaths: STREAMING_PATHS,
  };
}

/**
 * Serves Authorize and ManageKey (gRPC, Connect, gRPC-Web) and the Cube
 * callback on one address; on PGlite, also a local control socket that the
 * CLI uses while the server holds the data dir.
 */
export async function startServer(config: ServeConfig, runtime: Runtime, log: Logger, lock?: DataDirLock): Promise<RunningServer> {
  // Aborted when stop() begins: gRPC health turns NOT_SERVING and its Watch streams end.
  const shutdown = new AbortController();
  const handler = createRequestHandler(config, runtime, log, shutdown.signal);
  // Before listening: from the first request on, key changes and policy edits made elsewhere are seen.
  let keyChanges: KeyChangeListener | undefined;
  if (config.databaseUrl) {
    keyChanges = await listenForKeyChanges({ url: config.databaseUrl, defaultUser: config.defaultDbUser, cache: runtime.cache, resourceCache: runtime.resources.cache, log });
    // Named before it looks for others (and before it listens): dev mode never shares a database.
    const self = { pid: process.pid, dev: runtime.dev, listen: `${config.host}:${config.port}` };
    await keyChanges.identify(serverApplicationName(self));
    try {
      await refuseSharedDev(runtime.store.db, self);
    } catch (error) {
      await keyChanges.close();
      throw error;
    }
  }
  const policyWatcher = await watchPolicy({
    dir: config.policyDir,
    holder: runtime.policyHolder,
    debounceMs: config.policyReloadDebounceMs,
    onOutcome: (outcome) => logReload(log, outcome),
    onWatchError: (error) => log.warn("policy directory not watched", { dir: config.policyDir, ...errorFields(error) }),
  });
  const limits = listenerLimits(config);
  const listener = createListener(handler, limits);
  const address = await listener.listen(config.port, config.host).catch(async (error: unknown) => {
    policyWatcher.close();
    await keyChanges?.close();
    throw error;
  });
  // Proxy mode: a second listener, same limits, in front of Cube; decided by the same runtime.
  let proxy: { sandboxes: SandboxProxy; listener: Listener; address: { port: number; host: string } } | undefined;
  if (config.proxy) {
    const sandboxes = createSandboxProxy({
      upstream: config.proxy.upstream,
      timeoutMs: config.proxy.timeoutMs,
      authorize: runtime.authorize,
      credentialPriority: config.credentialPriority,
      clientIp: config.clientIp,
      ledger: runtime.resources,
      routes: () => runtime.policy().routes,
      ownership: runtime.ownership,
      keyMaxSandboxes: keyMaxSandboxes(runtime),
      orgMaxSandboxes: config.proxy.orgMaxSandboxes,
      log,
    });
    const proxyListener = createListener(withRequestIds((req, res) => sandboxes.handle(req, res), log, "handler"), limits, (req, socket, head) => sandboxes.upgrade(req, socket, head));
    try {
      proxy = { sandboxes, listener: proxyListener, address: await proxyListener.listen(config.proxy.port, config.proxy.host) };
    } catch (error) {
      await listener.close(0);
      await sandboxes.close();
      policyWatcher.close();
      await keyChanges?.close();
      throw new Error(`proxy: cannot listen on ${config.proxy.host}:${config.proxy.port}: ${(error as Error).message}`, { cause: error });
    }
    if (!runtime.ownership) log.warn("proxy mode with KEYGATE_OWNERSHIP=off: sandbox lists are not filtered and any org's key may address any sandbox");
  }

  // Over Postgres, `keygate status` finds this server by its connection's name.
  await keyChanges?.identify(serverApplicationName({ pid: process.pid, dev: runtime.dev, listen: `${address.host}:${address.port}` }));

  let control: { server: http.Server; path: string; cleanup: () => Promise<void> } | undefined;
  if (!config.databaseUrl) {
    control = await startControlSocket(config.dataDir, runtime, config, `${address.host}:${address.port}`, log, policyWatcher);
    await lock?.update({ socket: control.path, role: "server" });
  }

  // Audit retention: once now, then hourly, in small batches (KEYGATE_AUDIT_RETENTION).
  runtime.auditPruner.start();

  return {
    port: address.port,
    host: address.host,
    proxy: proxy && { ...proxy.address, upstream: config.proxy!.upstream },
    controlSocket: control?.path,
    maxConnections: limits.maxConnections,
    reloadPolicy: (trigger) => policyWatcher.reloadNow(trigger),
    async stop() {
      shutdown.abort();
      policyWatcher.close();
      const closing = [listener.close(config.shutdownTimeoutMs)];
      if (proxy) closing.push(proxy.listener.close(config.shutdownTimeoutMs).then(() => proxy!.sandboxes.close()));
      if (control) closing.push(new Promise<void>((resolve) => control!.server.close(() => resolve())));
      control?.server.closeAllConnections();
      await Promise.all(closing);
      await keyChanges?.close();
      await control?.cleanup();
      // Refusals still queued are written before the store closes.
      await runtime.auditPruner.stop();
      await runtime.auditRecorder.flush();
    },
  };
}

async function startControlSocket(dataDir: string, runtime: Runtime, config: ServeConfig, listen: string, log: Logger, watcher: PolicyWatcher) {
  // A Unix socket path is limited to ~107 bytes; fall back to a private temp dir.
  let path = join(dataDir, CONTROL_SOCKET);
  let privateDir: string | undefined;
  if (Buffer.byteLength(path) > 100) {
    privateDir = await mkdtemp(join(tmpdir(), `keygate-${createHash("sha256").update(dataDir).digest("hex").slice(0, 8)}-`));
    path = join(privateDir, CONTROL_SOCKET);
  }
  await rm(path, { force: true });
  const rpc = connectNodeAdapter({ routes: createRoutes(runtime, config.credentialPriority, log, true), contextValues: withRequestIdValue() });
  const server = http.createServer(withRequestIds((req, res) => {
    if (req.url === "/status" && req.method === "GET") {
      void localStatus(runtime, listen, watcher)
        .then((body) => {
          res.writeHead(200, { "content-type": "application/json" });
          res.end(JSON.stringify(body));
        })
        .catch((error: unknown) => {
          res.writeHead(503, { "content-type": "application/json" });
          res.end(JSON.stringify({ error: (error as Error).message }));
        });
      return;
    }
    rpc(req, res);
  }, log));
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve());
  });
  await chmod(path, 0o600);
  return {
    server,
    path,
    cleanup: async () => {
      await rm(path, { force: true });
      if (privateDir) await rm(privateDir, { recursive: true, force: true });
    },
  };
}

/**
 * One line per reload that matters: "policy reloaded" only when the version
 * changed, "policy reload failed" (naming file:line) when the last good
 * policy stays in force. An explicit SIGHUP that finds nothing new says so.
 */
export function logReload(log: Logger, outcome: ReloadOutcome): void {
  const { info } = outcome.policy;
  switch (outcome.kind) {
    case "swapped":
      log.info("policy reloaded", { version: info.version, rules: info.rules, previous_version: outcome.previous.version, trigger: outcome.trigger });
      return;
    case "unchanged":
      // Whoever sent SIGHUP is waiting for an answer; a file event that changed nothing is noise.
      if (outcome.trigger === "SIGHUP") log.info("policy unchanged", { version: info.version, trigger: outcome.trigger });
      else log.debug("policy unchanged", { version: info.version, trigger: outcome.trigger });
      return;
    case "failed":
      log.error("policy reload failed", { ...errorFields(outcome.error), serving_version: info.version, trigger: outcome.trigger });
      return;
  }
}

export interface ServerStatus {
  pid: number;
  dev: boolean;
  startedAt: string;
  database: { kind: string; location: string; migration: string };
  policy: {
    dir: string;
    files: string[];
    rules: number;
    version: string;
    loadedAt: string;
    /** Hot reload, as the running server sees it (absent when the CLI loaded the policy itself). */
    reload?: PolicyReloadReport;
  };
  keys: { total: number; enabled: number };
  /** Where rate-limit counters live, whether Redis is reachable, and the default allocation. */
  rateLimits: RateLimiterHealth & { default: string | null };
  /** Audit retention ("90d", null: forever) and refused attempts not written (dropped with the queue full, or sampled away). */
  audit: { retention: string | null; queued: number; dropped: number; sampledOut: number };
  /** Whether owned paths consult the ledger, and the live resources it holds by kind. */
  ownership: { enforced: boolean; owned: string[]; live: Record<string, number> };
  listen: string;
  /** Over Postgres: the servers connected to the database (this process is not one of them). */
  servers?: ServerEntry[];
}

export interface PolicyReloadReport {
  watching: boolean;
  /** Policies swapped in since start. */
  reloads: number;
  failures: number;
  lastCheckedAt: string | null;
  /** The latest failed reload, until one succeeds; the policy above is still in force. */
  lastError: { message: string; at: string; trigger: string } | null;
}

function auditStatus(runtime: Runtime): ServerStatus["audit"] {
  const { queued, dropped, sampledOut } = runtime.auditRecorder.stats();
  return { retention: runtime.auditRetentionMs === null ? null : formatDuration(runtime.auditRetentionMs), queued, dropped, sampledOut };
}

export async function localStatus(runtime: Runtime, listen: string, watcher?: PolicyWatcher): Promise<ServerStatus> {
  const policy = runtime.policy().info;
  const reload = runtime.policyHolder.status();
  return {
    pid: process.pid,
    dev: runtime.dev,
    startedAt: runtime.startedAt.toISOString(),
    database: { kind: runtime.store.kind, location: runtime.store.location, migration: runtime.migration.current },
    policy: {
      dir: policy.dir,
      files: policy.files,
      rules: policy.rules,
      version: policy.version,
      loadedAt: policy.loadedAt.toISOString(),
      ...(watcher && {
        reload: {
          watching: watcher.watching(),
          reloads: reload.reloads,
          failures: reload.failures,
          lastCheckedAt: reload.lastCheckedAt?.toISOString() ?? null,
          lastError: reload.lastError ? { ...reload.lastError, at: reload.lastError.at.toISOString() } : null,
        },
      }),
    },
    keys: await countKeys(runtime.store.db),
    rateLimits: { ...(await runtime.rateLimiter.health()), default: runtime.defaultRateLimit ? formatRateLimit(runtime.defaultRateLimit) : null },
    ownership: await ownershipStatus(runtime),
    audit: auditStatus(runtime),
    listen,
  };
}

async function ownershipStatus(runtime: Runtime): Promise<ServerStatus["ownership"]> {
  const kinds = [...new Set(runtime.policy().routes.owned.map((route) => route.kind))];
  const live: Record<string, number> = {};
  for (const kind of kinds) live[kind] = await runtime.resources.countLive(kind, { all: true });
  return { enforced: runtime.ownership, owned: kinds, live };
}
