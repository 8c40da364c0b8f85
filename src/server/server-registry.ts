import { sql, type Kysely } from "kysely";
import type { Database } from "../core/db/schema.js";

/**
 * Over Postgres there is no lock file to say which servers run: each server
 * names its LISTEN connection (application_name, see key-changes.ts), and
 * `keygate status` on any machine finds them in pg_stat_activity, dev mode
 * included, so the dev-mode warning reaches every status call.
 */
const PREFIX = "keygate serve;";
/** Postgres keeps at most 63 bytes of application_name. */
const MAX_NAME = 63;

export interface ServerEntry {
  pid: number;
  dev: boolean;
  /** host:port, as the server logged it. */
  listen: string;
  /** When its connection started (close to when the server started). */
  since: string;
}

export function serverApplicationName({ pid, dev, listen }: Omit<ServerEntry, "since">): string {
  return `${PREFIX}pid=${pid};dev=${dev ? 1 : 0};listen=${listen}`.slice(0, MAX_NAME);
}

export function parseServerApplicationName(name: string): Omit<ServerEntry, "since"> | undefined {
  const match = /^keygate serve;pid=(\d+);dev=([01]);listen=(.*)$/.exec(name);
  if (!match) return undefined;
  return { pid: Number(match[1]), dev: match[2] === "1", listen: match[3]! };
}

/** The keygate servers connected to this database now. */
export async function findServers(db: Kysely<Database>): Promise<ServerEntry[]> {
  const { rows } = await sql<{ application_name: string; backend_start: Date }>`
    select application_name, backend_start from pg_stat_activity
    where datname = current_database() and application_name like ${`${PREFIX}%`}
    order by backend_start`.execute(db);
  return rows.flatMap((row) => {
    const parsed = parseServerApplicationName(row.application_name);
    return parsed ? [{ ...parsed, since: new Date(row.backend_start).toISOString() }] : [];
  });
}

/** A server that may not start on this database beside the ones already on it (dev mode and a shared database). */
export class SharedDatabaseError extends Error {
  override readonly name = "SharedDatabaseError";
}

const describe = (servers: ServerEntry[]) => servers.map((s) => `pid ${s.pid} on ${s.listen}${s.dev ? ", DEV MODE" : ""}`).join("; ");

/**
 * Dev mode allows every request and shows every key to its callers: over a
 * database that other servers use it would do that to their keys. So a dev
 * server starts only when no other server is on the database, and no server
 * starts beside a dev one. Each names its own connection before it looks
 * (serve.ts), so of two starting at once at least one sees the other.
 */
export async function refuseSharedDev(db: Kysely<Database>, self: Omit<ServerEntry, "since">): Promise<void> {
  const servers = await findServers(db);
  // This server's own connection, as Postgres keeps its (possibly cut) name.
  const mine = parseServerApplicationName(serverApplicationName(self));
  const index = servers.findIndex((s) => s.pid === mine?.pid && s.dev === mine.dev && s.listen === mine.listen);
  if (index >= 0) servers.splice(index, 1);
  if (self.dev && servers.length > 0) {
    throw new SharedDatabaseError(
      `dev mode refused: other keygate servers use this database (${describe(servers)}). ` +
        "Dev mode allows every request and shows every key, so it needs a database of its own: another DATABASE_URL, or none (the embedded database)",
    );
  }
  const devs = servers.filter((s) => s.dev);
  if (devs.length > 0) {
    throw new SharedDatabaseError(
      `refused: a dev-mode keygate server uses this database (${describe(devs)}). Stop it, or give it a database of its own, then start this server again`,
    );
  }
}
