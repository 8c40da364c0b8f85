/**
 * The floor for proxy mode: a bare node:http pass-through proxy to
 * UPSTREAM_URL (one keep-alive agent, bodies piped both ways, no decision,
 * no header rewriting beyond what node:http does). What keygate's proxy
 * adds on top of forwarding is the difference. It logs its address as
 * keygate does.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

const upstream = new URL(process.env.UPSTREAM_URL ?? "http://127.0.0.1:3000");
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  const headers = { ...req.headers };
  delete headers.connection;
  delete headers.host;
  const forward = http.request(
    { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers, agent },
    (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  forward.on("error", () => {
    if (!res.headersSent) res.writeHead(502).end();
    else res.destroy();
  });
  req.pipe(forward);
});

server.listen(0, "127.0.0.1", () => {
  const { address, port } = server.address() as AddressInfo;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: "info", msg: "bare-proxy listening", address: `${address}:${port}` }) + "\n");
});

process.once("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
