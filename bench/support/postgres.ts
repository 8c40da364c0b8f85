import { randomBytes } from "node:crypto";
import pg from "pg";

/**
 * The benches' Postgres: KEYGATE_BENCH_DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test) names a server on which each
 * bench creates, and afterwards drops, databases of its own.
 */
export const ADMIN_URL = process.env.KEYGATE_BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

/** pg needs the user spelled out when the URL names none and USER is unset (CI). */
export function pgUser(url: string): string {
  return new URL(url).username || process.env.USER || "postgres";
}

/** undefined when a server answers at url, else why not. */
export async function unreachable(url: string = ADMIN_URL): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, user: pgUser(url), connectionTimeoutMillis: 3_000 });
  try {
    await client.connect();
    await client.query("select 1");
    return undefined;
  } catch (error) {
    return (error as Error).message;
  } finally {
    await client.end().catch(() => {});
  }
}

/** One statement on a fresh connection to url; the rows it returns. */
export async function query<T extends pg.QueryResultRow = pg.QueryResultRow>(url: string, text: string, values?: unknown[]): Promise<T[]> {
  const client = new pg.Client({ connectionString: url, user: pgUser(url) });
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

export interface ScratchDatabase {
  name: string;
  /** The database's URL, with the user spelled out. */
  url: string;
  /** Drops it (with force: servers may still be connected); reports, never throws. */
  drop(): Promise<void>;
}

/** A new, empty database `keygate_bench_<random>` on the admin URL's server. */
export async function createScratchDatabase(adminUrl: string = ADMIN_URL): Promise<ScratchDatabase> {
  const name = `keygate_bench_${randomBytes(6).toString("hex")}`;
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  if (!url.username) url.username = pgUser(adminUrl);
  await query(adminUrl, `create database ${name}`);
  return {
    name,
    url: url.toString(),
    async drop() {
      await query(adminUrl, `drop database if exists ${name} with (force)`).catch((error: unknown) => console.error(`could not drop ${name}: ${(error as Error).message}`));
    },
  };
}
