import { execFile } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { chown, mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { freePort } from "./redis-server.js";

/**
 * A throwaway Postgres cluster for one test file: `initdb` into a temp dir,
 * a free port on 127.0.0.1, its unix socket inside the temp dir, trust auth,
 * fsync off. Started, stopped (fast or immediate, as an operator or a crash
 * would), restarted and destroyed by the test. Never the machine's cluster:
 * every pg_ctl call names this cluster's data dir, and the port is never 5432.
 *
 * initdb and postgres refuse to run as root, so they run as the `postgres`
 * OS user (`runuser`), which owns the temp dir.
 */
export interface PgCluster {
  port: number;
  /** The temp dir: data/, sock/, server.log. */
  dir: string;
  /** postgres://postgres@127.0.0.1:PORT/DATABASE: the database keygate uses. */
  url: string;
  /** The same server's `postgres` database, for administration. */
  adminUrl: string;
  /** Whether pg_ctl last left it running. */
  readonly running: boolean;
  start(): Promise<void>;
  /** `pg_ctl stop -m MODE`; resolves once the postmaster has exited. */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** Stops it (fast) if running, then starts it on the same port. */
  restart(): Promise<void>;
  /** pg_terminate_backend of every backend of the keygate database but this call's own; resolves with how many. */
  terminateBackends(): Promise<number>;
  /** The server's log so far. */
  log(): Promise<string>;
  /** Stop (immediate) and remove the temp dir. */
  destroy(): Promise<void>;
}

export interface PgClusterOptions {
  /** The database made for keygate (default "keygate"). */
  database?: string;
}

const exec = promisify(execFile);
/** Debian's server binaries (not on PATH): /usr/lib/postgresql/VERSION/bin, the newest installed. */
const PG_BIN = (() => {
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, "bin", "initdb"))) : [];
  const newest = versions.sort((a, b) => Number(b) - Number(a))[0];
  return newest === undefined ? "" : join(root, newest, "bin");
})();
const OS_USER = "postgres";
const MACHINE_PORT = 5432;

/** Runs a Postgres binary as the postgres OS user, with a clean PG* environment. */
async function asPostgres(command: string, args: string[], cwd: string, timeoutMs = 60_000): Promise<string> {
  const env: NodeJS.ProcessEnv = { PATH: `${PG_BIN}:${process.env.PATH ?? "/usr/bin:/bin"}`, LANG: "C", LC_ALL: "C" };
  try {
    const { stdout, stderr } = await exec("runuser", ["-u", OS_USER, "--", command, ...args], { cwd, env, timeout: timeoutMs });
    return stdout + stderr;
  } catch (error) {
    const failed = error as Error & { stdout?: string; stderr?: string };
    throw new Error(`${command} ${args.join(" ")} failed: ${failed.message}\n${failed.stdout ?? ""}${failed.stderr ?? ""}`, { cause: error });
  }
}

async function osUserIds(): Promise<{ uid: number; gid: number }> {
  const [{ stdout: uid }, { stdout: gid }] = await Promise.all([exec("id", ["-u", OS_USER]), exec("id", ["-g", OS_USER])]);
  return { uid: Number(uid.trim()), gid: Number(gid.trim()) };
}

export async function startPgCluster({ database = "keygate" }: PgClusterOptions = {}): Promise<PgCluster> {
  if (PG_BIN === "") throw new Error("no PostgreSQL server binaries under /usr/lib/postgresql: install them with `apt-get install -y postgresql` (`bash .ci/run` does it)");
  const dir = await mkdtemp(join(tmpdir(), "keygate-pg-"));
  const data = join(dir, "data");
  const sock = join(dir, "sock");
  const logFile = join(dir, "server.log");
  let running = false;
  let port = 0;
  try {
    await mkdir(sock);
    const { uid, gid } = await osUserIds();
    await Promise.all([chown(dir, uid, gid), chown(sock, uid, gid)]);
    await asPostgres("initdb", ["-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"], dir);
    port = await freePort();
    if (port === MACHINE_PORT) throw new Error("freePort returned 5432, the machine's cluster");
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }

  const options = [
    `-p ${port}`,
    "-c listen_addresses=127.0.0.1",
    `-c unix_socket_directories=${sock}`,
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=200",
    "-c shared_buffers=32MB",
  ].join(" ");

  const base = `postgres://postgres@127.0.0.1:${port}`;
  const cluster: PgCluster = {
    port,
    dir,
    url: `${base}/${database}`,
    adminUrl: `${base}/postgres`,
    get running() {
      return running;
    },
    async start() {
      await asPostgres("pg_ctl", ["-D", data, "-l", logFile, "-o", options, "-w", "-t", "60", "start"], dir, 90_000);
      running = true;
    },
    async stop(mode = "fast") {
      await asPostgres("pg_ctl", ["-D", data, "-m", mode, "-w", "-t", "60", "stop"], dir, 90_000);
      running = false;
    },
    async restart() {
      if (running) await cluster.stop("fast");
      await cluster.start();
    },
    async terminateBackends() {
      const admin = new pg.Client({ connectionString: cluster.adminUrl });
      await admin.connect();
      try {
        const result = await admin.query<{ terminated: boolean }>(
          "select pg_terminate_backend(pid) as terminated from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
          [database],
        );
        return result.rows.filter((row) => row.terminated).length;
      } finally {
        await admin.end();
      }
    },
    log: () => readFile(logFile, "utf8").catch(() => ""),
    async destroy() {
      if (running) await cluster.stop("immediate").catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };

  try {
    await cluster.start();
    const admin = new pg.Client({ connectionString: cluster.adminUrl });
    await admin.connect();
    await admin.query(`create database ${pg.escapeIdentifier(database)}`).finally(() => admin.end());
  } catch (error) {
    await cluster.destroy();
    throw error;
  }
  return cluster;
}
