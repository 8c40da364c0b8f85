import { spawn, type ChildProcess } from "node:child_process";
import { resolve } from "node:path";

/** Drive the real, compiled CLI (bin/keygate.js) as a user would. */
export const REPO = resolve(import.meta.dirname, "../..");
export const BIN = resolve(REPO, "bin/keygate.js");
export const POLICY_DIR = resolve(REPO, "policies");

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ProcessOptions {
  cwd: string;
  env?: Record<string, string>;
}

function childEnv(env: Record<string, string> | undefined): NodeJS.ProcessEnv {
  const base: NodeJS.ProcessEnv = { ...process.env, KEYGATE_POLICY_DIR: POLICY_DIR };
  // The suite picks its database per file; never let the outer DATABASE_URL leak in.
  delete base.DATABASE_URL;
  return { ...base, ...env };
}

export function runCli(args: string[], { cwd, env }: ProcessOptions): Promise<CliResult> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.on("error", fail);
    child.on("close", (code) => done({ code: code ?? -1, stdout, stderr }));
  });
}

export interface ServerProcess {
  port: number;
  /** http://127.0.0.1:PORT */
  url: string;
  child: ChildProcess;
  /** Everything the server wrote so far (stdout and stderr). */
  output(): string;
  /** Send a signal and wait for exit; resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number>;
}

/** Starts `keygate serve --port 0` and waits for its "keygate listening" log line. */
export function startServerProcess(args: string[], { cwd, env }: ProcessOptions, timeoutMs = 20_000): Promise<ServerProcess> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, "serve", "--port", "0", ...args], { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let started = false;
    const exited = new Promise<number>((res) => child.on("exit", (code, signal) => res(code ?? (signal ? 128 : -1))));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(new Error(`server did not start in ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (started) return;
      const match = /"msg":"keygate listening","address":"[^"]*:(\d+)"/.exec(output);
      if (!match) return;
      started = true;
      clearTimeout(timer);
      const port = Number(match[1]);
      done({
        port,
        url: `http://127.0.0.1:${port}`,
        child,
        output: () => output,
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
        fail(new Error(`server exited with ${code} before listening:\n${output}`));
      }
    });
  });
}
