import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * A private redis-server for one test: a free port, a temp dir, no
 * persistence; spawned and killed by the test. Never the machine's Redis.
 */
export interface TestRedis {
  port: number;
  url: string;
  /**
   * Kills the server (SIGKILL: as a crash would) and waits for it to exit.
   * Until restart, the port stays taken by a stand-in that drops every
   * connection: otherwise another test file's redis-server could get the
   * freed port, and keygate would "recover" to the wrong Redis.
   */
  stop(): Promise<void>;
  /** Starts it again on the same port. */
  restart(): Promise<void>;
  dispose(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function launch(port: number, dir: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", dir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`redis-server on port ${port} did not start:\n${output}`));
    }, 10_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes("Ready to accept connections")) {
        clearTimeout(timer);
        resolve(child);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}:\n${output}`));
    });
  });
}

export async function startTestRedis(): Promise<TestRedis> {
  const dir = await mkdtemp(join(tmpdir(), "keygate-redis-"));
  const port = await freePort();
  let child: ChildProcess | undefined = await launch(port, dir);
  let standIn: net.Server | undefined;
  const kill = async () => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null || running.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => running.once("exit", () => resolve()));
    running.kill("SIGKILL");
    await exited;
  };
  const release = async () => {
    const held = standIn;
    standIn = undefined;
    if (held) await new Promise<void>((resolve) => held.close(() => resolve()));
  };
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      await kill();
      if (standIn) return;
      const server = net.createServer((socket) => socket.destroy());
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, "127.0.0.1", () => resolve());
      });
      standIn = server;
    },
    async restart() {
      await kill();
      await release();
      child = await launch(port, dir);
    },
    async dispose() {
      await kill();
      await release();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
