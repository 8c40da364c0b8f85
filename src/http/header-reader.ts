import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";

/**
 * Every value of a header (name in lower case), joined as Fetch does; so
 * duplicates show as a malformed value. Read from the raw header list: Node
 * builds `headers` and `headersDistinct` lazily, and the entries need only a
 * handful of names, so building neither object is the cheaper way.
 */
export function headerReader(req: IncomingMessage | Http2ServerRequest): (name: string) => string | undefined {
  const raw = req.rawHeaders;
  return (name) => {
    let value: string | undefined;
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const key = raw[i]!;
      if (key.length !== name.length || key.toLowerCase() !== name) continue;
      value = value === undefined ? raw[i + 1]! : `${value}, ${raw[i + 1]!}`;
    }
    return value;
  };
}

/**
 * Node reads HTTP/1.1 and HTTP/2 header values as Latin-1: one character per
 * byte. A path header's bytes are what the gateway sent, UTF-8 if anything
 * (Go's Cube, nginx's $request_uri, Traefik): read as Latin-1, "café" became
 * "cafÃ©", and raw overlong or invalid UTF-8 (C0 AE, the IIS/Tomcat "..")
 * became ordinary Latin-1 letters that the path rules accepted, while the
 * same bytes percent-encoded are refused. Reading them as UTF-8 gives the path
 * an Authorize caller would send; invalid sequences become U+FFFD, which the
 * path rules refuse ("invalid UTF-8").
 */
export function utf8HeaderValue(value: string): string;
export function utf8HeaderValue(value: string | undefined): string | undefined;
export function utf8HeaderValue(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  for (let i = 0; i < value.length; i++) {
    if (value.charCodeAt(i) > 0x7f) return Buffer.from(value, "latin1").toString("utf8");
  }
  return value;
}
