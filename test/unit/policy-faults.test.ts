import { copyFile, mkdtemp, readFile, rm, writeFile, appendFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { lintPolicy } from "../../src/policy-tools/lint.js";
import { readPolicySource } from "../../src/core/policy/policy-source.js";
import { loadPolicy, PolicyLoadError } from "../../src/core/policy/policy.js";
import { createPolicyHolder, watchPolicy, type PolicyWatcher, type ReloadOutcome } from "../../src/core/policy/policy-watcher.js";

/**
 * What a broken or half-written policy file reads as: never a policy that
 * decides differently from what its author wrote. An empty file, a NUL byte,
 * bytes that are not UTF-8 and a matcher naming an unknown field are errors
 * with file:line; a file still being written is waited for; a directory that
 * keeps changing is an error. What cannot be told apart (a prefix that ends
 * on a line boundary and then stays still) is read as the policy it is.
 */

const POLICY_DIR = join(import.meta.dirname, "../../policies");
let dir: string;
let watcher: PolicyWatcher | undefined;
let shipped: string;

afterEach(async () => {
  watcher?.close();
  watcher = undefined;
  await rm(dir, { recursive: true, force: true });
});

async function policyDir(csv?: string): Promise<string> {
  dir = await mkdtemp(join(tmpdir(), "keygate-policy-faults-"));
  shipped ??= await readFile(join(POLICY_DIR, "policy.csv"), "utf8");
  await copyFile(join(POLICY_DIR, "model.conf"), join(dir, "model.conf"));
  await writeFile(join(dir, "policy.csv"), csv ?? shipped);
  return dir;
}

async function loadError(path: string): Promise<string> {
  const error = await loadPolicy(path).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PolicyLoadError);
  return (error as Error).message;
}

describe("files that are no policy", () => {
  it.each([
    ["an empty file (truncated, not yet written)", Buffer.alloc(0), /^policy\.csv: is empty \(0 bytes\)/],
    ["a NUL byte", Buffer.from("# ok\np, reader, *, *, /sand\0boxes, ^GET$\n"), /^policy\.csv:2: contains a NUL byte/],
    ["bytes that are not UTF-8", Buffer.from([...Buffer.from("# ok\n# fine\np, reader, *, *, /sand"), 0xff, ...Buffer.from("boxes, ^GET$\n")]), /^policy\.csv:3: is not valid UTF-8/],
  ])("%s is refused, naming the file (and line)", async (_label, bytes, message) => {
    const path = await policyDir();
    await writeFile(join(path, "policy.csv"), bytes);
    expect(await loadError(path)).toMatch(message);
    expect(lintPolicy(await readPolicySource(path)).filter((d) => d.severity === "error").map((d) => `${d.where}: ${d.message}`)).toEqual([expect.stringMatching(message)]);
  });

  it("a comment-only file is still a valid policy with no rules (it says so on purpose)", async () => {
    const path = await policyDir("# nothing yet\n");
    expect((await loadPolicy(path)).info.rules).toBe(0);
  });

  it.each([
    ["p.route", "keyMatch2(r.path, p.route)", /^model\.conf:23: the matcher uses p\.route, but "p" has no field "route" \(it has sub, org, ns, path, method\)$/],
    ["r.url", "keyMatch2(r.url, p.path)", /^model\.conf:23: the matcher uses r\.url, but "r" has no field "url"/],
    ["r2.path (no r2 definition)", "keyMatch2(r2.path, p.path)", /^model\.conf:23: the matcher uses r2\.path, but there is no "r2" definition$/],
  ])("a matcher naming an unknown field (%s) is refused, where Casbin would quietly decide on undefined", async (_label, call, message) => {
    const path = await policyDir();
    const model = await readFile(join(POLICY_DIR, "model.conf"), "utf8");
    expect(model.split("\n")[22]).toContain("keyMatch2(r.path, p.path)");
    await writeFile(join(path, "model.conf"), model.replace("keyMatch2(r.path, p.path)", call));
    expect(await loadError(path)).toMatch(message);
    expect(lintPolicy(await readPolicySource(path)).map((d) => `${d.where}: ${d.message}`)).toContainEqual(expect.stringMatching(message));
  });
});

describe("a file being written", () => {
  const lines = () => shipped.split("\n");
  /** The shipped policy cut after its reader rules: valid, and missing writer and admin. */
  const validPrefix = () => `${lines().slice(0, 27).join("\n")}\n`;

  it("a file modified less than the settle time ago is waited for, and read once complete", async () => {
    const path = await policyDir();
    const full = await loadPolicy(path);
    await writeFile(join(path, "policy.csv"), validPrefix());
    expect((await loadPolicy(path, undefined)).info.rules).toBeLessThan(full.info.rules); // the prefix alone is a valid policy
    await writeFile(join(path, "policy.csv"), validPrefix());
    const finishing = sleep(60).then(() => appendFile(join(path, "policy.csv"), shipped.slice(validPrefix().length)));
    const started = performance.now();
    const source = await readPolicySource(path, { settleMs: 150 });
    await finishing;
    expect(performance.now() - started).toBeGreaterThanOrEqual(140);
    expect(source.diagnostics).toEqual([]);
    expect(source.version).toBe(full.info.version);
  });

  it("a directory that keeps changing is an error, never what was caught mid-write", async () => {
    const path = await policyDir();
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        await appendFile(join(path, "policy.csv"), `p, r${i}, *, *, /x, ^GET$\n`);
        await sleep(10);
      }
    })();
    const source = await readPolicySource(path, { settleMs: 40, attempts: 3 });
    writing = false;
    await writer;
    expect(source.diagnostics).toContainEqual({ where: "", severity: "error", message: `policy files in ${path} kept changing while being read (3 attempts, 40 ms apart); not loaded` });
  });

  it("a prefix that ends on a line boundary and then stays still is read as the policy it is (write atomically)", async () => {
    const path = await policyDir(validPrefix());
    await sleep(120);
    const source = await readPolicySource(path, { settleMs: 100 });
    expect(source.diagnostics).toEqual([]);
    expect(source.rules.every((r) => r.sub === "reader")).toBe(true);
  });

  it("watched: a file written in place in two chunks (a valid prefix first) never puts the prefix in force", async () => {
    const path = await policyDir();
    const holder = createPolicyHolder({ initial: await loadPolicy(path), load: () => loadPolicy(path) });
    const outcomes: ReloadOutcome[] = [];
    watcher = await watchPolicy({ dir: path, holder, debounceMs: 20, onOutcome: (o) => outcomes.push(o) });
    await sleep(150); // the start-up check
    const prefixVersion = (await loadPolicy(await policyDir2(validPrefix()))).info.version;
    const versions = new Set<string>();
    const sampling = setInterval(() => versions.add(holder.current().info.version), 1);
    // Both chunks within the settle time: the prefix was on disk, alone, for 50 ms (more than the 20 ms debounce).
    const updated = shipped + "p, auditor, *, *, /audit, ^GET$\n";
    await writeFile(join(path, "policy.csv"), validPrefix());
    await sleep(50);
    await appendFile(join(path, "policy.csv"), updated.slice(validPrefix().length));
    for (let i = 0; i < 100 && !outcomes.some((o) => o.kind === "swapped"); i++) await sleep(10);
    await sleep(200);
    clearInterval(sampling);
    expect(outcomes.filter((o) => o.kind !== "unchanged").map((o) => o.kind)).toEqual(["swapped"]);
    expect(versions).not.toContain(prefixVersion);
    expect(holder.current().decide({ roles: ["auditor"], org: "acme", namespace: "default", path: "/audit", method: "GET" }).allowed).toBe(true);
  });
});

/** A second temp dir (for computing a version), removed with the test's. */
async function policyDir2(csv: string): Promise<string> {
  const other = await mkdtemp(join(dir, "v-"));
  await copyFile(join(POLICY_DIR, "model.conf"), join(other, "model.conf"));
  await writeFile(join(other, "policy.csv"), csv);
  return other;
}
