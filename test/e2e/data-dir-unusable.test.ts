import { existsSync } from "node:fs";
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../support/keygate-process.js";

/**
 * Issue 15, item 5. `serve --data-dir /proc/x` spun at full CPU for ten
 * minutes without a word: Node's recursive mkdir loops forever when the
 * kernel refuses a directory with ENOENT although its parent exists. A path
 * under a regular file printed a raw stack trace. Every data dir that cannot
 * hold a database is now a usage error at once (exit 2), naming the path and
 * why, before any database work. Each command is killed after 20 s: a hang
 * fails the test rather than the suite.
 */

const TIMEOUT_MS = 20_000;
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "keygate-unusable-"));
});

afterAll(async () => {
  await chmod(join(root, "read-only"), 0o700).catch(() => undefined);
  await rm(root, { recursive: true, force: true });
});

async function serve(dataDir: string) {
  return runCli(["serve", "--data-dir", dataDir, "--port", "0"], { cwd: root, timeoutMs: TIMEOUT_MS });
}

function expectRefusedAtOnce(result: { code: number; stdout: string; stderr: string }, messages: string[]): void {
  expect(result.code, result.stderr).toBe(2);
  for (const message of messages) expect(result.stderr).toContain(message);
  expect(result.stdout + result.stderr).not.toContain("keygate listening");
  // keygate's own message, not a stack trace.
  expect(result.stderr).not.toMatch(/^\s+at /m);
}

const isRoot = process.getuid?.() === 0;

describe("a data dir that cannot hold a database is a clear error at once", () => {
  it.skipIf(!existsSync("/proc/self"))("serve --data-dir /proc/x (Node's recursive mkdir loops there forever)", async () => {
    const result = await serve("/proc/x");
    expectRefusedAtOnce(result, ["cannot create data dir /proc/x: ENOENT", "pass another --data-dir"]);
  }, TIMEOUT_MS + 5_000);

  it("serve --data-dir under a regular file", async () => {
    const file = join(root, "hostname");
    await writeFile(file, "not a directory\n");
    const dataDir = join(file, "x");
    const result = await serve(dataDir);
    expectRefusedAtOnce(result, [`cannot create data dir ${dataDir}: ENOTDIR, a parent in the path is a file, not a directory`]);
  }, TIMEOUT_MS + 5_000);

  // Root writes into a read-only dir regardless of its mode, so the case needs an ordinary user.
  it.skipIf(isRoot || process.platform === "win32")("serve --data-dir on a read-only dir, left as it was", async () => {
    const dataDir = join(root, "read-only");
    await mkdir(dataDir);
    await chmod(dataDir, 0o555);
    const result = await serve(dataDir);
    expectRefusedAtOnce(result, [`data dir ${dataDir} is not writable: EACCES, permission denied`]);
    expect((await stat(dataDir)).mode & 0o777).toBe(0o555);
  }, TIMEOUT_MS + 5_000);

  // The same probe for root: an existing dir of its own that no file can be created in.
  it.skipIf(!isRoot || !existsSync("/proc/1"))("serve --data-dir /proc/1 (an existing dir that cannot hold files), left as it was", async () => {
    const before = (await stat("/proc/1")).mode;
    const result = await serve("/proc/1");
    expectRefusedAtOnce(result, ["data dir /proc/1 is not writable: ENOENT, a file cannot be created there"]);
    expect((await stat("/proc/1")).mode).toBe(before);
  }, TIMEOUT_MS + 5_000);

  it.skipIf(!existsSync("/proc/self"))("commands that open the data refuse it the same way (keys list --data-dir /proc/x)", async () => {
    const result = await runCli(["keys", "list", "--data-dir", "/proc/x"], { cwd: root, timeoutMs: TIMEOUT_MS });
    expectRefusedAtOnce(result, ["cannot create data dir /proc/x: ENOENT"]);
  }, TIMEOUT_MS + 5_000);
});
