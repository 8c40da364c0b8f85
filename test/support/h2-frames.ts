import net from "node:net";

/**
 * HTTP/2 spoken by hand, for clients that break the rules a library would
 * keep (ignoring SETTINGS_MAX_CONCURRENT_STREAMS, never finishing a body,
 * never saying anything after the preface): frames written raw, the server's
 * frames read back.
 */

export const PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
export const FRAME = { DATA: 0, HEADERS: 1, RST_STREAM: 3, SETTINGS: 4, PING: 6, GOAWAY: 7, WINDOW_UPDATE: 8 } as const;
export const FLAG = { END_STREAM: 0x1, ACK: 0x1, END_HEADERS: 0x4 } as const;
export const ERROR = { NO_ERROR: 0, PROTOCOL_ERROR: 1, CANCEL: 8, REFUSED_STREAM: 7, ENHANCE_YOUR_CALM: 11 } as const;

export function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head.writeUInt8(type, 3);
  head.writeUInt8(flags, 4);
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/** An HPACK integer with an N-bit prefix (RFC 7541 §5.1). */
function hpackInteger(value: number, prefixBits: number, first = 0): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [first | value];
  const out = [first | max];
  let rest = value - max;
  while (rest >= 128) {
    out.push((rest % 128) + 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

/** A header block of literals without indexing (no dynamic table, no Huffman): any decoder reads it. */
export function headerBlock(headers: [string, string][]): Buffer {
  const parts: Buffer[] = [];
  for (const [name, value] of headers) {
    parts.push(Buffer.from([0x00]));
    for (const text of [name, value]) parts.push(Buffer.from(hpackInteger(Buffer.byteLength(text), 7)), Buffer.from(text));
  }
  return Buffer.concat(parts);
}

/** A request's HEADERS frame: END_HEADERS, and END_STREAM when it has no body. */
export function requestHeaders(streamId: number, path: string, extra: [string, string][] = [], endStream = false): Buffer {
  const block = headerBlock([[":method", "POST"], [":scheme", "http"], [":authority", "127.0.0.1"], [":path", path], ...extra]);
  return frame(FRAME.HEADERS, FLAG.END_HEADERS | (endStream ? FLAG.END_STREAM : 0), streamId, block);
}

export interface ServerFrame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

export interface RawH2 {
  socket: net.Socket;
  /** Every frame the server sent so far. */
  frames: ServerFrame[];
  write(...frames: Buffer[]): void;
  /** Resolves once a frame matching `test` has come (at once when one has). */
  frame(test: (frame: ServerFrame) => boolean): Promise<ServerFrame>;
  /** Resolves when the server has closed the connection, with the milliseconds since it opened. */
  closed: Promise<number>;
}

/**
 * A connection that has sent the preface and an empty SETTINGS frame (and
 * `ack`: acknowledges the server's SETTINGS, as a well-behaved client does).
 */
export function openRawH2(port: number, { ack = true, settings = true }: { ack?: boolean; settings?: boolean } = {}): Promise<RawH2> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    const started = performance.now();
    const frames: ServerFrame[] = [];
    const waiters: { test: (frame: ServerFrame) => boolean; done: (frame: ServerFrame) => void }[] = [];
    let buffered = Buffer.alloc(0);
    const closed = new Promise<number>((done) => socket.on("close", () => done(Math.round(performance.now() - started))));
    socket.on("error", () => {}); // a reset is a close here; `closed` tells
    socket.on("data", (chunk: Buffer) => {
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 9) {
        const length = buffered.readUIntBE(0, 3);
        if (buffered.length < 9 + length) break;
        const got = { type: buffered[3]!, flags: buffered[4]!, streamId: buffered.readUInt32BE(5) & 0x7fffffff, payload: buffered.subarray(9, 9 + length) };
        buffered = buffered.subarray(9 + length);
        frames.push(got);
        if (ack && got.type === FRAME.SETTINGS && (got.flags & FLAG.ACK) === 0) socket.write(frame(FRAME.SETTINGS, FLAG.ACK, 0));
        for (const waiter of [...waiters]) {
          if (!waiter.test(got)) continue;
          waiters.splice(waiters.indexOf(waiter), 1);
          waiter.done(got);
        }
      }
    });
    socket.once("connect", () => {
      socket.write(settings ? Buffer.concat([PREFACE, frame(FRAME.SETTINGS, 0, 0)]) : PREFACE);
      resolve({
        socket,
        frames,
        closed,
        write: (...out) => socket.write(Buffer.concat(out)),
        frame: (test) =>
          new Promise((done, fail) => {
            const seen = frames.find(test);
            if (seen) return done(seen);
            waiters.push({ test, done });
            void closed.then(() => fail(new Error(`connection closed before the frame came; got types ${frames.map((f) => f.type).join(",")}`)));
          }),
      });
    });
    socket.once("error", reject);
  });
}

/** An RST_STREAM's or GOAWAY's error code. */
export function errorCode(frame: ServerFrame): number {
  return frame.type === FRAME.GOAWAY ? frame.payload.readUInt32BE(4) : frame.payload.readUInt32BE(0);
}
