import { chmod, lstat, mkdir, readdir, stat } from "node:fs/promises";
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
 * someone else, is a DataDirAccessError naming the path and the fix.
 */
export async function securePrivateDir(dataDir: string): Promise<{ tightenedFrom?: string }> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const me = uid();
  if (me === undefined) return {};
  const info = await stat(dataDir);
  if (!info.isDirectory()) throw new DataDirAccessError(`data dir ${dataDir} is not a directory; pass another --data-dir`);
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
  if ((info.mode & 0o077) === 0) return {};
  await chmod(dataDir, 0o700);
  return { tightenedFrom: octal(info.mode) };
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
