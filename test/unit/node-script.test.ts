import { spawnSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, rm, utimes, writeFile } from "node:fs/promises";
import { arch, platform, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";

/**
 * scripts/node.sh with a cache of fake binaries and an npm registry that
 * cannot be reached: what it does offline (the fetch itself is what CI's
 * Node 24 passes exercise).
 */
const SCRIPT = "scripts/node.sh";
const supported = platform() === "linux" && (arch() === "x64" || arch() === "arm64");

describe.runIf(supported)("scripts/node.sh, offline", () => {
  let cache: string;
  beforeEach(async () => {
    cache = await mkdtemp(join(tmpdir(), "keygate-node-cache-"));
  });
  afterEach(async () => {
    await rm(cache, { recursive: true, force: true });
  });

  /** A cached "build" whose node prints `prints` (its own version unless told otherwise). */
  async function fakeBuild(version: string, prints = `v${version}`): Promise<string> {
    const bin = join(cache, `node-v${version}`, "bin");
    await mkdir(bin, { recursive: true });
    await writeFile(join(bin, "node"), `#!/bin/sh\necho ${prints}\n`);
    await chmod(join(bin, "node"), 0o755);
    return bin;
  }

  function run(...args: string[]) {
    const result = spawnSync("bash", [SCRIPT, ...args], {
      encoding: "utf8",
      // A closed port: any registry question fails at once.
      env: { ...process.env, KEYGATE_NODE_CACHE: cache, npm_config_registry: "http://127.0.0.1:9/", npm_config_fetch_retries: "0" },
    });
    return { code: result.status, stdout: result.stdout.trim(), stderr: result.stderr.trim() };
  }

  it("prints the newest cached build of the line (by version, 24.10 after 24.9) without asking the registry while the last check is fresh", async () => {
    await fakeBuild("24.9.0");
    const newest = await fakeBuild("24.10.0");
    await fakeBuild("22.23.5");
    await writeFile(join(cache, ".checked-24"), "");
    expect(run("24")).toEqual({ code: 0, stdout: newest, stderr: "" });
  });

  it("keeps the cached build when the registry cannot be asked after a week", async () => {
    const bin = await fakeBuild("24.22.3");
    await writeFile(join(cache, ".checked-24"), "");
    const weekAgo = new Date(Date.now() - 8 * 24 * 3600 * 1000);
    await utimes(join(cache, ".checked-24"), weekAgo, weekAgo);
    const result = run("24");
    expect(result).toMatchObject({ code: 0, stdout: bin });
    expect(result.stderr).toContain("could not ask the registry");
  });

  it("uses an exact version when it is cached", async () => {
    const bin = await fakeBuild("24.9.0");
    await fakeBuild("24.10.0");
    expect(run("24.9.0")).toEqual({ code: 0, stdout: bin, stderr: "" });
  });

  it("fails, saying why, when nothing is cached and the registry cannot be reached", () => {
    const result = run("24");
    expect(result.code).toBe(1);
    expect(result.stdout).toBe("");
    expect(result.stderr).toContain("no node-linux-");
  });

  it("refuses a binary that is not of the line asked for", async () => {
    await fakeBuild("24.22.3", "v20.20.2");
    await writeFile(join(cache, ".checked-24"), "");
    const result = run("24");
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("is v20.20.2, not 24");
  });

  it.each(["", "24.x", "latest", "24.1"])("refuses %j as a line or version", (arg) => {
    const result = run(...(arg === "" ? [] : [arg]));
    expect(result.code).toBe(2);
    expect(result.stdout).toBe("");
  });
});
