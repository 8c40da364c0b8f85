import { spawn, type ChildProcess } from "node:child_process";
import { resolve } from "node:path";

/** Drive the real, compiled CLI (bin/keygate.js) as a user would. */
export const REPO = resolve(import.meta.dirname, "../..");
export const BIN = resolve(REPO, "bin/keygate.js");
export const POLICY_DIR = resolve(REPO, "policies");

/**
 * The time budget of a test that runs `count` CLI commands one after another.
 * Each is a fresh process: about 0.6 s to load, plus about 1 s to open the
 * data on PGlite (1.5 s a command measured idle on 2 vCPUs). Under the
 * suite's own parallel load that triples, which is what this allows for; the
 * vitest default of 30 s is the floor. A hung command still fails the test,
 * through runCli's own timeout or this one.
 */
export function cliBudgetMs(count: number): number {
  // Generous: a budget only bounds a hang, and on a busy 2-core machine one CLI run (Node start, PGlite open) has taken over 5 s.
  return Math.max(60_000, count * 10_000);
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ProcessOptions {
  cwd: string;
  env?: Record<string, string>;
  /** The keygate to run: this repository's bin/keygate.js by default, or an installed package's. */
  bin?: string;
  /** Start the process with this open-file limit (`ulimit -n`, through sh). */
  fdLimit?: number;
}

export interface CliOptions extends ProcessOptions {
  /** A command still running after this long is killed and the call rejects (default 60 s). */
  timeoutMs?: number;
}

function childEnv(env: Record<string, string> | undefined): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env, KEYGATE_POLICY_DIR: POLICY_DIR };
  // The suite picks its database per file; never let the outer DATABASE_URL leak in.
  delete base.DATABASE_URL;
  return { ...base, ...env };
}

export function runCli(args: string[], { cwd, env, bin = BIN, timeoutMs = 60_000 }: CliOptions): Promise<CliResult> {
  return runProcess(process.execPath, [bin, ...args], { cwd, env: childEnv(env), timeoutMs, label: `keygate ${args.join(" ")}` });
}

/**
 * Runs a command to its end and collects what it wrote. One still running
 * after `timeoutMs` (a command that should have failed at once, such as serve
 * with a bad config) is killed, and the call rejects with its output.
 */
export function runProcess(
  command: string,
  args: string[],
  { cwd, env, timeoutMs, label = `${command} ${args.join(" ")}` }: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs: number; label?: string },
): Promise<CliResult> {
  return new Promise((done, fail) => {
    const child = spawn(command, args, { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(new Error(`${label} still running after ${timeoutMs} ms; killed.\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, timeoutMs);
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", (error) => {
      clearTimeout(timer);
      fail(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      done({ code: code ?? (signal ? 128 : -1), stdout, stderr });
    });
  });
}

/** What `keygen --json` and `keys rotate --json` print: the key's metadata and, this once, the key. */
export interface CreatedKeyJson {
  id: string;
  key: string;
  name: string;
  org: string;
  namespace: string;
  roles: string[];
  enabled: boolean;
  display_prefix: string;
  created_at: string;
  expires_at: string | null;
  rotated_from: string | null;
  created_by: string;
}

/** `keygate keygen --json ARGS…`, which must succeed; returns the parsed output. */
export async function createKey(args: string[], options: CliOptions): Promise<CreatedKeyJson> {
  const result = await runCli(["keygen", "--json", ...args], options);
  if (result.code !== 0) throw new Error(`keygen ${args.join(" ")} exited ${result.code}:\n${result.stderr}`);
  return JSON.parse(result.stdout) as CreatedKeyJson;
}

export interface KeygateProcess {
  port: number;
  /** http://127.0.0.1:PORT */
  url: string;
  child: ChildProcess;
  /** Everything the process wrote so far (stdout and stderr). */
  output(): string;
  /** Resolves with the exit code once the process has exited and its output is read. */
  exited: Promise<number>;
  /** Send a signal (unless it has exited) and wait for exit; resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number>;
}

/** A `keygate serve` process. */
export type ServerProcess = KeygateProcess;
/** A `keygate shim` process. */
export type ShimProcess = KeygateProcess;

/**
 * Spawns `keygate ARGS…` and waits for the JSON log line `{"msg": READY, "address": "HOST:PORT"}`.
 * A process that exits first, or does not get there in time, rejects with its output.
 */
export function startKeygateProcess(args: string[], ready: string, { cwd, env, bin = BIN, fdLimit }: ProcessOptions, timeoutMs = 20_000): Promise<KeygateProcess> {
  return new Promise((done, fail) => {
    const [command, argv] =
      fdLimit === undefined ? [process.execPath, [bin, ...args]] : ["sh", ["-c", `ulimit -n ${fdLimit} && exec "$0" "$@"`, process.execPath, bin, ...args]];
    const child = spawn(command, argv, { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let started = false;
    // "close", not "exit": by then every byte the process wrote has been read.
    const exited = new Promise<number>((res) => child.on("close", (code, signal) => res(code ?? (signal ? 128 : -1))));
    const readyLine = new RegExp(`"msg":${JSON.stringify(ready)},"address":"[^"]*:(\\d+)"`);
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(new Error(`keygate ${args.join(" ")} did not start in ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (started) return;
      const match = readyLine.exec(output);
      if (!match) return;
      started = true;
      clearTimeout(timer);
      const port = Number(match[1]);
      done({
        port,
        url: `http://127.0.0.1:${port}`,
        child,
        output: () => output,
        exited,
        async stop(signal = "SIGTERM") {
          if (child.exitCode === null && child.signalCode === null) child.kill(signal);
          return exited;
        },
      });
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    void exited.then((code) => {
      if (!started) {
        clearTimeout(timer);
        fail(new Error(`keygate ${args.join(" ")} exited with ${code} before listening:\n${output}`));
      }
    });
  });
}

/** Starts `keygate serve --port 0 ARGS…` and waits for its "keygate listening" log line. */
export function startServerProcess(args: string[], options: ProcessOptions, timeoutMs = 20_000): Promise<ServerProcess> {
  return startKeygateProcess(["serve", "--port", "0", ...args], "keygate listening", options, timeoutMs);
}

/** Starts `keygate shim --upstream UPSTREAM --port 0 ARGS…` and waits for its "keygate shim listening" log line. */
export function startShimProcess(upstream: string, args: string[], options: ProcessOptions, timeoutMs = 20_000): Promise<ShimProcess> {
  return startKeygateProcess(["shim", "--upstream", upstream, "--port", "0", ...args], "keygate shim listening", options, timeoutMs);
}

/** Stops every process given (those that started), even when some stop fails. */
export async function stopAll(...processes: (KeygateProcess | undefined)[]): Promise<void> {
  await Promise.allSettled(processes.map((p) => p?.stop()));
}
