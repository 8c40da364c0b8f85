import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { Code, ConnectError } from "@connectrpc/connect";
import { createMethodSerializationLookup } from "@connectrpc/connect/protocol";
import {
  codeToHttpStatus,
  errorToJsonBytes,
  parseContentType as parseConnectContentType,
  parseTimeout as parseConnectTimeout,
} from "@connectrpc/connect/protocol-connect";
import { parseContentType as parseGrpcContentType, parseTimeout as parseGrpcTimeout } from "@connectrpc/connect/protocol-grpc";
import { AuthorizeService, type AuthorizeRequest } from "../../../gen/keygate/v1/authorize_pb.js";
import { requestIdOfResponse } from "../../http/request-id.js";
import type { AuthorizeCall } from "./authorize-call.js";

/**
 * Unary Authorize over Connect (HTTP/1.1 or h2c) and gRPC (h2c), answered
 * without the connect-node adapter. Authorize is the call gateways make once
 * per request of their own; the adapter spends most of its time per call on
 * machinery a small unary message does not need (abort signals, async
 * iterable pipelines, header objects), several times what the decision costs.
 *
 * Only the plain, common shape is taken: POST to the method's path, a Connect
 * unary or gRPC content type, no compression, a valid timeout header if any.
 * Everything else (GET, gRPC-Web, compressed bodies, malformed timeouts,
 * streaming, any other method) is left to the adapter, which remains the
 * reference: a differential test sends the same requests to both and expects
 * the same answers. Messages are parsed and serialized by connect's own
 * serialization and errors written by its own helpers.
 */

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

export interface DirectAuthorizeDeps {
  call: AuthorizeCall;
  /** The caller's address (for the failed-auth guard), as the adapter's context values give it. */
  sourceOf: (req: Request) => string | undefined;
  /** The adapter's readMaxBytes: larger messages are refused the same way. */
  readMaxBytes: number;
  /** Unexpected failures (never a deny or an outage, which are answers), with the request they broke. */
  onError?: (error: unknown, req: Request) => void;
}

const METHOD = AuthorizeService.method.authorize;
export const AUTHORIZE_PATH = `/${AuthorizeService.typeName}/${METHOD.name}`;
const WRITE_MAX_BYTES = 0xffffffff;

/** Returns a handler that answers and returns true, or returns false (untouched) for the adapter to take. */
export function createDirectAuthorize({ call, sourceOf, readMaxBytes, onError }: DirectAuthorizeDeps): (req: Request, res: Response) => boolean {
  const serialization = createMethodSerializationLookup(METHOD, undefined, undefined, { readMaxBytes, writeMaxBytes: WRITE_MAX_BYTES });

  async function answer(req: Request, res: Response, protocol: "connect" | "grpc", binary: boolean): Promise<void> {
    const reply = protocol === "connect" ? replyConnect : replyGrpc;
    let body: Body;
    try {
      // A gRPC body is one envelope: its header says how large the message is.
      body = protocol === "connect" ? await readBody(req, readMaxBytes, true) : await readBody(req, readMaxBytes + ENVELOPE_HEADER, false);
    } catch (error) {
      // A declared size over the limit is answered; otherwise the client went away: nobody to answer.
      if (error instanceof ConnectError) reply(res, binary, error);
      return;
    }
    let output;
    try {
      if (body.overflow && protocol === "connect") {
        throw new ConnectError(`message size is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
      }
      const bytes = protocol === "connect" ? body.bytes : singleEnvelope(body, readMaxBytes);
      const request: AuthorizeRequest = serialization.getI(binary).parse(bytes);
      const response = await call(request, sourceOf(req));
      output = serialization.getO(binary).serialize(response);
    } catch (error) {
      if (!(error instanceof ConnectError)) onError?.(error, req);
      reply(res, binary, error instanceof ConnectError ? error : new ConnectError("internal error", Code.Internal, undefined, undefined, error));
      return;
    }
    reply(res, binary, output);
  }

  return (req, res) => {
    if (req.method !== "POST" || req.url !== AUTHORIZE_PATH) return false;
    const contentType = req.headers["content-type"];
    if (contentType === undefined) return false;
    const connect = parseConnectContentType(contentType);
    if (connect && !connect.stream) {
      if (!isIdentity(req.headers["content-encoding"])) return false;
      if (!validTimeout(req.headers["connect-timeout-ms"], parseConnectTimeout)) return false;
      void answer(req, res, "connect", connect.binary);
      return true;
    }
    const grpc = req.httpVersionMajor === 2 ? parseGrpcContentType(contentType) : undefined;
    if (grpc) {
      if (!isIdentity(req.headers["grpc-encoding"])) return false;
      if (!validTimeout(req.headers["grpc-timeout"], parseGrpcTimeout)) return false;
      void answer(req, res, "grpc", grpc.binary);
      return true;
    }
    return false;
  };
}

function isIdentity(encoding: string | string[] | undefined): boolean {
  return encoding === undefined || encoding === "identity";
}

/**
 * A timeout header that parses is accepted and not enforced: a decision
 * takes well under a millisecond, or fails over to UNAVAILABLE on its own.
 * A malformed one goes to the adapter, which answers the protocol's error.
 */
function validTimeout(value: string | string[] | undefined, parse: (value: string | null, max: number) => { error?: unknown }): boolean {
  if (value === undefined) return true;
  return typeof value === "string" && parse(value, Number.MAX_SAFE_INTEGER).error === undefined;
}

const ENVELOPE_HEADER = 5;
const COMPRESSED_FLAG = 0b01;

/** A request body: whole, or (overflow) its first `limit` bytes or more, the rest drained unbuffered. */
interface Body {
  bytes: Uint8Array;
  overflow: boolean;
}

/**
 * The request body up to `limit` bytes; rejects when the client goes away
 * first. A Content-Length over the limit is refused before reading, with the
 * adapter's message.
 */
function readBody(req: Request, limit: number, checkLength: boolean): Promise<Body> {
  return new Promise((resolve, reject) => {
    const declared = checkLength ? Number(req.headers["content-length"]) : NaN;
    if (Number.isSafeInteger(declared) && declared > limit) {
      req.resume();
      reject(new ConnectError(`message size ${declared} is larger than configured readMaxBytes ${limit}`, Code.ResourceExhausted));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let kept = 0;
    const onData = (chunk: Buffer) => {
      if (kept <= limit) {
        chunks.push(chunk);
        kept += chunk.length;
      }
      size += chunk.length;
    };
    req.on("data", onData);
    req.once("end", () => resolve({ bytes: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, kept), overflow: size > limit }));
    req.once("error", reject);
    req.once("close", () => reject(new Error("request closed before its end")));
  });
}

/** The one message of a unary gRPC request body, with the adapter's errors for anything else. */
function singleEnvelope({ bytes: body, overflow }: Body, readMaxBytes: number): Uint8Array {
  if (body.byteLength === 0) throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
  if (body.byteLength < ENVELOPE_HEADER) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const flags = view.getUint8(0);
  const length = view.getUint32(1);
  if (length > readMaxBytes) throw new ConnectError(`message size ${length} is larger than configured readMaxBytes ${readMaxBytes}`, Code.ResourceExhausted);
  const end = ENVELOPE_HEADER + length;
  if (body.byteLength < end) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
  if ((flags & COMPRESSED_FLAG) !== 0) throw new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal);
  // Past readMaxBytes + 5 bytes with a message no larger than readMaxBytes: more follow it.
  if (overflow || body.byteLength > end) throw new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
  return body.subarray(ENVELOPE_HEADER, end);
}

/** Response headers with the request's x-request-id, in writeHead's own object (Node's fast path). */
function withRequestId(res: Response, headers: Record<string, string>): Record<string, string> {
  const id = requestIdOfResponse(res);
  if (id !== undefined) headers["x-request-id"] = id;
  return headers;
}

function replyConnect(res: Response, binary: boolean, outcome: Uint8Array | ConnectError): void {
  if (res.headersSent || res.destroyed) return;
  const out = res as ServerResponse;
  if (outcome instanceof ConnectError) {
    const body = errorToJsonBytes(outcome, {});
    const headers: Record<string, string> = { "content-type": "application/json", "content-length": String(body.byteLength) };
    outcome.metadata.forEach((value, key) => void (headers[key] = value));
    out.writeHead(codeToHttpStatus(outcome.code), withRequestId(res, headers));
    out.end(body);
    return;
  }
  out.writeHead(200, withRequestId(res, { "content-type": binary ? "application/proto" : "application/json", "content-length": String(outcome.byteLength) }));
  out.end(outcome);
}

function replyGrpc(res: Response, binary: boolean, outcome: Uint8Array | ConnectError): void {
  if (res.headersSent || res.destroyed) return;
  const out = res as Http2ServerResponse;
  const contentType = binary ? "application/grpc+proto" : "application/grpc+json";
  if (outcome instanceof ConnectError) {
    const trailers: Record<string, string> = {};
    outcome.metadata.forEach((value, key) => void (trailers[key] = value));
    trailers["grpc-status"] = String(outcome.code);
    trailers["grpc-message"] = encodeURIComponent(outcome.rawMessage);
    out.writeHead(200, withRequestId(res, { "content-type": contentType }));
    out.addTrailers(trailers);
    out.end();
    return;
  }
  const envelope = Buffer.allocUnsafe(ENVELOPE_HEADER + outcome.byteLength);
  envelope.writeUInt8(0, 0);
  envelope.writeUInt32BE(outcome.byteLength, 1);
  envelope.set(outcome, ENVELOPE_HEADER);
  out.writeHead(200, withRequestId(res, { "content-type": contentType }));
  out.addTrailers({ "grpc-status": "0" });
  out.end(envelope);
}
