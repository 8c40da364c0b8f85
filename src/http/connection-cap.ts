import { readFileSync } from "node:fs";

/**
 * The default cap on connections (KEYGATE_MAX_CONNECTIONS unset): whatever
 * file descriptors the process may open, less what the database pool and the
 * process's own files need, so a flood of connections can never take the
 * descriptor a database connection or a data file needs (1,100 idle HTTP/2
 * connections against 1,024 descriptors turned valid keys into 503s).
 */

/** Descriptors for everything but client connections and the database: logs, the policy watcher, Redis, the control socket, std streams. */
export const FD_MARGIN = 64;
/** PGlite keeps its relation files open in-process: 80 at rest on a fresh data dir, more as tables and indexes grow. */
export const PGLITE_FILES = 256;
/** Never fewer than this, whatever the limit (a tiny `ulimit -n` still serves a gateway's few connections). */
export const MIN_CONNECTIONS = 32;
/** When the open-file limit cannot be read (not Linux): Linux's usual soft limit. */
export const FALLBACK_FD_LIMIT = 1024;

/** The soft open-file limit (`ulimit -n`) from /proc/self/limits; undefined where there is none (not Linux) or it is unlimited. */
export function openFileLimit(read: () => string = () => readFileSync("/proc/self/limits", "utf8")): number | undefined {
  let text: string;
  try {
    text = read();
  } catch {
    return undefined; // no procfs: the caller falls back
  }
  const soft = /^Max open files\s+(\S+)/m.exec(text)?.[1];
  return soft !== undefined && /^\d+$/.test(soft) ? Number(soft) : undefined;
}

export interface ConnectionBudget {
  /** The open-file limit; undefined = FALLBACK_FD_LIMIT. */
  fdLimit: number | undefined;
  /** Postgres pool connections; undefined on PGlite (its files instead). */
  dbPoolSize: number | undefined;
  /** Listening ports sharing the budget, and what each connection on them may hold: the proxy's clients may each hold an upstream socket too. */
  proxy: boolean;
}

/** Connections per listening port: the descriptors left once the database's and the margin are set aside (in proxy mode a third: main port, proxy port and its upstream sockets). */
export function defaultMaxConnections({ fdLimit, dbPoolSize, proxy }: ConnectionBudget): number {
  // Over Postgres: the pool and the change feed's own connection.
  const database = dbPoolSize === undefined ? PGLITE_FILES : dbPoolSize + 1;
  const free = (fdLimit ?? FALLBACK_FD_LIMIT) - database - FD_MARGIN;
  return Math.max(MIN_CONNECTIONS, Math.floor(proxy ? free / 3 : free));
}
