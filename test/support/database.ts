import { randomBytes } from "node:crypto";
import { cp, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import { inject } from "vitest";
import { openStore, PGDATA_DIR, type Store, type StoreTarget } from "../../src/core/db/connect.js";
import { migrateToLatest } from "../../src/core/db/migrate.js";

/**
 * One suite, two databases: KEYGATE_TEST_DATABASE_URL=postgres://… runs the
 * integration and end-to-end tests against that server (each test database
 * is created fresh and dropped after); unset, they run on PGlite.
 */
export const TEST_DATABASE_URL = process.env.KEYGATE_TEST_DATABASE_URL;
export const testDatabaseKind: "postgres" | "pglite" = TEST_DATABASE_URL ? "postgres" : "pglite";

export interface TestDatabase {
  store: Store;
  dispose(): Promise<void>;
}

function adminUser(url: string): string {
  return new URL(url).username || process.env.USER || "postgres";
}

/** A fresh, empty Postgres database on the test server; returns its URL and a dropper. */
export async function createPostgresDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  const adminUrl = TEST_DATABASE_URL!;
  const name = `keygate_t_${randomBytes(6).toString("hex")}`;
  const admin = new pg.Client({ connectionString: adminUrl, user: adminUser(adminUrl) });
  await admin.connect();
  await admin.query(`create database ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  if (!url.username) url.username = adminUser(adminUrl);
  return {
    url: url.toString(),
    async drop() {
      const client = new pg.Client({ connectionString: adminUrl, user: adminUser(adminUrl) });
      await client.connect();
      await client.query(`drop database if exists ${name} with (force)`);
      await client.end();
    },
  };
}

/**
 * A fresh database as a store target for openRuntime (which migrates it), on
 * whichever kind the suite targets; `drop` removes a Postgres one once the
 * runtime is closed (a PGlite one lives in memory and goes with it).
 */
export async function createTestStoreTarget(poolSize = 3): Promise<{ target: StoreTarget; drop: () => Promise<void> }> {
  if (TEST_DATABASE_URL) {
    const { url, drop } = await createPostgresDatabase();
    return { target: { kind: "postgres", url, defaultUser: "postgres", poolSize }, drop };
  }
  const snapshot = await readFile(inject("pgliteSnapshot"));
  const pglite = await PGlite.create({ loadDataDir: new Blob([snapshot]) });
  return { target: { kind: "pglite-instance", pglite, location: "memory (test)" }, drop: async () => {} };
}

/** A migrated, empty database for one test file, on whichever kind the suite targets. */
export async function createTestDatabase(): Promise<TestDatabase> {
  if (TEST_DATABASE_URL) {
    const { url, drop } = await createPostgresDatabase();
    const store = await openStore({ kind: "postgres", url, defaultUser: adminUser(url), poolSize: 5 });
    await migrateToLatest(store.db);
    return {
      store,
      async dispose() {
        await store.close();
        await drop();
      },
    };
  }
  const snapshot = await readFile(inject("pgliteSnapshot"));
  const pglite = await PGlite.create({ loadDataDir: new Blob([snapshot]) });
  const store = await openStore({ kind: "pglite-instance", pglite, location: "memory (test)" });
  await migrateToLatest(store.db);
  return { store, dispose: () => store.close() };
}

export interface TestDataDir {
  /** Working directory for the CLI and server (holds the PGlite data dir). */
  dir: string;
  dataDir: string;
  /** Extra environment for spawned keygate processes (DATABASE_URL on Postgres). */
  env: Record<string, string>;
  dispose(): Promise<void>;
}

/** A fresh data location for spawned keygate processes: a copied PGlite template, or a new Postgres database. */
export async function createTestDataDir(): Promise<TestDataDir> {
  const dir = await mkdtemp(join(tmpdir(), "keygate-e2e-"));
  const dataDir = join(dir, ".keygate");
  if (TEST_DATABASE_URL) {
    const { url, drop } = await createPostgresDatabase();
    return {
      dir,
      dataDir,
      env: { DATABASE_URL: url },
      async dispose() {
        await drop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  }
  await cp(join(inject("pgliteTemplateDir"), PGDATA_DIR), join(dataDir, PGDATA_DIR), { recursive: true });
  return { dir, dataDir, env: {}, dispose: () => rm(dir, { recursive: true, force: true }) };
}
