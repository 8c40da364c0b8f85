import { watch as fsWatch } from "node:fs";
import { stat } from "node:fs/promises";
import type { Policy, PolicyInfo } from "./policy.js";

/**
 * Hot reload of the policy. The holder owns "the policy in force": a
 * reload loads and checks the whole directory first (loadPolicy), and only
 * a complete, valid policy with a new version replaces the old one, in a
 * single assignment; a broken one leaves the last good policy serving and
 * is remembered for `keygate status`. The watcher turns directory changes
 * (edits, atomic renames, Kubernetes ConfigMap "..data" symlink swaps) into
 * debounced reloads. Timers and the file system are injected, so both are
 * testable without a clock.
 */

export type ReloadOutcome =
  | { kind: "swapped"; trigger: string; at: Date; policy: Policy; previous: PolicyInfo }
  | { kind: "unchanged"; trigger: string; at: Date; policy: Policy }
  | { kind: "failed"; trigger: string; at: Date; error: Error; policy: Policy };

export interface PolicyReloadStatus {
  /** Policies swapped in since start (reloads that changed the version). */
  reloads: number;
  /** Reload attempts that failed (the previous policy kept serving). */
  failures: number;
  /** When the directory was last read and found valid (swapped or unchanged). */
  lastCheckedAt: Date | undefined;
  /** The latest failure, until a later reload succeeds. */
  lastError: { message: string; at: Date; trigger: string } | undefined;
}

export interface PolicyHolder {
  /** The policy in force now. Callers take it once per decision. */
  current(): Policy;
  /**
   * Loads the policy again and swaps it in when valid and of a new version.
   * Never throws; reloads run one at a time, and calls made while one runs
   * share a single follow-up reload (which sees every change made so far).
   */
  reload(trigger: string): Promise<ReloadOutcome>;
  status(): PolicyReloadStatus;
}

export interface PolicyHolderOptions {
  initial: Policy;
  /** Reads and checks the whole policy; throws (PolicyLoadError naming file:line) when it is broken. */
  load: () => Promise<Policy>;
  now?: () => Date;
}

export function createPolicyHolder({ initial, load, now = () => new Date() }: PolicyHolderOptions): PolicyHolder {
  let current = initial;
  let reloads = 0;
  let failures = 0;
  let lastCheckedAt: Date | undefined;
  let lastError: PolicyReloadStatus["lastError"];
  let running: Promise<ReloadOutcome> | undefined;
  let queued: Promise<ReloadOutcome> | undefined;

  async function attempt(trigger: string): Promise<ReloadOutcome> {
    const at = now();
    let next: Policy;
    try {
      next = await load();
    } catch (cause) {
      const error = cause instanceof Error ? cause : new Error(String(cause));
      failures++;
      lastError = { message: error.message, at, trigger };
      return { kind: "failed", trigger, at, error, policy: current };
    }
    lastCheckedAt = at;
    lastError = undefined;
    if (next.info.version === current.info.version) return { kind: "unchanged", trigger, at, policy: current };
    const previous = current.info;
    // The swap: every decision from here on takes the new policy (and its compiled index).
    current = next;
    reloads++;
    return { kind: "swapped", trigger, at, policy: next, previous };
  }

  function start(trigger: string): Promise<ReloadOutcome> {
    const run = attempt(trigger).finally(() => {
      if (running === run) running = undefined;
    });
    running = run;
    return run;
  }

  return {
    current: () => current,
    reload(trigger) {
      if (queued) return queued;
      if (!running) return start(trigger);
      // A reload is reading the directory now and may have missed this change: one more after it.
      const follow = running.then(() => {
        queued = undefined;
        return start(trigger);
      });
      queued = follow;
      return follow;
    },
    status: () => ({ reloads, failures, lastCheckedAt, lastError }),
  };
}

/** Runs fn after ms; returns a cancel function. Tests pass a manual scheduler. */
export type Schedule = (fn: () => void, ms: number) => () => void;

export const realSchedule: Schedule = (fn, ms) => {
  const timer = setTimeout(fn, ms);
  // A pending reload must not keep a stopping process alive.
  timer.unref();
  return () => clearTimeout(timer);
};

export interface Debouncer {
  /** (Re)starts the quiet period; the action runs once it has passed with no further call. */
  call(): void;
  cancel(): void;
}

/**
 * Trailing-edge debounce: a burst of calls runs the action once, `delayMs`
 * after the last. A steady stream of calls still runs it every `maxWaitMs`,
 * so a noisy directory cannot postpone a reload forever.
 */
export function createDebouncer(action: () => void, delayMs: number, schedule: Schedule = realSchedule, maxWaitMs = Math.max(delayMs * 10, 1_000)): Debouncer {
  let cancelQuiet: (() => void) | undefined;
  let cancelMax: (() => void) | undefined;
  const cancel = () => {
    cancelQuiet?.();
    cancelMax?.();
    cancelQuiet = cancelMax = undefined;
  };
  const fire = () => {
    cancel();
    action();
  };
  return {
    call() {
      cancelQuiet?.();
      cancelQuiet = schedule(fire, delayMs);
      cancelMax ??= schedule(fire, maxWaitMs);
    },
    cancel,
  };
}

/** What watchPolicy needs from the file system (a fake in tests). */
export interface WatchFs {
  /** Watches a directory's entries; `onEvent` gets the changed name when known. */
  watch(dir: string, onEvent: (name: string | undefined) => void, onError: (error: Error) => void): { close(): void };
  /** Identifies the directory itself (device and inode), undefined when it is gone. */
  identify(dir: string): Promise<string | undefined>;
}

export const nodeWatchFs: WatchFs = {
  watch(dir, onEvent, onError) {
    // Not persistent: watching alone never keeps the process running.
    const watcher = fsWatch(dir, { persistent: false }, (_event, name) => onEvent(name ?? undefined));
    watcher.on("error", onError);
    return { close: () => watcher.close() };
  },
  async identify(dir) {
    try {
      const info = await stat(dir);
      return `${info.dev}:${info.ino}`;
    } catch {
      return undefined;
    }
  },
};

export interface PolicyWatcherOptions {
  dir: string;
  holder: PolicyHolder;
  /** Quiet period after the last change before reloading (editors write in several steps). */
  debounceMs: number;
  /** Every reload's outcome, however triggered (log it here). */
  onOutcome: (outcome: ReloadOutcome) => void;
  /** The directory could not be watched, or was replaced; it is watched again when it is back. */
  onWatchError?: (error: Error) => void;
  schedule?: Schedule;
  fs?: WatchFs;
  /** How often to look for a vanished policy directory. */
  rewatchMs?: number;
}

export interface PolicyWatcher {
  /** Reload now (SIGHUP), skipping the debounce; resolves with the outcome. */
  reloadNow(trigger: string): Promise<ReloadOutcome>;
  /** True while the directory is being watched. */
  watching(): boolean;
  close(): void;
}

/**
 * Watches the policy directory itself rather than its files: an edit in
 * place, an editor's write-and-rename, and a ConfigMap's atomic "..data"
 * symlink swap all show up as events on the directory, and a directory
 * watch survives files being replaced. If the directory itself is removed
 * or replaced, it is watched again once it is back.
 */
export async function watchPolicy(options: PolicyWatcherOptions): Promise<PolicyWatcher> {
  const { dir, holder, debounceMs, onOutcome, onWatchError = () => {}, schedule = realSchedule, fs = nodeWatchFs, rewatchMs = 1_000 } = options;
  let closed = false;
  let handle: { close(): void } | undefined;
  let identity: string | undefined;
  let cancelRewatch: (() => void) | undefined;

  const reload = async (trigger: string) => {
    const outcome = await holder.reload(trigger);
    if (!closed) onOutcome(outcome);
    return outcome;
  };

  const debounced = createDebouncer(() => void checkThenReload(), debounceMs, schedule);

  async function checkThenReload(): Promise<void> {
    if (closed) return;
    // Removed or replaced directory: the old watch sees nothing more, so watch the new one.
    if ((await fs.identify(dir)) !== identity) {
      stopWatching();
      onWatchError(new Error(`policy directory ${dir} was removed or replaced; watching for it again`));
      rewatchSoon(0);
    }
    await reload("file change");
  }

  function stopWatching(): void {
    handle?.close();
    handle = undefined;
  }

  async function startWatching(): Promise<boolean> {
    const id = await fs.identify(dir);
    if (closed || id === undefined) return false;
    try {
      handle = fs.watch(dir, () => debounced.call(), (error) => {
        stopWatching();
        onWatchError(error);
        rewatchSoon(rewatchMs);
      });
      identity = id;
      return true;
    } catch (error) {
      onWatchError(error as Error);
      return false;
    }
  }

  function rewatchSoon(ms: number): void {
    cancelRewatch?.();
    cancelRewatch = schedule(() => {
      cancelRewatch = undefined;
      void startWatching().then((ok) => {
        if (closed) return;
        if (ok) debounced.call(); // changes made while unwatched
        else rewatchSoon(rewatchMs);
      });
    }, ms);
  }

  if (await startWatching()) debounced.call(); // a change made between the first load and now
  else rewatchSoon(rewatchMs);

  return {
    reloadNow(trigger) {
      debounced.cancel(); // this reload reads everything a pending one would
      return reload(trigger);
    },
    watching: () => handle !== undefined,
    close() {
      closed = true;
      debounced.cancel();
      cancelRewatch?.();
      stopWatching();
    },
  };
}
