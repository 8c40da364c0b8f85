import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/**
 * Child processes for the benches: `keygate serve`, the bench's own server
 * scripts and the CLI. Paths are relative to the compiled file
 * (dist/bench/support/), which is the only place the benches run from.
 */
export const BIN = fileURLToPath(new URL("../../../bin/keygate.js", import.meta.url));
export const POLICY_DIR = fileURLToPath(new URL("../../../policies/", import.meta.url));
/** The compiled bench server scripts (bench/servers/*.ts). */
export const SERVERS_DIR = fileURLToPath(new URL("../servers/", import.meta.url));

/** Every child still running is killed when the bench exits, however it exits. */
const running = new Set<ChildProcess>();
process.once("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** Registers a child so that it never outlives the bench. */
export function track(child: ChildProcess): ChildProcess {
  running.add(child);
  child.once("exit", () => running.delete(child));
  return child;
}

/**
 * The bench's environment without keygate settings of its own (a
 * DATABASE_URL or KEYGATE_LOG_LEVEL exported in the shell would change what
 * is measured), plus the repository's policy and `extra`.
 */
export function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    if (!/^(KEYGATE_|DATABASE_URL$|REDIS_URL$|PORT$)/.test(name)) env[name] = value;
  }
  return { ...env, KEYGATE_POLICY_DIR: POLICY_DIR, ...extra };
}

export function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

export interface ServerProcess {
  url: string;
  port: number;
  pid: number;
  child: ChildProcess;
  /** Spawn to the "listening" line, as the bench saw it (Node start, module load, database open, listen). */
  readyMs: number;
  /** `startup_ms` from keygate's listening line (in-process, from config read to listening), when it logs one. */
  startupMs: number | undefined;
  /** The tail of what it logged, shown when the bench fails. */
  output(): string;
  /** The first match of pattern in what it logs from now on. */
  waitFor(pattern: RegExp, timeoutMs?: number): Promise<RegExpExecArray>;
  /** SIGTERM, then wait for the exit. */
  stop(): Promise<void>;
}

/** `keygate listening`, `bare listening`, … : a JSON log line naming the address, as keygate's logger writes it. */
const LISTENING = /"msg":"[a-z -]*listening","address":"[^"]*:(\d+)"[^\n]*/;

export interface SpawnOptions {
  env: Record<string, string>;
  cwd: string;
  /** Extra arguments for node itself (e.g. --cpu-prof). */
  nodeArgs?: string[];
  /** The node executable: the bench's own (process.execPath) unless set, e.g. another Node line's from nodeLine(). */
  node?: string;
  timeoutMs?: number;
}

/** `node ARGS…`, ready once it logs a listening line with its port. */
export function spawnListening(args: string[], { env, cwd, nodeArgs = [], node = process.execPath, timeoutMs = 30_000 }: SpawnOptions): Promise<ServerProcess> {
  return new Promise((resolve, reject) => {
    const spawned = performance.now();
    const child = track(spawn(node, [...nodeArgs, ...args], { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] }));
    let output = "";
    let started = false;
    /** Output since each waitFor began, and what it waits for. */
    const waiters = new Set<{ text: string; check(text: string): void }>();
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${args.join(" ")} did not start in ${timeoutMs / 1000} s:\n${output}`));
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-16_384);
      for (const waiter of waiters) {
        waiter.text += chunk.toString();
        waiter.check(waiter.text);
      }
      if (started) return;
      const match = LISTENING.exec(output);
      if (!match) return;
      const readyMs = performance.now() - spawned;
      clearTimeout(timer);
      started = true;
      const port = Number(match[1]);
      const startup = /"startup_ms":(\d+)/.exec(match[0]);
      resolve({
        url: `http://127.0.0.1:${port}`,
        port,
        pid: child.pid!,
        child,
        readyMs,
        startupMs: startup ? Number(startup[1]) : undefined,
        output: () => output,
        waitFor(pattern, waitMs = 30_000) {
          return new Promise((resolveMatch, rejectMatch) => {
            const waiter = {
              text: "",
              check(text: string) {
                const found = pattern.exec(text);
                if (!found) return;
                waiters.delete(waiter);
                clearTimeout(timeout);
                resolveMatch(found);
              },
            };
            const timeout = setTimeout(() => {
              waiters.delete(waiter);
              rejectMatch(new Error(`no ${pattern} from ${args.join(" ")} in ${waitMs / 1000} s:\n${output}`));
            }, waitMs);
            waiters.add(waiter);
          });
        },
        async stop() {
          const exited = waitExit(child);
          child.kill("SIGTERM");
          await exited;
        },
      });
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (!started) reject(new Error(`${args.join(" ")} exited with ${code ?? signal} before listening:\n${output}`));
    });
  });
}

/** `keygate serve --port 0` with these environment variables. */
export function startKeygate(env: Record<string, string>, cwd: string, options: Omit<SpawnOptions, "env" | "cwd"> = {}): Promise<ServerProcess> {
  return spawnListening([BIN, "serve", "--port", "0"], { env, cwd, ...options });
}

/** A compiled script from bench/servers/ (e.g. "bare-http-server.js"). */
export function startBenchServer(script: string, env: Record<string, string>, cwd: string, options: Omit<SpawnOptions, "env" | "cwd"> = {}): Promise<ServerProcess> {
  return spawnListening([join(SERVERS_DIR, script)], { env, cwd, ...options });
}

export function runCli(cliArgs: string[], env: Record<string, string>, cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = track(spawn(process.execPath, [BIN, ...cliArgs], { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] }));
    let stdout = "";
    let stderr = "";
    child.stdout!.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr!.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`keygate ${cliArgs.join(" ")} exited ${code}:\n${stderr}`))));
  });
}

export interface Memory {
  /** Resident set size now, bytes. */
  rss: number;
  /** Peak resident set size so far, bytes. */
  peak: number;
}

/** A process's resident memory from /proc/PID/status (Linux). */
export async function memoryOf(pid: number): Promise<Memory> {
  const status = await readFile(`/proc/${pid}/status`, "utf8");
  const kb = (field: string) => {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    if (!match) throw new Error(`no ${field} in /proc/${pid}/status`);
    return Number(match[1]) * 1024;
  };
  return { rss: kb("VmRSS"), peak: kb("VmHWM") };
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on Linux builds worth benchmarking on). */
const CLOCK_TICKS = (() => {
  try {
    return Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU time a process has used so far (user + system), ms, from /proc/PID/stat (10 ms resolution). */
export async function cpuTimeOf(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces), from field 3 on: utime is 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}
