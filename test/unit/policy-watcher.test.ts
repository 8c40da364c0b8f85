import { NO_ROUTES } from "../../src/core/policy/policy-routes.js";
import { cp, mkdir, mkdtemp, readFile, rename, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadPolicy, PolicyLoadError, type Policy } from "../../src/core/policy/policy.js";
import {
  createDebouncer,
  createPolicyHolder,
  watchPolicy,
  type PolicyWatcher,
  type ReloadOutcome,
  type Schedule,
  type WatchFs,
} from "../../src/core/policy/policy-watcher.js";

/**
 * The policy holder and watcher: a reload swaps in only a complete, valid
 * policy of a new version; a broken one keeps the last good policy and is
 * remembered; bursts of changes are debounced into one reload. Timers run on
 * a virtual scheduler and the file system is a fake, except in the last
 * tests, which watch a real directory laid out as Kubernetes mounts a ConfigMap.
 */

function fakePolicy(version: string): Policy {
  return {
    info: { dir: "/policies", files: ["policy.csv"], rules: 1, version, loadedAt: new Date(0), engine: "compiled" },
    rules: [],
    links: [],
    routes: NO_ROUTES,
    decide: () => ({ allowed: version === "allows", rule: "" }),
    explain: () => [],
    inheritedRoles: async () => new Set(),
  };
}

/** A loader whose next results the test decides; each call takes one. */
function scriptedLoader() {
  const results: (Policy | Error)[] = [];
  let calls = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  let gate: Promise<void> = Promise.resolve();
  return {
    next(...items: (Policy | Error)[]) {
      results.push(...items);
    },
    /** Loads wait until the returned function is called. */
    hold(): () => void {
      let open!: () => void;
      gate = new Promise((resolve) => (open = resolve));
      return open;
    },
    get calls() {
      return calls;
    },
    get maxInFlight() {
      return maxInFlight;
    },
    load: async (): Promise<Policy> => {
      calls++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      try {
        await gate;
        const result = results.shift();
        if (result === undefined) throw new Error("test loader: no result scripted");
        if (result instanceof Error) throw result;
        return result;
      } finally {
        inFlight--;
      }
    },
  };
}

/** Virtual time: scheduled callbacks run only when the test advances it. */
function virtualScheduler() {
  let now = 0;
  const tasks: { due: number; fn: () => void; cancelled: boolean }[] = [];
  const schedule: Schedule = (fn, ms) => {
    const task = { due: now + ms, fn, cancelled: false };
    tasks.push(task);
    return () => {
      task.cancelled = true;
    };
  };
  return {
    schedule,
    pending: () => tasks.filter((t) => !t.cancelled).length,
    advance(ms: number) {
      const until = now + ms;
      for (;;) {
        const due = tasks.filter((t) => !t.cancelled && t.due <= until).sort((a, b) => a.due - b.due)[0];
        if (!due) break;
        now = due.due;
        due.cancelled = true;
        due.fn();
      }
      now = until;
    },
  };
}

const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

describe("createPolicyHolder", () => {
  const at = new Date("2026-11-25T10:00:00Z");

  it("a good reload with a new version swaps the policy in", async () => {
    const loader = scriptedLoader();
    const holder = createPolicyHolder({ initial: fakePolicy("v1"), load: loader.load, now: () => at });
    const v2 = fakePolicy("v2");
    loader.next(v2);
    const outcome = await holder.reload("test");
    expect(outcome).toMatchObject({ kind: "swapped", trigger: "test", at, policy: v2, previous: { version: "v1" } });
    expect(holder.current()).toBe(v2);
    expect(holder.status()).toEqual({ reloads: 1, failures: 0, lastCheckedAt: at, lastError: undefined });
  });

  it("a broken reload keeps the old policy and records the error with its time, until a good one", async () => {
    const loader = scriptedLoader();
    const v1 = fakePolicy("v1");
    let clock = at;
    const holder = createPolicyHolder({ initial: v1, load: loader.load, now: () => clock });
    loader.next(new PolicyLoadError('policy.csv:4: a "p" line has 5 fields, this one has 3'));
    const failed = await holder.reload("file change");
    expect(failed).toMatchObject({ kind: "failed", policy: v1, error: { message: 'policy.csv:4: a "p" line has 5 fields, this one has 3' } });
    expect(holder.current()).toBe(v1);
    expect(holder.status()).toEqual({
      reloads: 0,
      failures: 1,
      lastCheckedAt: undefined,
      lastError: { message: 'policy.csv:4: a "p" line has 5 fields, this one has 3', at, trigger: "file change" },
    });

    clock = new Date(at.getTime() + 60_000);
    const v2 = fakePolicy("v2");
    loader.next(v2);
    expect(await holder.reload("SIGHUP")).toMatchObject({ kind: "swapped", policy: v2 });
    expect(holder.status()).toEqual({ reloads: 1, failures: 1, lastCheckedAt: clock, lastError: undefined });
  });

  it("a loader that fails with something other than a PolicyLoadError still keeps the old policy", async () => {
    const loader = scriptedLoader();
    const v1 = fakePolicy("v1");
    const holder = createPolicyHolder({ initial: v1, load: loader.load });
    loader.next(new Error("EACCES: permission denied, open 'policy.csv'"));
    expect(await holder.reload("test")).toMatchObject({ kind: "failed", error: { message: "EACCES: permission denied, open 'policy.csv'" } });
    expect(holder.current()).toBe(v1);
  });

  it("the same version again is no swap: the policy in force stays the same object", async () => {
    const loader = scriptedLoader();
    const v1 = fakePolicy("v1");
    const holder = createPolicyHolder({ initial: v1, load: loader.load, now: () => at });
    loader.next(fakePolicy("v1"));
    expect(await holder.reload("test")).toMatchObject({ kind: "unchanged", policy: v1 });
    expect(holder.current()).toBe(v1);
    expect(holder.status()).toMatchObject({ reloads: 0, failures: 0, lastCheckedAt: at });
  });

  it("reloads never overlap; calls during one share a single follow-up that ends with the newest policy", async () => {
    const loader = scriptedLoader();
    const holder = createPolicyHolder({ initial: fakePolicy("v1"), load: loader.load });
    loader.next(fakePolicy("v2"), fakePolicy("v3"));
    const open = loader.hold();
    const first = holder.reload("a");
    const second = holder.reload("b");
    const third = holder.reload("c");
    expect(second).toBe(third);
    open();
    expect(await first).toMatchObject({ kind: "swapped", policy: { info: { version: "v2" } } });
    expect(await second).toMatchObject({ kind: "swapped", policy: { info: { version: "v3" } }, previous: { version: "v2" } });
    expect(loader.calls).toBe(2);
    expect(loader.maxInFlight).toBe(1);
    expect(holder.current().info.version).toBe("v3");
  });
});

describe("createDebouncer", () => {
  it("a burst of calls runs the action once, after the quiet period following the last", () => {
    const timers = virtualScheduler();
    let runs = 0;
    const debounced = createDebouncer(() => runs++, 200, timers.schedule);
    for (let i = 0; i < 5; i++) {
      debounced.call();
      timers.advance(100);
    }
    expect(runs).toBe(0);
    timers.advance(99);
    expect(runs).toBe(0);
    timers.advance(1);
    expect(runs).toBe(1);
    timers.advance(10_000);
    expect(runs).toBe(1);
    expect(timers.pending()).toBe(0);
  });

  it("a steady stream of calls still runs the action every max wait", () => {
    const timers = virtualScheduler();
    let runs = 0;
    const debounced = createDebouncer(() => runs++, 200, timers.schedule, 1_000);
    for (let i = 0; i < 25; i++) {
      debounced.call();
      timers.advance(100);
    }
    expect(runs).toBe(2); // at 1000 and 2100: never starved
  });

  it("cancel drops a pending run", () => {
    const timers = virtualScheduler();
    let runs = 0;
    const debounced = createDebouncer(() => runs++, 200, timers.schedule);
    debounced.call();
    debounced.cancel();
    timers.advance(10_000);
    expect(runs).toBe(0);
  });
});

/** A directory that the test changes by calling its listeners. */
function fakeFs(): WatchFs & { change(name?: string): void; fail(error: Error): void; identity: string | undefined; watches: number; open: number } {
  let listeners: { onEvent: (name: string | undefined) => void; onError: (error: Error) => void; closed: boolean }[] = [];
  const fs = {
    identity: "1:100" as string | undefined,
    watches: 0,
    get open() {
      return listeners.filter((l) => !l.closed).length;
    },
    watch(_dir: string, onEvent: (name: string | undefined) => void, onError: (error: Error) => void) {
      const listener = { onEvent, onError, closed: false };
      listeners.push(listener);
      fs.watches++;
      return { close: () => void (listener.closed = true) };
    },
    identify: async () => fs.identity,
    change(name = "policy.csv") {
      for (const l of listeners) if (!l.closed) l.onEvent(name);
    },
    fail(error: Error) {
      for (const l of listeners) if (!l.closed) l.onError(error);
      listeners = listeners.filter((l) => !l.closed);
    },
  };
  return fs;
}

describe("watchPolicy", () => {
  let watcher: PolicyWatcher | undefined;
  afterEach(() => watcher?.close());

  async function setup(debounceMs = 200) {
    const timers = virtualScheduler();
    const fs = fakeFs();
    const loader = scriptedLoader();
    const holder = createPolicyHolder({ initial: fakePolicy("v1"), load: loader.load });
    const outcomes: ReloadOutcome[] = [];
    const watchErrors: string[] = [];
    watcher = await watchPolicy({
      dir: "/policies",
      holder,
      debounceMs,
      onOutcome: (o) => outcomes.push(o),
      onWatchError: (e) => watchErrors.push(e.message),
      schedule: timers.schedule,
      fs,
      rewatchMs: 1_000,
    });
    // The start-up check (a change made between the first load and watching).
    loader.next(fakePolicy("v1"));
    timers.advance(debounceMs);
    await settle();
    expect(outcomes.splice(0)).toMatchObject([{ kind: "unchanged", trigger: "file change" }]);
    return { timers, fs, loader, holder, outcomes, watchErrors, watcher };
  }

  it("a burst of file events is one reload, after the debounce", async () => {
    const { timers, fs, loader, holder, outcomes } = await setup();
    loader.next(fakePolicy("v2"));
    fs.change("..2026_11_25_10_00_00.1");
    fs.change("..data_tmp");
    fs.change("..data");
    timers.advance(199);
    await settle();
    expect(loader.calls).toBe(1);
    timers.advance(1);
    await settle();
    expect(loader.calls).toBe(2);
    expect(outcomes).toMatchObject([{ kind: "swapped", trigger: "file change", policy: { info: { version: "v2" } } }]);
    expect(holder.current().info.version).toBe("v2");
  });

  it("reloadNow (SIGHUP) skips the debounce and cancels the pending reload", async () => {
    const { timers, fs, loader, outcomes } = await setup(3_600_000);
    fs.change();
    loader.next(fakePolicy("v2"));
    expect(await watcher!.reloadNow("SIGHUP")).toMatchObject({ kind: "swapped", trigger: "SIGHUP" });
    timers.advance(3_600_000);
    await settle();
    expect(loader.calls).toBe(2);
    expect(outcomes).toMatchObject([{ kind: "swapped", trigger: "SIGHUP" }]);
  });

  it("a replaced policy directory is watched again and reloaded", async () => {
    const { timers, fs, loader, outcomes, watchErrors } = await setup();
    fs.identity = undefined; // removed
    loader.next(new PolicyLoadError("model.conf: cannot read /policies/model.conf"));
    fs.change("policies");
    timers.advance(200);
    await settle();
    expect(outcomes.splice(0)).toMatchObject([{ kind: "failed" }]);
    expect(watchErrors).toEqual(["policy directory /policies was removed or replaced; watching for it again"]);
    expect(watcher!.watching()).toBe(false);

    timers.advance(5_000); // still gone: keeps looking
    await settle();
    expect(watcher!.watching()).toBe(false);

    fs.identity = "1:200"; // back, as a new directory
    loader.next(fakePolicy("v2"));
    timers.advance(1_000);
    await settle();
    expect(watcher!.watching()).toBe(true);
    timers.advance(200);
    await settle();
    expect(outcomes).toMatchObject([{ kind: "swapped", policy: { info: { version: "v2" } } }]);
    expect(fs.open).toBe(1);
  });

  it("a watch error is reported and the directory watched again", async () => {
    const { timers, fs, watchErrors } = await setup();
    fs.fail(new Error("EMFILE: too many open files, watch"));
    expect(watchErrors).toEqual(["EMFILE: too many open files, watch"]);
    expect(watcher!.watching()).toBe(false);
    timers.advance(1_000);
    await settle();
    expect(watcher!.watching()).toBe(true);
    expect(fs.watches).toBe(2);
  });

  it("after close, changes reload nothing and nothing stays scheduled", async () => {
    const { timers, fs, loader } = await setup();
    watcher!.close();
    fs.change();
    timers.advance(10_000);
    await settle();
    expect(loader.calls).toBe(1);
    expect(timers.pending()).toBe(0);
    expect(fs.open).toBe(0);
  });
});

describe("watchPolicy on a real directory", () => {
  const SHIPPED = join(import.meta.dirname, "../../policies");
  let root: string;
  let watcher: PolicyWatcher | undefined;

  afterEach(async () => {
    watcher?.close();
    await rm(root, { recursive: true, force: true });
  });

  /** Watches `dir` for real; resolves the next outcome of the given kind. */
  async function watchReal(dir: string) {
    const holder = createPolicyHolder({ initial: await loadPolicy(dir), load: () => loadPolicy(dir) });
    const waiting: { kind: ReloadOutcome["kind"]; resolve: (o: ReloadOutcome) => void }[] = [];
    watcher = await watchPolicy({
      dir,
      holder,
      debounceMs: 20,
      onOutcome: (outcome) => {
        const index = waiting.findIndex((w) => w.kind === outcome.kind);
        if (index !== -1) waiting.splice(index, 1)[0]!.resolve(outcome);
      },
    });
    const next = (kind: ReloadOutcome["kind"]) => new Promise<ReloadOutcome>((resolve) => waiting.push({ kind, resolve }));
    return { holder, next };
  }

  const withRule = (text: string, rule: string) => `${text}\n${rule}\n`;

  it("a Kubernetes ConfigMap update (atomic ..data symlink swap) is picked up", async () => {
    root = await mkdtemp(join(tmpdir(), "keygate-configmap-"));
    const dir = join(root, "policies");
    const shipped = await readFile(join(SHIPPED, "policy.csv"), "utf8");
    // What the kubelet makes: files are symlinks through "..data" to a timestamped directory.
    await mkdir(join(dir, "..2026_11_25_10_00_00.1"), { recursive: true });
    await cp(join(SHIPPED, "model.conf"), join(dir, "..2026_11_25_10_00_00.1/model.conf"));
    await writeFile(join(dir, "..2026_11_25_10_00_00.1/policy.csv"), shipped);
    await symlink("..2026_11_25_10_00_00.1", join(dir, "..data"));
    await symlink("..data/model.conf", join(dir, "model.conf"));
    await symlink("..data/policy.csv", join(dir, "policy.csv"));
    const { holder, next } = await watchReal(dir);
    const before = holder.current().info.version;

    const swapped = next("swapped");
    await mkdir(join(dir, "..2026_11_25_10_05_00.2"));
    await cp(join(SHIPPED, "model.conf"), join(dir, "..2026_11_25_10_05_00.2/model.conf"));
    await writeFile(join(dir, "..2026_11_25_10_05_00.2/policy.csv"), withRule(shipped, "p, auditor, *, *, /audit, ^GET$"));
    await symlink("..2026_11_25_10_05_00.2", join(dir, "..data_tmp"));
    await rename(join(dir, "..data_tmp"), join(dir, "..data"));
    await rm(join(dir, "..2026_11_25_10_00_00.1"), { recursive: true });

    const outcome = await swapped;
    expect(outcome.policy.info.version).not.toBe(before);
    expect(holder.current().decide({ roles: ["auditor"], org: "acme", namespace: "default", path: "/audit", method: "GET" })).toMatchObject({ allowed: true });
  });

  it("an atomic rename over policy.csv is picked up", async () => {
    root = await mkdtemp(join(tmpdir(), "keygate-rename-"));
    const dir = join(root, "policies");
    await cp(SHIPPED, dir, { recursive: true });
    const { holder, next } = await watchReal(dir);
    const swapped = next("swapped");
    await writeFile(join(dir, ".policy.csv.tmp"), "p, auditor, *, *, /audit, ^GET$\n");
    await rename(join(dir, ".policy.csv.tmp"), join(dir, "policy.csv"));
    await swapped;
    expect(holder.current().info.rules).toBe(1);
  });
});
