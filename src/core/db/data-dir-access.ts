import type { Stats } from "node:fs";
import { chmod, lstat, mkdir, readdir, stat, unlink, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { LOCK_FILE } from "./data-dir-lock.js";

/**
 * The data dir holds the embedded database (key hashes, the audit log), the
 * lock and the control socket, so it is private to the OS user keygate runs
 * as. One that another user owns, or may write into, may hold anything that
 * user put there: a lock naming their socket (which would receive the keys
 * the CLI sends) or a database of their making. Such a dir is refused; one
 * that is only readable by others is made private (issue 14, items 8 and 9).
 * Without POSIX users (Windows) there is nothing to check.
 */

export class DataDirAccessError extends Error {
  override readonly name = "DataDirAccessError";
}

const uid = (): number | undefined => process.getuid?.();
const octal = (mode: number) => (mode & 0o777).toString(8).padStart(4, "0");

/**
 * Makes sure `dataDir` exists, is a directory this user owns, and is 0700:
 * created 0700 when missing; group or other read/search bits are removed
 * (returned, so the caller can say so); writable by others, or owned by
 * someone else, is a DataDirAccessError naming the path and the fix; so is
 * a path where no directory can be made and a dir this user cannot write.
 */
export async function securePrivateDir(dataDir: string): Promise<{ tightenedFrom?: string }> {
  await makeDataDir(dataDir);
  const info = await stat(dataDir).catch((error: unknown) => {
    throw new DataDirAccessError(`cannot use data dir ${dataDir}: ${errorText(error)}; pass another --data-dir`, { cause: error });
  });
  if (!info.isDirectory()) throw new DataDirAccessError(`data dir ${dataDir} is not a directory; pass another --data-dir`);
  const me = uid();
  if (me !== undefined) refuseShared(dataDir, info, me);
  // Before any change to its mode: a dir keygate cannot use is left as it was.
  await probeWritable(dataDir);
  if (me === undefined || (info.mode & 0o077) === 0) return {};
  await chmod(dataDir, 0o700).catch((error: unknown) => {
    throw new DataDirAccessError(`cannot make data dir ${dataDir} private (chmod 700): ${errorText(error)}; pass another --data-dir`, { cause: error });
  });
  return { tightenedFrom: octal(info.mode) };
}

/** Owned by another user, or writable by others: refused (see above). */
function refuseShared(dataDir: string, info: Stats, me: number): void {
  if (info.uid !== me) {
    throw new DataDirAccessError(
      `data dir ${dataDir} is owned by uid ${info.uid}, not by this user (uid ${me}): its contents cannot be trusted. ` +
        `Run keygate as its owner, \`chown -R ${me} ${dataDir}\` if it is yours, or pass another --data-dir (keygate creates a missing one, private)`,
    );
  }
  if ((info.mode & 0o022) !== 0) {
    throw new DataDirAccessError(
      `data dir ${dataDir} is writable by other users (mode ${octal(info.mode)}): someone else may have put files in it. ` +
        `Check its contents, then \`chmod 700 ${dataDir}\`, or pass another --data-dir`,
    );
  }
}

/** Why a file-system call failed, in words: the code, then what it means here. */
function errorText(error: unknown, made: "directory" | "file" = "directory"): string {
  const code = (error as NodeJS.ErrnoException).code;
  const why: Record<string, string> = {
    ENOENT: `a ${made} cannot be created there (a parent is missing or cannot hold one, as under /proc)`,
    ENOTDIR: "a parent in the path is a file, not a directory",
    EACCES: "permission denied",
    EPERM: "operation not permitted",
    EROFS: "read-only file system",
    ENOSPC: "no space left on the device",
    EDQUOT: "disk quota exceeded",
  };
  return code && why[code] ? `${code}, ${why[code]}` : (error as Error).message;
}

/**
 * Creates the data dir (and missing parents) 0700, one level at a time:
 * Node's recursive mkdir loops forever on a path the kernel refuses with
 * ENOENT although its parent exists (/proc/x), so keygate walks the path
 * itself and any refusal is a DataDirAccessError naming the path and why.
 */
async function makeDataDir(dataDir: string): Promise<void> {
  const make = async (path: string): Promise<void> => {
    try {
      await mkdir(path, { mode: 0o700 });
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EEXIST") return;
      const parent = dirname(path);
      if (code !== "ENOENT" || parent === path) throw error;
      await make(parent);
      // The parent exists now: a second ENOENT is the kernel's refusal, thrown as is.
      await mkdir(path, { mode: 0o700 }).catch((again: unknown) => {
        if ((again as NodeJS.ErrnoException).code !== "EEXIST") throw again;
      });
    }
  };
  try {
    await make(resolve(dataDir));
  } catch (error) {
    throw new DataDirAccessError(`cannot create data dir ${dataDir}: ${errorText(error)}; pass another --data-dir`, { cause: error });
  }
}

/**
 * The embedded database writes into the data dir: a file is created and
 * removed there first, so a dir keygate cannot write (read-only, a full or
 * read-only file system) is an error at once rather than a database that
 * fails, or retries, on its first write.
 */
async function probeWritable(dataDir: string): Promise<void> {
  const probe = join(dataDir, `.keygate-write-probe-${process.pid}`);
  try {
    await writeFile(probe, "", { flag: "wx", mode: 0o600 });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") {
      // Left by a process of this pid that died mid-probe: remove it and try once more.
      await unlink(probe).catch(() => undefined);
      return probeWritable(dataDir);
    }
    throw new DataDirAccessError(`data dir ${dataDir} is not writable: ${errorText(error, "file")}; make it writable by this user or pass another --data-dir`, {
      cause: error,
    });
  }
  await unlink(probe);
}

/**
 * Removes group and other bits from everything under `dir` (symlinks are not
 * followed). PGlite writes its files 0666 whatever the umask; the 0700 data
 * dir already keeps others out, and this keeps the files private if it is
 * ever opened up. Returns how many entries were changed.
 */
export async function restrictTree(dir: string): Promise<number> {
  if (uid() === undefined) return 0;
  let changed = 0;
  const visit = async (path: string): Promise<void> => {
    try {
      const info = await lstat(path);
      if (info.isSymbolicLink()) return;
      if ((info.mode & 0o077) !== 0) {
        await chmod(path, info.mode & 0o700);
        changed++;
      }
      if (info.isDirectory()) for (const entry of await readdir(path)) await visit(join(path, entry));
    } catch (error) {
      // A file PGlite removed meanwhile (a temporary one) needs nothing.
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    }
  };
  await visit(dir);
  return changed;
}

/**
 * Whether the CLI may talk to the server whose lock names `socket`: the lock
 * is a regular file (not a link) this user owns that no one else may write,
 * and the socket is one this user owns, not a link, in the data dir itself
 * or in a directory private to this user (serve's fallback for long paths).
 * The data dir must have passed securePrivateDir first.
 */
export async function checkServerSocket(dataDir: string, socket: string): Promise<void> {
  const me = uid();
  if (me === undefined) return;
  const lock = join(dataDir, LOCK_FILE);
  const lockInfo = await lstat(lock).catch(() => undefined);
  if (lockInfo && (!lockInfo.isFile() || lockInfo.uid !== me || (lockInfo.mode & 0o022) !== 0)) {
    throw new DataDirAccessError(
      `lock file ${lock} is ${lockInfo.isFile() ? `owned by uid ${lockInfo.uid} with mode ${octal(lockInfo.mode)}` : "not a regular file"}: ` +
        `only this user's private lock is trusted to name the server's socket. Nothing was sent. ` +
        `Stop whatever wrote it, remove it, and \`chmod 700 ${dataDir}\`; or pass another --data-dir`,
    );
  }
  const refuse = (why: string) =>
    new DataDirAccessError(
      `the server socket named in ${lock}, ${socket}, ${why}: it may not be keygate's. Nothing was sent. ` +
        "Stop the server and remove the lock if it is stale, or pass another --data-dir",
    );
  const info = await lstat(socket).catch(() => undefined);
  if (!info) throw refuse("does not exist");
  if (!info.isSocket()) throw refuse("is not a socket");
  if (info.uid !== me) throw refuse(`is owned by uid ${info.uid}, not by this user (uid ${me})`);
  if ((info.mode & 0o022) !== 0) throw refuse(`is writable by others (mode ${octal(info.mode)})`);
  const parent = resolve(dirname(socket));
  if (parent === resolve(dataDir)) return;
  const home = await lstat(parent);
  if (!home.isDirectory() || home.uid !== me || (home.mode & 0o077) !== 0) {
    throw refuse(`lies outside the data dir, in ${parent}, which is not a directory private to this user`);
  }
}
