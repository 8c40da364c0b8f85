/**
 * The upstream of the proxy bench: a minimal E2B-compatible API on a free
 * port. POST /sandboxes creates (the id the body's templateID names, so the
 * bench knows it), GET /sandboxes lists LIST_SIZE sandboxes (one of them the
 * bench's), GET /sandboxes/:id answers a fixed ~400-byte detail, anything
 * else 404. Same answers for every proxy in front of it; it logs its address
 * as keygate does.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

const LIST_SIZE = 20;
const detail = (id: string) => ({
  sandboxID: id,
  templateID: "base",
  clientID: "bench",
  alias: "base",
  startedAt: "2026-01-01T00:00:00.000Z",
  endAt: "2026-01-01T01:00:00.000Z",
  cpuCount: 2,
  memoryMB: 512,
  diskSizeMB: 1024,
  envdVersion: "0.2.0",
  metadata: { keygate_org: "bench", keygate_namespace: "*" },
  state: "running",
});
const ids = ["sbx-bench", ...Array.from({ length: LIST_SIZE - 1 }, (_, i) => `sbx-other-${i}`)];
const LIST = JSON.stringify(ids.map(detail));
const DETAIL = JSON.stringify(detail("sbx-bench"));

function send(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
  res.end(body);
}

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  const chunks: Buffer[] = [];
  req.on("data", (chunk: Buffer) => chunks.push(chunk));
  req.on("end", () => {
    const path = (req.url ?? "/").split("?")[0]!.replace(/^\/cubeapi\/v1/, "");
    if (req.method === "POST" && (path === "/sandboxes" || path === "/v2/sandboxes")) {
      const body = JSON.parse(Buffer.concat(chunks).toString() || "{}") as { templateID?: string };
      return send(res, 201, JSON.stringify({ sandboxID: body.templateID ?? "sbx-bench", templateID: "base", clientID: "bench", envdVersion: "0.2.0", envdAccessToken: "t" }));
    }
    if (req.method === "GET" && (path === "/sandboxes" || path === "/v2/sandboxes")) return send(res, 200, LIST);
    if (req.method === "GET" && path.startsWith("/sandboxes/")) return send(res, 200, DETAIL);
    send(res, 404, '{"code":404,"message":"not found"}');
  });
});

server.listen(0, "127.0.0.1", () => {
  const { address, port } = server.address() as AddressInfo;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: "info", msg: "upstream listening", address: `${address}:${port}` }) + "\n");
});

process.once("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
