import http from "node:http";
import http2 from "node:http2";
import net from "node:net";

/**
 * One address for every protocol: gRPC and Connect over h2c, Connect,
 * gRPC-Web and the shim over HTTP/1.1. A plaintext Node http2 server cannot
 * also parse HTTP/1.1, so a net.Server looks at the first bytes of each
 * connection: the HTTP/2 preface starts "PRI * HTTP/2.0", which no HTTP/1
 * request line can, and the socket goes to the matching server.
 */
export type Handler = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

export interface Listener {
  listen(port: number, host: string): Promise<{ port: number; host: string }>;
  /** Stop accepting, let in-flight requests finish, then force-close after timeoutMs. */
  close(timeoutMs: number): Promise<void>;
}

/** A request URL's path: the query string dropped (routing ignores it). */
export function urlPath(url: string | undefined): string {
  const target = url ?? "/";
  const q = target.indexOf("?");
  return q === -1 ? target : target.slice(0, q);
}

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** A client that connects and says nothing for this long is dropped. */
const FIRST_BYTES_TIMEOUT_MS = 10_000;

export function createListener(handler: Handler): Listener {
  const h1 = http.createServer({ requestTimeout: 30_000, headersTimeout: 15_000, keepAliveTimeout: 65_000 }, handler);
  // h1 never listens itself (the net.Server below does), but Node starts its
  // connection tracking on "listening": without it requestTimeout and
  // headersTimeout are never enforced (a slow client holds a socket forever)
  // and closeIdleConnections() closes nothing, so an idle keep-alive client
  // held every shutdown for the whole timeout.
  h1.emit("listening");
  const h2 = http2.createServer({ maxSessionMemory: 64 }, handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  const sockets = new Set<net.Socket>();

  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.setTimeout(FIRST_BYTES_TIMEOUT_MS, () => socket.destroy());
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && seen.length < PREFACE.length) return; // wait for the rest of the preface
      socket.off("data", onData);
      socket.pause();
      socket.setTimeout(0);
      socket.unshift(seen);
      // The http2 session reads the unshifted bytes from the socket's buffer
      // and then takes the handle over; resuming the JS stream would lose data.
      if (isH2) h2.emit("connection", socket);
      else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", () => socket.destroy());
  });

  return {
    listen(port, host) {
      return new Promise((resolve, reject) => {
        server.once("error", reject);
        server.listen(port, host, () => {
          server.off("error", reject);
          const address = server.address() as net.AddressInfo;
          resolve({ port: address.port, host: address.address });
        });
      });
    },
    async close(timeoutMs) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      h1.close();
      h1.closeIdleConnections();
      for (const session of sessions) session.close();
      const timer = setTimeout(() => {
        h1.closeAllConnections();
        for (const session of sessions) session.destroy();
        for (const socket of sockets) socket.destroy();
      }, timeoutMs);
      timer.unref();
      await closed;
      clearTimeout(timer);
    },
  };
}
