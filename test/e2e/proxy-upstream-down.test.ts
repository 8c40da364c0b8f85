import net from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, startServerProcess, stopAll, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { proxyUrlOf } from "../support/proxy-env.js";

/**
 * An upstream nobody listens on: an allowed request gets 502 in the
 * callback's JSON shape (never a hang, never a bare socket error), a
 * WebSocket upgrade too; a denied one is still answered by keygate alone.
 */

/** A port that was free a moment ago and has nothing listening on it now. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

describe("proxy mode with the upstream down", () => {
  let data: TestDataDir;
  let server: ServerProcess;
  let key: CreatedKeyJson;
  let proxy: string;

  beforeAll(async () => {
    data = await createTestDataDir();
    server = await startServerProcess(["--upstream", `http://127.0.0.1:${await closedPort()}`, "--proxy-port", "0"], { cwd: data.dir, env: data.env });
    proxy = proxyUrlOf(server);
    key = await createKey(["--org", "acme", "--role", "admin"], { cwd: data.dir, env: data.env });
  });

  afterAll(async () => {
    await stopAll(server);
    await data?.dispose();
  });

  it("an allowed request: 502 JSON", async () => {
    for (const [method, path] of [
      ["GET", "/templates"],
      ["GET", "/sandboxes"],
      ["POST", "/sandboxes"],
    ] as const) {
      const res = await fetch(`${proxy}${path}`, { method, headers: { "x-api-key": key.key }, ...(method === "POST" && { body: "{}" }) });
      expect(res.status, `${method} ${path}`).toBe(502);
      expect(await res.json(), `${method} ${path}`).toEqual({ code: 502, message: expect.stringMatching(/^upstream unreachable or failed/) });
    }
  });

  it("a WebSocket upgrade: 502", async () => {
    // The platform-free way to reach a path the core lets through: templates are not owned.
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`${proxy.replace("http", "ws")}/templates`, { headers: { "x-api-key": key.key } });
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode ?? 0));
      ws.on("open", () => reject(new Error("upgraded")));
      ws.on("error", reject);
    });
    expect(status).toBe(502);
  });

  it("a denied request is answered by keygate as ever", async () => {
    const res = await fetch(`${proxy}/sandboxes`);
    expect([res.status, await res.json()]).toEqual([401, { code: 401, message: "missing API key in Authorization header" }]);
  });
});
