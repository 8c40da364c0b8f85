import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { acquireLock, isHolderAlive, LOCK_FILE, procStat, readLockOwner, type LockOwner } from "../../src/core/db/data-dir-lock.js";

/**
 * The data-dir lock after a crash: a holder killed with SIGKILL leaves its
 * lock behind, and the next start must take it over, also when the dead
 * holder is an unreaped zombie (kill(pid, 0) still succeeds) or its pid now
 * belongs to another process; a live holder keeps it. Linux only where /proc
 * is needed.
 */

const onLinux = process.platform === "linux";
let dir: string;
const children: ChildProcess[] = [];

afterEach(async () => {
  for (const child of children.splice(0)) child.kill("SIGKILL");
  await rm(dir, { recursive: true, force: true });
});

async function freshDir(): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), "keygate-lock-"));
  return dir;
}

async function writeLock(owner: Partial<LockOwner> & { pid: number }): Promise<void> {
  await writeFile(join(dir, LOCK_FILE), JSON.stringify({ host: hostname(), role: "server", since: "2026-11-25T00:00:00.000Z", ...owner }));
}

/** A process that runs until the test ends. */
function liveProcess(): ChildProcess {
  const child = spawn("sleep", ["30"], { stdio: "ignore" });
  children.push(child);
  return child;
}

/** The pid of a zombie: `sh` starts a short sleep, then becomes a long sleep that never reaps it. */
async function zombiePid(): Promise<number> {
  const child = spawn("sh", ["-c", "sleep 0.05 & echo $!; exec sleep 30"], { stdio: ["ignore", "pipe", "ignore"] });
  children.push(child);
  const pid = await new Promise<number>((resolve) => child.stdout!.once("data", (chunk: Buffer) => resolve(Number(chunk.toString().trim()))));
  for (let i = 0; i < 200 && (await procStat(pid))?.state !== "Z"; i++) await sleep(10);
  return pid;
}

describe("acquireLock after a crash", () => {
  it("takes over the lock of a holder that is gone", async () => {
    await freshDir();
    const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
    await new Promise((resolve) => child.on("close", resolve));
    await writeLock({ pid: child.pid! });
    const result = await acquireLock(dir, "server");
    expect(result.ok).toBe(true);
    expect(JSON.parse(await readFile(join(dir, LOCK_FILE), "utf8"))).toMatchObject({ pid: process.pid, role: "server" });
  });

  it.runIf(onLinux)("takes over the lock of a holder killed and not yet reaped (a zombie still answers kill(pid, 0))", async () => {
    await freshDir();
    const pid = await zombiePid();
    expect((await procStat(pid))?.state).toBe("Z");
    expect(() => process.kill(pid, 0)).not.toThrow();
    await writeLock({ pid });
    expect(await readLockOwner(dir)).toBeUndefined();
    expect((await acquireLock(dir, "server")).ok).toBe(true);
  });

  it("refuses while the holder runs (also a lock from a keygate that recorded no start time)", async () => {
    await freshDir();
    const holder = liveProcess();
    const stat = await procStat(holder.pid!);
    await writeLock({ pid: holder.pid!, ...(stat && { startTime: stat.startTime }) });
    expect(await acquireLock(dir, "server")).toMatchObject({ ok: false, owner: { pid: holder.pid } });
    await writeLock({ pid: holder.pid! });
    expect(await acquireLock(dir, "server")).toMatchObject({ ok: false, owner: { pid: holder.pid } });
    expect(await readLockOwner(dir)).toMatchObject({ pid: holder.pid });
  });

  it.runIf(onLinux)("takes over a lock whose pid now belongs to another process (other start time, or another boot)", async () => {
    await freshDir();
    const other = liveProcess();
    const stat = (await procStat(other.pid!))!;
    expect(await isHolderAlive({ pid: other.pid!, startTime: stat.startTime })).toBe(true);
    expect(await isHolderAlive({ pid: other.pid!, startTime: String(Number(stat.startTime) - 1) })).toBe(false);
    expect(await isHolderAlive({ pid: other.pid!, startTime: stat.startTime, bootId: "00000000-0000-0000-0000-000000000000" })).toBe(false);
    await writeLock({ pid: other.pid!, startTime: String(Number(stat.startTime) - 1) });
    expect((await acquireLock(dir, "server")).ok).toBe(true);
  });

  it.runIf(onLinux)("records the holder's start time and boot, so a later process with its pid is not taken for it", async () => {
    await freshDir();
    const result = await acquireLock(dir, "server");
    if (!result.ok) throw new Error("expected the lock");
    const written = JSON.parse(await readFile(join(dir, LOCK_FILE), "utf8")) as LockOwner;
    expect(written).toMatchObject({ pid: process.pid, startTime: (await procStat(process.pid))!.startTime, bootId: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    await result.lock.update({ socket: "/tmp/keygate.sock" });
    expect(JSON.parse(await readFile(join(dir, LOCK_FILE), "utf8"))).toMatchObject({ startTime: written.startTime, socket: "/tmp/keygate.sock" });
    await result.lock.release();
    await expect(readFile(join(dir, LOCK_FILE))).rejects.toThrow(/ENOENT/);
  });

  it("a reader never sees the lock half-written while the holder rewrites it", async () => {
    await freshDir();
    const result = await acquireLock(dir, "server");
    if (!result.ok) throw new Error("expected the lock");
    let writing = true;
    const writer = (async () => {
      for (let i = 0; i < 300; i++) await result.lock.update({ socket: `/tmp/keygate-${i}-${"x".repeat(i % 50)}.sock` });
      writing = false;
    })();
    let reads = 0;
    while (writing) {
      const text = await readFile(join(dir, LOCK_FILE), "utf8");
      expect(() => JSON.parse(text)).not.toThrow();
      reads++;
    }
    await writer;
    expect(reads).toBeGreaterThan(10);
    // A second process would be refused throughout: the lock names a live pid (this one) and is always readable.
    expect((await readFile(join(dir, LOCK_FILE), "utf8")).length).toBeGreaterThan(0);
  });
});
