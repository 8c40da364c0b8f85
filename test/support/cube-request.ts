import net from "node:net";

/**
 * The Cube API Server auth callback, byte for byte: a raw HTTP/1.1 request on
 * a fresh socket, so header names keep the case written here, a header can be
 * sent twice, and nothing (no body, no content type) is added behind our back.
 */

export interface CubeResponse {
  status: number;
  /** Lower-cased header names. */
  headers: Record<string, string>;
  body: string;
}

export interface CubeRequestOptions {
  /** Default POST, as Cube sends. */
  method?: string;
  /** Default /verify. */
  target?: string;
}

/** Header values are written as latin1, one byte per character (so "\u00c5\u00bf" sends the UTF-8 bytes of "ſ"). */
export type RawHeaders = readonly (readonly [string, string])[];

export function cubeRequest(baseUrl: string, headers: RawHeaders, { method = "POST", target = "/verify" }: CubeRequestOptions = {}): Promise<CubeResponse> {
  const { hostname, port } = new URL(baseUrl);
  const head = [`${method} ${target} HTTP/1.1`, `Host: ${hostname}:${port}`, ...headers.map(([name, value]) => `${name}: ${value}`), "Connection: close", "", ""].join("\r\n");
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    socket.setTimeout(15_000, () => socket.destroy(new Error(`no answer from ${baseUrl}${target} in 15 s`)));
    // Write, do not end: a half-closed request may be dropped before it is answered.
    socket.on("connect", () => socket.write(Buffer.from(head, "latin1")));
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", reject);
    socket.on("end", () => {
      try {
        resolve(parseResponse(Buffer.concat(chunks)));
      } catch (error) {
        reject(error as Error);
      }
    });
  });
}

function parseResponse(raw: Buffer): CubeResponse {
  const split = raw.indexOf("\r\n\r\n");
  if (split === -1) throw new Error(`not an HTTP response: ${JSON.stringify(raw.toString("latin1").slice(0, 200))}`);
  const [statusLine, ...lines] = raw.subarray(0, split).toString("latin1").split("\r\n");
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? "");
  if (!status) throw new Error(`bad status line: ${statusLine}`);
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(":");
    headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  let body = raw.subarray(split + 4);
  if (headers["content-length"] !== undefined) body = body.subarray(0, Number(headers["content-length"]));
  return { status: Number(status[1]), headers, body: body.toString("utf8") };
}

/** The headers Cube sends for a client that used "Authorization: Bearer KEY". */
export function bearer(key: string, path: string, method?: string): RawHeaders {
  return [["Authorization", `Bearer ${key}`], ["X-Request-Path", path], ...(method === undefined ? [] : [["X-Request-Method", method] as const])];
}

/** The headers Cube sends for a client that used "X-API-Key: KEY" (the E2B SDK). */
export function apiKey(key: string, path: string, method?: string): RawHeaders {
  return [["X-API-Key", key], ["X-Request-Path", path], ...(method === undefined ? [] : [["X-Request-Method", method] as const])];
}
