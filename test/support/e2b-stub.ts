import http from "node:http";
import type { AddressInfo } from "node:net";
import { WebSocketServer } from "ws";

/**
 * An E2B-compatible API (what Cube serves), small enough to read: create (v1
 * and v2), fork, list (v1 and v2), get, kill, timeout, connect (v2), logs
 * (v1 and v2), metrics, every route also under /cubeapi/v1, and a WebSocket
 * terminal that echoes. Answers in the shapes the `e2b` SDK reads
 * (node_modules/e2b/dist: createSandbox, getInfo, SandboxPaginator,
 * forkSandbox, connectSandbox). It knows nothing of orgs: it lists every
 * sandbox to everyone, as Cube does. Every request that reaches it is
 * recorded, so a test can show that a denied one never did.
 */

export interface StubRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface StubSandbox {
  sandboxID: string;
  templateID: string;
  metadata: Record<string, string>;
  startedAt: string;
  endAt: string;
}

export interface E2bStub {
  url: string;
  port: number;
  requests: StubRequest[];
  sandboxes: Map<string, StubSandbox>;
  /** The terminal connections' URLs as they arrived. */
  terminals: string[];
  /** Requests whose path this returns true for are never answered (the proxy's timeout). */
  hang: (method: string, path: string) => boolean;
  /** The list answer's body, replacing the real one (a broken upstream). */
  listBody: string | undefined;
  /** The id the next create takes (then sbx-N again). */
  nextIds: string[];
  /** Set: the next create answers 201 with this body instead (and makes no sandbox). */
  createAnswer: unknown;
  close(): Promise<void>;
}

const PREFIX = "/cubeapi/v1";

export async function startE2bStub(): Promise<E2bStub> {
  let counter = 0;
  const hanging = new Set<http.ServerResponse>();
  const stub: E2bStub = {
    url: "",
    port: 0,
    requests: [],
    sandboxes: new Map(),
    terminals: [],
    hang: () => false,
    listBody: undefined,
    nextIds: [],
    createAnswer: undefined,
    close: async () => {},
  };

  const newId = () => stub.nextIds.shift() ?? `sbx-${++counter}-${Math.random().toString(36).slice(2, 8)}`;
  const answer = (res: http.ServerResponse, status: number, body?: unknown) => {
    if (body === undefined) {
      res.writeHead(status).end();
      return;
    }
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), "x-stub": "e2b" }).end(text);
  };
  const created = (s: StubSandbox) => ({
    sandboxID: s.sandboxID,
    templateID: s.templateID,
    clientID: "stub",
    envdVersion: "0.2.0",
    envdAccessToken: `envd-${s.sandboxID}`,
    domain: null,
    alias: "base",
  });
  const detail = (s: StubSandbox) => ({
    ...created(s),
    startedAt: s.startedAt,
    endAt: s.endAt,
    cpuCount: 2,
    memoryMB: 512,
    diskSizeMB: 1024,
    metadata: s.metadata,
    state: "running",
  });
  const make = (body: Record<string, unknown>): StubSandbox => {
    const s: StubSandbox = {
      sandboxID: newId(),
      templateID: typeof body["templateID"] === "string" ? body["templateID"] : "base",
      metadata: (body["metadata"] as Record<string, string> | undefined) ?? {},
      startedAt: new Date(0).toISOString(),
      endAt: new Date(3_600_000).toISOString(),
    };
    stub.sandboxes.set(s.sandboxID, s);
    return s;
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      stub.requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body });
      // Read leniently (slashes collapsed, each segment decoded): whatever spelling reaches it, it serves.
      const raw = (req.url ?? "/").split("?")[0]!;
      const pathname = "/" + raw.split("/").filter(Boolean).map((segment) => decodeURIComponent(segment)).join("/");
      const path = pathname.startsWith(`${PREFIX}/`) ? pathname.slice(PREFIX.length) : pathname;
      const method = req.method ?? "";
      if (stub.hang(method, path)) {
        hanging.add(res);
        res.on("close", () => hanging.delete(res));
        return;
      }
      const json = (): Record<string, unknown> => (body === "" ? {} : (JSON.parse(body) as Record<string, unknown>));
      const parts = path.split("/").filter(Boolean);
      const v2 = parts[0] === "v2";
      const rest = v2 ? parts.slice(1) : parts;
      if (rest[0] !== "sandboxes") return answer(res, 404, { code: 404, message: `no route ${method} ${path}` });
      if (rest.length === 1) {
        if (method === "POST" && stub.createAnswer !== undefined) {
          const body = stub.createAnswer;
          stub.createAnswer = undefined;
          return answer(res, 201, body);
        }
        if (method === "POST") return answer(res, 201, created(make(json())));
        if (method === "GET") {
          if (stub.listBody !== undefined) {
            res.writeHead(200, { "content-type": "application/json" }).end(stub.listBody);
            return;
          }
          return answer(res, 200, [...stub.sandboxes.values()].map(detail));
        }
      }
      const sandbox = stub.sandboxes.get(rest[1] ?? "");
      if (!sandbox) return answer(res, 404, { code: 404, message: `sandbox ${rest[1]} not found` });
      const action = rest.slice(2).join("/");
      if (action === "" && method === "GET") return answer(res, 200, detail(sandbox));
      if (action === "" && method === "DELETE") {
        stub.sandboxes.delete(sandbox.sandboxID);
        return answer(res, 204);
      }
      if (action === "timeout" && method === "POST") return answer(res, 204);
      if (action === "connect" && method === "POST") return answer(res, 200, created(sandbox));
      if (action === "logs" && method === "GET") return answer(res, 200, { logs: [{ timestamp: new Date(0).toISOString(), line: `hello from ${sandbox.sandboxID}` }], logEntries: [] });
      if (action === "metrics" && method === "GET") return answer(res, 200, []);
      if (action === "fork" && method === "POST") {
        const count = Number(json()["count"] ?? 1);
        return answer(res, 201, Array.from({ length: count }, () => ({ sandbox: created(make({ templateID: sandbox.templateID, metadata: json()["metadata"] })) })));
      }
      return answer(res, 404, { code: 404, message: `no route ${method} ${path}` });
    });
  });

  // The terminal: an echo, recording the URL each connection arrived with.
  const wss = new WebSocketServer({ noServer: true });
  server.on("upgrade", (req, socket, head) => {
    stub.requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: "" });
    stub.terminals.push(req.url ?? "");
    wss.handleUpgrade(req, socket, head, (ws) => {
      ws.on("message", (data, binary) => ws.send(binary ? data : `echo: ${data.toString()}`));
    });
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  stub.port = port;
  stub.url = `http://127.0.0.1:${port}`;
  stub.close = async () => {
    for (const res of hanging) res.destroy();
    for (const client of wss.clients) client.terminate();
    wss.close();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return stub;
}
