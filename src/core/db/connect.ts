import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { Kysely, PGliteDialect, PostgresDialect } from "kysely";
import pg from "pg";
import type { Database } from "./schema.js";
import { restrictTree } from "./data-dir-access.js";

export type DatabaseKind = "pglite" | "postgres";

export interface Store {
  db: Kysely<Database>;
  kind: DatabaseKind;
  /** Where the data is, for status output (a Postgres URL without its password). */
  location: string;
  /** The Postgres pool's connections now (metrics); absent on PGlite, which has no pool. */
  pool?: () => PoolState;
  close(): Promise<void>;
}

export interface PoolState {
  /** Connections open, busy or idle. */
  total: number;
  idle: number;
  /** Queries waiting for a connection. */
  waiting: number;
}

export type StoreTarget =
  | { kind: "postgres"; url: string; defaultUser: string; poolSize: number }
  | { kind: "pglite"; dataDir: string }
  /** An already-open PGlite (tests restore a snapshot into memory). */
  | { kind: "pglite-instance"; pglite: PGlite; location: string };

/** The PGlite files live in this folder of the data dir. */
export const PGDATA_DIR = "pgdata";

export async function openStore(target: StoreTarget): Promise<Store> {
  switch (target.kind) {
    case "postgres": {
      const pool = new pg.Pool({
        connectionString: target.url,
        // libpq defaults the user to the OS user; without USER (as in CI) pg
        // would send "undefined". The config supplies a real default.
        user: new URL(target.url).username ? undefined : target.defaultUser,
        max: target.poolSize,
        connectionTimeoutMillis: 5_000,
        // A peer that vanished without closing (a partition, a dead host) is found in time.
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000,
      });
      // An idle client's error (the server restarted) must not crash the process.
      pool.on("error", () => {});
      // Nor a checked-out one's: pg-pool listens only while a client is idle, and a
      // connection killed between a checkout and its query (a restart, a
      // pg_terminate_backend) emits "error" with nobody listening, which Node throws.
      // The query in flight still fails, and the pool drops the dead client on release.
      pool.on("connect", (client) => client.on("error", () => {}));
      const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
      const poolState = (): PoolState => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount });
      return { db, kind: "postgres", location: redactUrl(target.url), pool: poolState, close: () => db.destroy() };
    }
    case "pglite": {
      const dir = join(target.dataDir, PGDATA_DIR);
      await mkdir(target.dataDir, { recursive: true, mode: 0o700 });
      const pglite = await PGlite.create(dir);
      // PGlite writes its files 0666: none of them is for other users (issue 14, item 9).
      await restrictTree(dir);
      const db = new Kysely<Database>({ dialect: new PGliteDialect({ pglite }) });
      return { db, kind: "pglite", location: dir, close: () => db.destroy() };
    }
    case "pglite-instance": {
      const db = new Kysely<Database>({ dialect: new PGliteDialect({ pglite: target.pglite }) });
      return { db, kind: "pglite", location: target.location, close: () => db.destroy() };
    }
  }
}

export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparseable URL)";
  }
}
