import { chmod, lstat, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from "node:fs/promises";
import net from "node:net";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { runCli, startServerProcess } from "../support/keygate-process.js";

/**
 * Issue 14, items 8 and 9. The CLI believed the socket path in the data
 * dir's lock file: another local user planted `.keygate/keygate.lock` in a
 * world-writable directory, pointing at their own socket, and captured the
 * admin key `keygate check --key …` sent. And the data dir's 0700 was not
 * enforced on an existing dir, while PGlite wrote its files 0666.
 *
 * Tests cannot switch users: "someone else's" is simulated by what the
 * checks also refuse for another owner (a dir or lock others may write, a
 * socket outside the data dir, a link).
 */

const SECRET = "sk-sb-thisIsTheOperatorsAdminKeyDoNotLeakIt";
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "keygate-trust-"));
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

/** The attacker's socket: records whether anything at all arrived. */
interface Recorder {
  path: string;
  received: () => string;
  close: () => Promise<void>;
}

async function recorder(path: string): Promise<Recorder> {
  let received = "";
  const server = net.createServer((socket) => {
    socket.on("data", (chunk) => {
      received += chunk.toString();
      socket.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, received: () => received, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

let open: Recorder | undefined;
afterEach(async () => {
  await open?.close();
  open = undefined;
});

/** A data dir with a lock naming `socket`, as a live server's would (this test process is the "holder"). */
async function plantLock(dataDir: string, socket: string): Promise<string> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const lock = join(dataDir, "keygate.lock");
  await writeFile(lock, JSON.stringify({ pid: process.pid, host: hostname(), role: "server", socket, since: new Date().toISOString() }), { mode: 0o600 });
  return lock;
}

async function check(dataDir: string) {
  return runCli(["check", "--key", SECRET, "--path", "/sandboxes", "--method", "GET", "--data-dir", dataDir], { cwd: root, timeoutMs: 20_000 });
}

describe(`the CLI trusts a data dir's lock only when it is this user's alone (${testDatabaseKind})`, () => {
  it.each<[string, (dir: string) => Promise<{ dataDir: string; socket: string }>, (dataDir: string) => string[]]>([
    [
      "a world-writable data dir (another user planted .keygate/keygate.lock)",
      async (dir) => {
        const dataDir = join(dir, ".keygate");
        const socket = join(dataDir, "keygate.sock");
        await plantLock(dataDir, socket);
        await chmod(dataDir, 0o777);
        return { dataDir, socket };
      },
      (dataDir) => [`data dir ${dataDir} is writable by other users (mode 0777)`, `chmod 700 ${dataDir}`],
    ],
    [
      "a lock file others may write",
      async (dir) => {
        const dataDir = join(dir, ".keygate");
        const socket = join(dataDir, "keygate.sock");
        await chmod(await plantLock(dataDir, socket), 0o666);
        return { dataDir, socket };
      },
      (dataDir) => [`lock file ${join(dataDir, "keygate.lock")} is owned by uid ${process.getuid!()} with mode 0666`, "Nothing was sent", `chmod 700 ${dataDir}`],
    ],
    [
      "a lock that is a link to someone else's file",
      async (dir) => {
        const dataDir = join(dir, ".keygate");
        const socket = join(dataDir, "keygate.sock");
        const elsewhere = join(dir, "planted.lock");
        await plantLock(dataDir, socket);
        await writeFile(elsewhere, JSON.stringify({ pid: process.pid, host: hostname(), role: "server", socket, since: "" }));
        await rm(join(dataDir, "keygate.lock"));
        await symlink(elsewhere, join(dataDir, "keygate.lock"));
        return { dataDir, socket };
      },
      (dataDir) => [`lock file ${join(dataDir, "keygate.lock")} is not a regular file`],
    ],
    [
      "a socket outside the data dir, in a directory others can enter",
      async (dir) => {
        const dataDir = join(dir, ".keygate");
        const theirs = join(dir, "theirs");
        await mkdir(theirs, { mode: 0o755 });
        await chmod(theirs, 0o755);
        const socket = join(theirs, "capture.sock");
        await plantLock(dataDir, socket);
        return { dataDir, socket };
      },
      () => ["lies outside the data dir", "which is not a directory private to this user", "Nothing was sent"],
    ],
    [
      "a socket path that is a link",
      async (dir) => {
        const dataDir = join(dir, ".keygate");
        const theirs = join(dir, "theirs");
        await mkdir(theirs, { mode: 0o755 });
        const socket = join(dataDir, "keygate.sock");
        await plantLock(dataDir, socket);
        await symlink(join(theirs, "capture.sock"), socket);
        return { dataDir, socket: join(theirs, "capture.sock") };
      },
      () => ["is not a socket"],
    ],
  ])("refused: %s; the key is never sent", async (_, plant, messages) => {
    const dir = await mkdtemp(join(root, "case-"));
    const { dataDir, socket } = await plant(dir);
    open = await recorder(socket);
    const result = await check(dataDir);
    expect(open.received()).toBe("");
    expect(result.code, result.stderr).toBe(2);
    for (const message of messages(dataDir)) expect(result.stderr).toContain(message);
    expect(result.stdout + result.stderr).not.toContain(SECRET);
  });
});

/** Every file and directory under `dir` whose mode gives group or others anything. */
async function openToOthers(dir: string): Promise<string[]> {
  const found: string[] = [];
  const visit = async (path: string): Promise<void> => {
    const info = await lstat(path);
    if (info.isSymbolicLink()) return;
    if ((info.mode & 0o077) !== 0) found.push(`${(info.mode & 0o777).toString(8)} ${path}`);
    if (info.isDirectory()) for (const entry of await readdir(path)) await visit(join(path, entry));
  };
  await visit(dir);
  return found;
}

describe.runIf(testDatabaseKind === "pglite")("the data dir is private to its user", () => {
  let data: TestDataDir;
  beforeAll(async () => {
    data = await createTestDataDir();
  });
  afterAll(async () => {
    await data?.dispose();
  });

  it("serve makes an existing 0755 data dir 0700 (and says so), and no PGlite file is open to others", async () => {
    await chmod(data.dataDir, 0o755);
    const server = await startServerProcess([], { cwd: data.dir, env: data.env });
    try {
      expect((await lstat(data.dataDir)).mode & 0o777).toBe(0o700);
      expect(server.output()).toContain(`data dir ${data.dataDir} was mode 0755, open to other users; made it private (0700)`);
      expect(await openToOthers(data.dataDir)).toEqual([]);
    } finally {
      expect(await server.stop()).toBe(0);
    }
    expect(await openToOthers(data.dataDir)).toEqual([]);
  });

  it("serve refuses a data dir others may write into: exit 2, naming the path and the fix", async () => {
    await chmod(data.dataDir, 0o777);
    try {
      const result = await runCli(["serve", "--port", "0"], { cwd: data.dir, env: data.env, timeoutMs: 20_000 });
      expect(result.code).toBe(2);
      expect(result.stderr).toContain(`data dir ${data.dataDir} is writable by other users (mode 0777)`);
      expect(result.stderr).toContain(`chmod 700 ${data.dataDir}`);
      expect(result.stderr).not.toContain("keygate listening");
    } finally {
      await chmod(data.dataDir, 0o700);
    }
  });
});
