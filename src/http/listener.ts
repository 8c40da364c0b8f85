import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";

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
  /**
   * Drains, then resolves once every connection is closed: new connections
   * are refused at once; HTTP/2 sessions get a GOAWAY and finish their open
   * streams; HTTP/1.1 requests on open connections are still served, with
   * `Connection: close`; connections idle through the drain grace are closed.
   * Whatever is still open after timeoutMs is destroyed.
   */
  close(timeoutMs: number): Promise<void>;
  /** Connections open, refused and evicted at the cap. */
  connections(): ConnectionCounts;
}

/** What one client may send, and how slowly (the serve settings KEYGATE_MAX_HEADER_BYTES, KEYGATE_*_TIMEOUT). */
export interface ListenerLimits {
  /** Request line and headers (HTTP/1.1), the header list (HTTP/2): larger is refused (431). */
  maxHeaderBytes: number;
  /** The whole request (line, headers, body) must have arrived this long after it began, or 408. */
  requestTimeoutMs: number;
  /** The request line and headers must have arrived this long after they began, or 408. */
  headersTimeoutMs: number;
  /**
   * HTTP/2: a session with no open stream this long is closed (GOAWAY), and
   * so is a streaming call (`streamingPaths`) that has carried nothing either
   * way this long (RST_STREAM CANCEL). A new session must open its first
   * stream within the first-bytes timeout.
   */
  http2IdleTimeoutMs: number;
  /** HTTP/2: streams open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS); a stream beyond it is refused (REFUSED_STREAM). */
  http2MaxStreams: number;
  /**
   * Connections open at once. At the cap a new connection closes the one
   * idle longest (no request or stream in flight), or, with none idle, is
   * closed itself. Unset: no cap (serve always sets one).
   */
  maxConnections?: number;
  /**
   * Request paths of client- and bidi-streaming RPCs (AuthorizeStream,
   * reflection): their requests are open-ended, so they get the idle timeout
   * between messages instead of KEYGATE_REQUEST_TIMEOUT for the whole.
   */
  streamingPaths?: ReadonlySet<string>;
}

/** What a listener has refused so far (for metrics and the log). */
export interface ConnectionCounts {
  /** Open now. */
  open: number;
  /** Closed at once on arrival: the cap was reached and no connection was idle. */
  refused: number;
  /** Idle connections closed to make room for a new one at the cap. */
  evicted: number;
}

/** A request URL's path: the query string dropped (routing ignores it). */
export function urlPath(url: string | undefined): string {
  const target = url ?? "/";
  const q = target.indexOf("?");
  return q === -1 ? target : target.slice(0, q);
}

const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
/** A client that connects and says nothing for this long (or the headers timeout, if shorter) is dropped. */
const FIRST_BYTES_TIMEOUT_MS = 10_000;
/**
 * While draining, an HTTP/1.1 connection with no request in flight is kept
 * this long before it is closed: a keep-alive client may be sending its next
 * request right now, and closing under it would fail that request with a
 * reset. A request that arrives in time is answered with `Connection: close`.
 */
const DRAIN_IDLE_GRACE_MS = 1_000;
/** After an error answer (400/408/431), how long the rest of what the client sends is read and dropped before closing. */
const ERROR_LINGER_MS = 2_000;

/** Node's "upgrade" event (HTTP/1.1 only): the listener hands the socket over; without one, upgrades are refused. */
export type UpgradeHandler = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => void;

export function createListener(handler: Handler, limits: ListenerLimits, onUpgrade?: UpgradeHandler): Listener {
  let draining = false;
  const firstBytesMs = Math.min(FIRST_BYTES_TIMEOUT_MS, limits.headersTimeoutMs);
  /**
   * Connections with nothing in flight, longest idle first (a Map keeps
   * insertion order): each with how to close it. At the cap the first one
   * makes room for a new connection.
   */
  const idle = new Map<net.Socket, () => void>();
  const setIdle = (socket: net.Socket, close: () => void) => {
    idle.delete(socket);
    if (!socket.destroyed) idle.set(socket, close);
  };
  const counts = { refused: 0, evicted: 0 };

  const onRequest: Handler = (req, res) => {
    if (req.httpVersionMajor === 2) {
      const stream = (req as http2.Http2ServerRequest).stream;
      guardStream(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse, limits.streamingPaths?.has(urlPath(req.url)) === true, limits);
      if (headerListBytes(req.rawHeaders) > limits.maxHeaderBytes) {
        // Node enforces only its own ~64 KiB on an HTTP/2 header list, whatever the settings say; this is ours.
        refuseHeaderList(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse, limits);
        return;
      }
      if (stream.destroyed) return;
    } else {
      const socket = req.socket;
      idle.delete(socket);
      res.once("close", () => setIdle(socket, () => socket.destroy()));
    }
    handler(req, res);
  };

  const h1 = http.createServer(
    {
      requestTimeout: limits.requestTimeoutMs,
      headersTimeout: limits.headersTimeoutMs,
      maxHeaderSize: limits.maxHeaderBytes,
      keepAliveTimeout: 65_000,
      // Node checks both timeouts every 30 s by default: a 1 s timeout would hold a slow client for 31 s.
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 4))),
      ServerResponse: closingResponse(() => draining),
    },
    onRequest,
  );
  // h1 never listens itself (the net.Server below does), but Node starts its
  // connection tracking on "listening": without it requestTimeout and
  // headersTimeout are never enforced (a slow client holds a socket forever)
  // and closeIdleConnections() closes nothing, so an idle keep-alive client
  // held every shutdown for the whole timeout.
  h1.emit("listening");
  // Node's own answers to a bad request have no body; these say what was wrong, in the shim's JSON shape.
  h1.on("clientError", (error: NodeJS.ErrnoException, socket: net.Socket) => answerClientError(error, socket, limits));
  if (onUpgrade) h1.on("upgrade", onUpgrade);
  // The setting tells clients the limit; onRequest enforces it.
  const h2 = http2.createServer(
    {
      // nghttp2's own accounting (header tables, queued frames): a bound per connection, far above what
      // http2MaxStreams streams of KEYGATE_MAX_HEADER_BYTES headers and one flow-control window each need.
      maxSessionMemory: 16,
      // Node's default is 2^32 − 1 streams at once: one connection held 30,000 unfinished ones.
      settings: { maxHeaderListSize: limits.maxHeaderBytes, maxConcurrentStreams: limits.http2MaxStreams },
    },
    onRequest,
  );
  const sessions = new Map<http2.ServerHttp2Session, SessionState>();
  /** The socket whose session h2 is creating now ("session" is emitted within h2.emit("connection")). */
  let sessionSocket: net.Socket | undefined;
  h2.on("session", (session) => {
    const socket = sessionSocket;
    const state: SessionState = { lastStreamId: 0, open: 0, onIdle: undefined };
    sessions.set(session, state);
    // No stream open: closed after the idle timeout (the first stream is due within the first-bytes timeout).
    let idleTimer: NodeJS.Timeout | undefined;
    const becameIdle = (ms: number) => {
      clearTimeout(idleTimer);
      idleTimer = setTimeout(() => {
        goAway(session, state);
        // A client that never reads (nor acknowledges) holds a closed session open: the descriptor must go.
        setTimeout(() => session.destroy(), ERROR_LINGER_MS).unref();
      }, ms);
      idleTimer.unref();
      // Evicted at the cap: at once, its descriptor is what the new connection needs.
      if (socket) setIdle(socket, () => session.destroy());
    };
    becameIdle(firstBytesMs);
    session.on("stream", (stream) => {
      state.lastStreamId = Math.max(state.lastStreamId, stream.id ?? 0);
      if (state.open++ === 0) {
        clearTimeout(idleTimer);
        if (socket) idle.delete(socket);
      }
      stream.once("close", () => {
        if (--state.open > 0) return;
        state.onIdle?.();
        if (!session.closed && !session.destroyed) becameIdle(limits.http2IdleTimeoutMs);
      });
    });
    session.on("close", () => {
      clearTimeout(idleTimer);
      sessions.delete(session);
    });
    if (draining) goAway(session, state);
  });
  const sockets = new Set<net.Socket>();
  /** Sockets whose first bytes have not yet shown their protocol. */
  const unsniffed = new Set<net.Socket>();

  const server = net.createServer((socket) => {
    if (limits.maxConnections !== undefined && sockets.size >= limits.maxConnections) {
      // Closing the longest-idle connection keeps a flood of idle ones (HTTP/2 sessions, silent
      // sockets, keep-alives) from locking out a client that has something to ask.
      const oldest = idle.entries().next();
      if (oldest.done) {
        counts.refused++;
        socket.destroy();
        return;
      }
      counts.evicted++;
      idle.delete(oldest.value[0]);
      oldest.value[1]();
    }
    sockets.add(socket);
    unsniffed.add(socket);
    setIdle(socket, () => socket.destroy());
    socket.on("close", () => {
      sockets.delete(socket);
      unsniffed.delete(socket);
      idle.delete(socket);
    });
    socket.setTimeout(firstBytesMs, () => socket.destroy());
    let seen = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      seen = Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, PREFACE.length);
      const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
      if (isH2 && seen.length < PREFACE.length) return; // wait for the rest of the preface
      socket.off("data", onData);
      unsniffed.delete(socket);
      idle.delete(socket);
      socket.pause();
      socket.setTimeout(0);
      socket.unshift(seen);
      // The http2 session reads the unshifted bytes from the socket's buffer
      // and then takes the handle over; resuming the JS stream would lose data.
      if (isH2) {
        sessionSocket = socket;
        h2.emit("connection", socket);
        sessionSocket = undefined;
      } else {
        h1.emit("connection", socket);
        socket.resume();
      }
    };
    socket.on("data", onData);
    socket.on("error", () => socket.destroy());
  });

  return {
    connections: () => ({ open: sockets.size, ...counts }),
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
      draining = true;
      // Stops accepting at once (a new connection is refused); resolves when the last accepted one closes.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // From now on every HTTP/1.1 answer, those to requests already being handled included, says
      // `Connection: close` (closingResponse): the client sends no more on that connection.
      for (const [session, state] of sessions) goAway(session, state);
      const idle = setTimeout(() => {
        // Not h1.close(): it would also stop enforcing the request timeouts on connections still draining.
        h1.closeIdleConnections();
        for (const socket of unsniffed) socket.destroy();
      }, Math.min(DRAIN_IDLE_GRACE_MS, timeoutMs));
      const force = setTimeout(() => {
        h1.closeAllConnections();
        for (const session of sessions.keys()) session.destroy();
        for (const socket of sockets) socket.destroy();
      }, timeoutMs);
      // The force timer keeps the process alive (the idle one need not): on Node 24 an HTTP/2 session
      // whose stream waits on a client that stopped sending (an oversized message refused) holds no
      // ref'd handle, so the process would end here with the drain unfinished and cleanup undone (exit 13).
      idle.unref();
      await closed;
      clearTimeout(idle);
      clearTimeout(force);
      h1.close();
    },
  };
}

interface SessionState {
  /** The highest stream id this server has taken. */
  lastStreamId: number;
  /** Streams not yet closed. */
  open: number;
  /** Called when the last open stream closes. */
  onIdle: (() => void) | undefined;
}

/**
 * A graceful GOAWAY in two steps, as gRPC servers do: first one naming the
 * highest possible stream (no new streams, please), then, once a PING has
 * come back (so every stream the client opened before it heard is here),
 * the final one naming the last stream this server took. A client then has
 * no stream refused (REFUSED_STREAM, which some clients report as an error
 * rather than retry); the open streams finish and the session closes after
 * the last one. nghttp2 stops reading once a GOAWAY is out and no stream is
 * open, so the PING is not awaited then: the final GOAWAY goes at once.
 */
function goAway(session: http2.ServerHttp2Session, state: SessionState): void {
  if (session.closed || session.destroyed) return;
  const final = () => {
    state.onIdle = undefined;
    if (session.closed || session.destroyed) return;
    session.goaway(http2.constants.NGHTTP2_NO_ERROR, state.lastStreamId);
    session.close();
  };
  if (state.open === 0) return final();
  session.goaway(http2.constants.NGHTTP2_NO_ERROR, MAX_STREAM_ID);
  state.onIdle = final;
  if (!session.ping(() => final())) final();
}

const MAX_STREAM_ID = 2 ** 31 - 1;

/**
 * HTTP/1.1 responses that close their connection (`Connection: close`) when
 * the listener is draining: the client sends no further request on it, so
 * none is lost to the close. Also when begun before the request's body has
 * all arrived (a message over readMaxBytes, refused after its first 64 KiB):
 * the rest of that body is still on the wire, and a handler that stopped
 * reading leaves it there (Node drains only bodies nobody began to read), so
 * a keep-alive client's next request would sit behind it until a 408.
 */
function closingResponse(draining: () => boolean) {
  class ClosingResponse extends http.ServerResponse {}
  const writeHead = http.ServerResponse.prototype.writeHead as (...args: unknown[]) => http.ServerResponse;
  ClosingResponse.prototype.writeHead = function (this: http.ServerResponse, ...args: unknown[]) {
    const req = this.req;
    // A request without a body is complete only after the 'request' event: a handler that answers
    // at once (a probe) keeps its connection.
    if (draining() || (!req.complete && ((req.headers["content-length"] ?? "0") !== "0" || req.headers["transfer-encoding"] !== undefined))) {
      this.shouldKeepAlive = false;
    }
    return writeHead.apply(this, args);
  } as http.ServerResponse["writeHead"];
  return ClosingResponse;
}

/** An HTTP/2 header list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it: name and value octets, plus 32 per field. */
function headerListBytes(raw: string[]): number {
  let bytes = 0;
  for (let i = 0; i + 1 < raw.length; i += 2) bytes += Buffer.byteLength(raw[i]!) + Buffer.byteLength(raw[i + 1]!) + 32;
  return bytes;
}

/**
 * Headers over the limit on HTTP/2, answered in the caller's protocol: a
 * gRPC or gRPC-Web call gets RESOURCE_EXHAUSTED (trailers-only), a Connect
 * unary call its JSON error (resource_exhausted, HTTP 429), anything else
 * (the shim, probes) 431 with the same JSON as HTTP/1.1.
 */
function refuseHeaderList(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, limits: ListenerLimits): void {
  const message = `request headers larger than ${limits.maxHeaderBytes} bytes`;
  const contentType = req.headers["content-type"] ?? "";
  req.resume();
  if (contentType.startsWith("application/grpc")) {
    res.writeHead(200, { "content-type": contentType, "grpc-status": String(RESOURCE_EXHAUSTED), "grpc-message": encodeURIComponent(message) });
    res.end();
    return;
  }
  const connect = /^application\/(json|proto)(;|$)/.test(contentType);
  const body = JSON.stringify(connect ? { code: "resource_exhausted", message } : { code: 431, message });
  res.writeHead(connect ? 429 : 431, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), "cache-control": "no-store" });
  res.end(body);
}

/** gRPC's status code (the listener writes it before any RPC library is involved). */
const RESOURCE_EXHAUSTED = 8;

/**
 * Time limits on one HTTP/2 stream, as HTTP/1.1 has them per request: the
 * client must have sent its whole request (headers and body: END_STREAM)
 * within KEYGATE_REQUEST_TIMEOUT, or it is answered in its protocol
 * (requestTimedOut) and reset. A streaming call (AuthorizeStream) has no end
 * to wait for: it is reset once it has carried nothing either way for the
 * idle timeout, so a stream that keeps sending is never cut. A client that
 * has finished sending is waiting for keygate: its RPC deadline governs.
 */
function guardStream(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, streaming: boolean, limits: ListenerLimits): void {
  const stream = req.stream;
  const sending = () => !stream.destroyed && stream.state.remoteClose !== 1;
  if (streaming) {
    // Http2Stream's timeout restarts on every frame read or written on the stream.
    stream.setTimeout(limits.http2IdleTimeoutMs, () => {
      if (sending()) stream.close(http2.constants.NGHTTP2_CANCEL);
    });
    return;
  }
  const timer = setTimeout(() => {
    if (sending()) requestTimedOut(req, res, limits);
  }, limits.requestTimeoutMs);
  timer.unref();
  stream.once("close", () => clearTimeout(timer));
}

/**
 * The HTTP/2 answer to a request not received in time, in the caller's
 * protocol (as refuseHeaderList): gRPC and gRPC-Web DEADLINE_EXCEEDED
 * (trailers-only), anything else (Connect, the shim) 408 with the JSON body
 * HTTP/1.1 gets; then RST_STREAM, so the client stops sending the rest. A
 * response already begun is only reset (CANCEL). Whatever the handler writes
 * afterwards goes nowhere.
 */
function requestTimedOut(req: http2.Http2ServerRequest, res: http2.Http2ServerResponse, limits: ListenerLimits): void {
  const stream = req.stream;
  if (res.headersSent) {
    stream.close(http2.constants.NGHTTP2_CANCEL);
    return;
  }
  const message = `request not received in time (headers within ${limits.headersTimeoutMs} ms, the whole request within ${limits.requestTimeoutMs} ms)`;
  const contentType = req.headers["content-type"] ?? "";
  if (contentType.startsWith("application/grpc")) {
    res.writeHead(200, { "content-type": contentType, "grpc-status": String(DEADLINE_EXCEEDED), "grpc-message": encodeURIComponent(message) });
    res.end();
  } else {
    const connect = /^application\/(json|proto)(;|$)/.test(contentType);
    const body = JSON.stringify(connect ? { code: "deadline_exceeded", message } : { code: 408, message });
    res.writeHead(408, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)), "cache-control": "no-store" });
    res.end(body);
  }
  // The handler still holds res: from now on its writes are dropped, never thrown.
  res.writeHead = () => res;
  res.write = (...args: unknown[]) => {
    const callback = args.findLast((arg) => typeof arg === "function") as (() => void) | undefined;
    if (callback) process.nextTick(callback);
    return false;
  };
  res.end = (...args: unknown[]) => {
    const callback = args.findLast((arg) => typeof arg === "function") as (() => void) | undefined;
    if (callback) process.nextTick(callback);
    return res;
  };
  stream.close(http2.constants.NGHTTP2_NO_ERROR);
}

/** gRPC's status code for a call that ran out of time. */
const DEADLINE_EXCEEDED = 4;

/** The answer to an HTTP/1.1 request that could not be parsed or did not arrive in time. */
function clientErrorAnswer(error: NodeJS.ErrnoException, limits: ListenerLimits): { status: number; title: string; message: string } {
  switch (error.code) {
    case "HPE_HEADER_OVERFLOW":
      return { status: 431, title: "Request Header Fields Too Large", message: `request line and headers larger than ${limits.maxHeaderBytes} bytes` };
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return {
        status: 408,
        title: "Request Timeout",
        message: `request not received in time (headers within ${limits.headersTimeoutMs} ms, the whole request within ${limits.requestTimeoutMs} ms)`,
      };
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return { status: 413, title: "Payload Too Large", message: "chunk extensions too large" };
    default:
      // Node's parser codes (HPE_INVALID_METHOD, …) name what is wrong and hold none of the request's bytes.
      return { status: 400, title: "Bad Request", message: `malformed HTTP/1.1 request${error.code?.startsWith("HPE_") ? ` (${error.code})` : ""}` };
  }
}

function answerClientError(error: NodeJS.ErrnoException, socket: net.Socket, limits: ListenerLimits): void {
  // A response already under way cannot be replaced, and a reset peer cannot be answered.
  const started = (socket as net.Socket & { _httpMessage?: { headersSent?: boolean } | null })._httpMessage?.headersSent === true;
  if (error.code === "ECONNRESET" || !socket.writable || started) {
    socket.destroy();
    return;
  }
  const { status, title, message } = clientErrorAnswer(error, limits);
  const body = JSON.stringify({ code: status, message });
  socket.end(
    `HTTP/1.1 ${status} ${title}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${body}`,
  );
  // Read and drop the rest of the request: closing with unread bytes would send a reset,
  // which can reach the client before the answer does.
  socket.resume();
  socket.setTimeout(ERROR_LINGER_MS, () => socket.destroy());
}
