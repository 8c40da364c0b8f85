import { mkdir, open, readFile, rm } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";

/**
 * PGlite has no cross-process lock, and two processes writing one data dir
 * corrupt it. keygate holds a lock file (created with O_EXCL) naming its pid;
 * a lock whose process is gone is stale and is taken over.
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
  for (let attempt = 0; attempt < 3; attempt++) {
    const owner: LockOwner = { pid: process.pid, host: hostname(), role, since: new Date().toISOString() };
    try {
      const handle = await open(path, "wx", 0o600);
      await handle.writeFile(JSON.stringify(owner));
      await handle.close();
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
            const handle = await open(path, "w", 0o600);
            await handle.writeFile(JSON.stringify(current));
            await handle.close();
          },
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const existing = await readOwner(path);
    if (existing && existing.host === hostname() && isAlive(existing.pid) && existing.pid !== process.pid) {
      return { ok: false, owner: existing };
    }
    if (existing && existing.host !== hostname()) return { ok: false, owner: existing };
    // Stale (the holder died) or half-written: take it over.
    await rm(path, { force: true });
  }
  const existing = await readOwner(path);
  return { ok: false, owner: existing ?? { pid: 0, host: "?", role: "unknown", since: "" } };
}

export async function readLockOwner(dataDir: string): Promise<LockOwner | undefined> {
  const owner = await readOwner(join(dataDir, LOCK_FILE));
  if (!owner) return undefined;
  if (owner.host === hostname() && !isAlive(owner.pid)) return undefined;
  return owner;
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    const parsed = JSON.parse(await readFile(path, "utf8")) as LockOwner;
    return typeof parsed.pid === "number" ? parsed : undefined;
  } catch {
    return undefined;
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}
