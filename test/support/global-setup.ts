import { execFileSync } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { openStore, PGDATA_DIR } from "../../src/core/db/connect.js";
import { migrateToLatest } from "../../src/core/db/migrate.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** A migrated PGlite data dir to copy (creating one costs ~3 s). */
    pgliteTemplateDir: string;
    /** The same database as a tarball, to restore into memory. */
    pgliteSnapshot: string;
  }
}

/**
 * Once per run: compile the CLI the end-to-end tests spawn, make a migrated
 * PGlite template, and check the Postgres server when the suite targets it.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.build.json"], { stdio: "inherit" });

  const root = await mkdtemp(join(tmpdir(), "keygate-test-template-"));
  const store = await openStore({ kind: "pglite", dataDir: root });
  await migrateToLatest(store.db);
  await store.close();
  const pglite = await PGlite.create(join(root, PGDATA_DIR));
  const snapshot = await pglite.dumpDataDir("none");
  await pglite.close();
  const snapshotPath = join(root, "snapshot.tar");
  await writeFile(snapshotPath, Buffer.from(await snapshot.arrayBuffer()));
  project.provide("pgliteTemplateDir", root);
  project.provide("pgliteSnapshot", snapshotPath);

  const url = process.env.KEYGATE_TEST_DATABASE_URL;
  if (url) {
    const client = new pg.Client({ connectionString: url, user: new URL(url).username || process.env.USER || "postgres" });
    try {
      await client.connect();
      await client.query("select 1");
    } catch (error) {
      throw new Error(`KEYGATE_TEST_DATABASE_URL=${url} is not reachable: ${(error as Error).message}`, { cause: error });
    } finally {
      await client.end().catch(() => {});
    }
  }
  return async () => {
    await rm(root, { recursive: true, force: true });
  };
}
