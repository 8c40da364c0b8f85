import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { createRouterTransport, type Transport } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { readCliKeys, readRuntimeConfig, type RuntimeConfig } from "../config/config.js";
import { CliError, configOrThrow, type Parsed } from "./args.js";
import { redactUrl } from "../core/db/connect.js";
import { acquireLock, type DataDirLock } from "../core/db/data-dir-lock.js";
import { checkServerSocket, DataDirAccessError, securePrivateDir } from "../core/db/data-dir-access.js";
import { PolicyLoadError } from "../core/policy/policy.js";
import { createLogger } from "../telemetry/logger.js";
import { openRuntime, type Runtime } from "../server/runtime.js";
import { localStatus, type ServerStatus } from "../server/serve.js";
import { createRoutes } from "../server/routes.js";
import { findServers } from "../server/server-registry.js";
import { createKeygateClient, type KeygateClient } from "../client/keygate-client.js";

/**
 * How the CLI reaches keygate. Every mode is a Connect transport to the same
 * services (Authorize, KeyService, AuditService, ResourceService), so every command has one code path:
 * - remote (`--server URL`): ManageKey over the network, authenticated with
 *   an admin key (KEYGATE_API_KEY);
 * - control socket: a server holds this PGlite data dir, so go through its
 *   Unix socket (only the OS user who owns the data can open it);
 * - in-process: nobody holds the data (or it is Postgres): open it here,
 *   as the local operator.
 */
export interface Connection {
  mode: "remote" | "socket" | "local";
  keys: KeygateClient["keys"];
  authorize: KeygateClient["authorize"];
  audit: KeygateClient["audit"];
  resources: KeygateClient["resources"];
  status(): Promise<ServerStatus & { server: "running" | "not running" | "unknown" }>;
  close(): Promise<void>;
}

const LOCK_WAIT_MS = 10_000;

export async function connectRemote(server: string, apiKey: string): Promise<Connection> {
  if (!apiKey) throw new CliError("--server needs an admin key: set KEYGATE_API_KEY (or --api-key)");
  // A service author's client, as any other service would use it; commands wait as long as they need.
  const { authorize, keys, audit, resources } = createKeygateClient({ baseUrl: server, httpVersion: "1.1", apiKey, timeoutMs: 0 });
  return {
    mode: "remote",
    authorize,
    keys,
    audit,
    resources,
    status: () => Promise.reject(new CliError("status is available on the machine that holds the data, not over --server")),
    close: async () => {},
  };
}

export async function connectLocal(config: RuntimeConfig, command: string): Promise<Connection> {
  if (config.databaseUrl) return inProcess(config, undefined);
  await securedDataDir(config.dataDir, (message) => process.stderr.write(`keygate: ${message}\n`));
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    const result = await acquireLock(config.dataDir, `cli ${command}`);
    if (result.ok) {
      try {
        return await inProcess(config, result.lock);
      } catch (error) {
        await result.lock.release();
        throw error;
      }
    }
    const { owner } = result;
    if (owner.socket) {
      // The lock names the socket the CLI will send keys to: only this user's own is believed.
      await checkServerSocket(config.dataDir, owner.socket).catch(asCliError);
      return viaSocket(owner.socket);
    }
    if (Date.now() > deadline) {
      throw new CliError(
        `data dir ${config.dataDir} is in use by pid ${owner.pid} (${owner.role}, since ${owner.since}); try again when it has finished`,
      );
    }
    await sleep(200);
  }
}

async function inProcess(config: RuntimeConfig, lock: DataDirLock | undefined): Promise<Connection> {
  const log = createLogger("error");
  let runtime: Runtime;
  try {
    runtime = await openRuntime(config, { onError: () => {} });
  } catch (error) {
    throw openError(config, error);
  }
  const transport = createRouterTransport(createRoutes(runtime, ["authorization", "x-api-key"], log, true));
  return {
    mode: "local",
    ...clients(transport),
    async status() {
      const local = await localStatus(runtime, "");
      if (!config.databaseUrl) return { ...local, server: "not running" };
      // Over Postgres, servers are found by their connections; dev if any of them is.
      const servers = await findServers(runtime.store.db).catch(() => undefined);
      if (!servers) return { ...local, server: "unknown" };
      return { ...local, servers, dev: local.dev || servers.some((s) => s.dev), server: servers.length > 0 ? "running" : "not running" };
    },
    async close() {
      await runtime.close();
      await lock?.release();
    },
  };
}

/**
 * The data dir, private to this user (core/db/data-dir-access.ts): made 0700
 * if others could only read it (said through `note`); refused, as a CliError
 * naming the path and the fix, if another user owns it or may write into it.
 */
export async function securedDataDir(dataDir: string, note: (message: string) => void): Promise<void> {
  const { tightenedFrom } = await securePrivateDir(dataDir).catch(asCliError);
  if (tightenedFrom) note(`data dir ${dataDir} was mode ${tightenedFrom}, open to other users; made it private (0700)`);
}

function asCliError(error: unknown): never {
  if (error instanceof DataDirAccessError) throw new CliError(error.message, { cause: error });
  throw error;
}

/**
 * Why keygate could not open its policy or database, naming which (and where)
 * so the operator knows what to fix; a stack trace would bury that.
 */
export function openError(config: RuntimeConfig, error: unknown): CliError {
  const message = (error as Error).message;
  if (error instanceof PolicyLoadError) return new CliError(`cannot load the policy (--policy-dir ${config.policyDir}): ${message}`, { cause: error });
  const where = config.databaseUrl ? redactUrl(config.databaseUrl) : config.dataDir;
  return new CliError(`cannot open the database (${where}): ${message}`, { cause: error });
}

function viaSocket(socketPath: string): Connection {
  const transport = createConnectTransport({ baseUrl: "http://localhost", httpVersion: "1.1", nodeOptions: { socketPath } });
  return {
    mode: "socket",
    ...clients(transport),
    status: async () => ({ ...(await getJson<ServerStatus>(socketPath, "/status")), server: "running" }),
    close: async () => {},
  };
}

function clients(transport: Transport) {
  const { authorize, keys, audit, resources } = createKeygateClient({ transport, timeoutMs: 0 });
  return { authorize, keys, audit, resources };
}

function getJson<T>(socketPath: string, path: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path, timeout: 5_000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => {
        try {
          const parsed = JSON.parse(body) as T & { error?: string };
          if (res.statusCode !== 200) reject(new CliError(`server status failed: ${parsed.error ?? res.statusCode}`));
          else resolve(parsed);
        } catch (error) {
          reject(new CliError("server sent an unreadable status", { cause: error }));
        }
      });
    });
    req.on("timeout", () => req.destroy(new CliError("server did not answer the status request in 5s")));
    req.on("error", reject);
  });
}

/** The connection a command's flags ask for: remote with --server, else local. */
async function connectFor(parsed: Parsed, command: string): Promise<Connection> {
  const server = parsed.flags.server as string | undefined;
  if (server) return connectRemote(server, configOrThrow(readCliKeys(parsed.flags, process.env)).apiKey ?? "");
  return connectLocal(configOrThrow(readRuntimeConfig(parsed.flags, process.env, process.cwd())), command);
}

export async function withConnection<T>(parsed: Parsed, command: string, run: (c: Connection) => Promise<T>): Promise<T> {
  const connection = await connectFor(parsed, command);
  try {
    return await run(connection);
  } finally {
    await connection.close();
  }
}
