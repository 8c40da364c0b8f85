import { spawn } from "node:child_process";
import { freePort } from "./free-port.js";
import { track, waitExit } from "./process.js";

export interface RedisServer {
  url: string;
  stop(): Promise<void>;
}

/** A private redis-server: free port, temp dir, no persistence (never the machine's Redis). */
export async function startRedis(dir: string): Promise<RedisServer> {
  const port = await freePort();
  const child = track(
    spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: ["ignore", "pipe", "pipe"] }),
  );
  await new Promise<void>((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${output}`)), 10_000);
    child.stdout!.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes("Ready to accept connections")) {
        clearTimeout(timer);
        child.stdout!.resume();
        resolve();
      }
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      const exited = waitExit(child);
      child.kill("SIGKILL");
      await exited;
    },
  };
}
