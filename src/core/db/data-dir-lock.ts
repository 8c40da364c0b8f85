import { randomBytes } from "node:crypto";
import { link, mkdir, open, readFile, rename, rm, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";

/**
 * PGlite has no cross-process lock, and two processes writing one data dir
 * corrupt it. keygate holds a lock file naming its pid; a lock whose process
 * is gone is stale and is taken over. The file is never seen half-written:
 * it is written in full under a private name, then linked into place (which
 * fails if a lock exists) or renamed over the old one.
 *
 * "Gone" includes what kill(pid, 0) does not see: a process killed with
 * SIGKILL stays a zombie, holding its pid, until its parent reaps it (in a
 * container whose init does not reap, for as long as the container runs), and
 * a pid from before a restart may now belong to another process. On Linux
 * the lock records the holder's start time and the boot it ran in, from
 * /proc, and a pid that is a zombie or started at another time is not the
 * holder.
 */
export const LOCK_FILE = "keygate.lock";

export interface LockOwner {
  pid: number;
  host: string;
  /** What holds it: "server" or a CLI command. */
  role: string;
  /** The server's local control socket, when the holder is a server. */
  socket?: string;
  since: string;
  /** Linux: the holder's start time (clock ticks after boot, /proc/PID/stat) and boot id, to tell it from a later process with its pid. */
  startTime?: string;
  bootId?: string;
}

export interface DataDirLock {
  release(): Promise<void>;
  /** Rewrites the lock with more facts (the server adds its socket once listening). */
  update(extra: Partial<LockOwner>): Promise<void>;
}

export type LockResult = { ok: true; lock: DataDirLock } | { ok: false; owner: LockOwner };

export async function acquireLock(dataDir: string, role: string): Promise<LockResult> {
  // The data dir is private: it holds the database and the control socket.
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const path = join(dataDir, LOCK_FILE);
  const self = await procStat(process.pid);
  const bootId = await readBootId();
  for (let attempt = 0; attempt < 3; attempt++) {
    const owner: LockOwner = {
      pid: process.pid,
      host: hostname(),
      role,
      since: new Date().toISOString(),
      ...(self && { startTime: self.startTime }),
      ...(bootId && { bootId }),
    };
    if (await createExclusive(path, owner)) {
      let current = owner;
      return {
        ok: true,
        lock: {
          async release() {
            const now = await readOwner(path);
            if (now?.pid === process.pid) await rm(path, { force: true });
          },
          async update(extra) {
            current = { ...current, ...extra };
            await replace(path, current);
          },
        },
      };
    }
    const existing = await readOwner(path);
    if (existing && existing.host !== hostname()) return { ok: false, owner: existing };
    if (existing && existing.pid !== process.pid && (await isHolderAlive(existing))) return { ok: false, owner: existing };
    // Stale (the holder died) or unreadable: take it over.
    await rm(path, { force: true });
  }
  const existing = await readOwner(path);
  return { ok: false, owner: existing ?? { pid: 0, host: "?", role: "unknown", since: "" } };
}

export async function readLockOwner(dataDir: string): Promise<LockOwner | undefined> {
  const owner = await readOwner(join(dataDir, LOCK_FILE));
  if (!owner) return undefined;
  if (owner.host === hostname() && !(await isHolderAlive(owner))) return undefined;
  return owner;
}

const privateName = (path: string) => `${path}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;

/** Creates the lock with its whole content, or returns false when one exists. */
async function createExclusive(path: string, owner: LockOwner): Promise<boolean> {
  const temp = privateName(path);
  await writeFile(temp, JSON.stringify(owner), { mode: 0o600 });
  try {
    await link(temp, path);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return false;
    // A file system without hard links: O_EXCL, then the content (briefly empty to a reader).
    if (code === "EPERM" || code === "ENOTSUP" || code === "EOPNOTSUPP" || code === "ENOSYS") return createWithExcl(path, owner);
    throw error;
  } finally {
    await rm(temp, { force: true });
  }
}

async function createWithExcl(path: string, owner: LockOwner): Promise<boolean> {
  try {
    const handle = await open(path, "wx", 0o600);
    await handle.writeFile(JSON.stringify(owner));
    await handle.close();
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  }
}

/** Rewrites the lock: readers see the old content or the new, never an empty file. */
async function replace(path: string, owner: LockOwner): Promise<void> {
  const temp = privateName(path);
  await writeFile(temp, JSON.stringify(owner), { mode: 0o600 });
  await rename(temp, path);
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, "utf8")) as LockOwner;
    return typeof parsed.pid === "number" ? parsed : undefined;
  } catch {
    return undefined;
  }
}

/** Whether the lock's holder (on this host) still runs. */
export async function isHolderAlive(owner: Pick<LockOwner, "pid" | "startTime" | "bootId">): Promise<boolean> {
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  if (owner.bootId !== undefined) {
    const bootId = await readBootId();
    if (bootId !== undefined && bootId !== owner.bootId) return false; // the machine restarted since
  }
  const stat = await procStat(owner.pid);
  if (!stat) return true; // no /proc (not Linux): the pid answering is all there is to go on
  if (stat.state === "Z" || stat.state === "X") return false; // killed, not yet reaped
  return owner.startTime === undefined || stat.startTime === owner.startTime;
}

/** Linux: a process's state letter and start time from /proc/PID/stat; undefined elsewhere or when it is gone. */
export async function procStat(pid: number): Promise<{ state: string; startTime: string } | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, "utf8");
  } catch {
    return undefined;
  }
  // "PID (COMM) STATE …": COMM may hold spaces and parentheses, so count fields after the last ")".
  const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
  const state = fields[0];
  const startTime = fields[19]; // field 22, starttime
  return state && startTime ? { state, startTime } : undefined;
}

async function readBootId(): Promise<string | undefined> {
  try {
    return (await readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim() || undefined;
  } catch {
    return undefined;
  }
}
