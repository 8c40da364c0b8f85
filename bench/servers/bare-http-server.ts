/**
 * The floor for the Cube callback: a bare node:http server answering every
 * request 200 `{}` (with the headers the callback's allow carries, minus
 * X-Auth-User), on a free port. It logs its address as keygate does, so
 * the bench starts it like any other server.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

const BODY = "{}";
const HEADERS = { "content-type": "application/json", "content-length": "2", "cache-control": "no-store" };

const server = http.createServer({ keepAliveTimeout: 65_000 }, (req, res) => {
  req.resume();
  res.writeHead(200, HEADERS);
  res.end(BODY);
});

server.listen(0, "127.0.0.1", () => {
  const { address, port } = server.address() as AddressInfo;
  process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: "info", msg: "bare listening", address: `${address}:${port}` }) + "\n");
});

process.once("SIGTERM", () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
