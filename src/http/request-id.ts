import { AsyncLocalStorage } from "node:async_hooks";
import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { performance } from "node:perf_hooks";
import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";
import type { AuthorizeInput, Decision } from "../core/authorize/decision.js";
import { urlPath } from "./listener.js";
import type { Logger } from "../telemetry/logger.js";

/**
 * Request ids: every HTTP and RPC request gets one, echoed in the
 * `x-request-id` response header and carried by the log lines about it, so
 * a gateway's log line and keygate's can be matched. A well-formed incoming
 * `x-request-id` (a gateway's, nginx's `$request_id`, Envoy's) is kept;
 * anything else (missing, repeated, too long, odd characters) is replaced by
 * a fresh UUID, so a client can never write newlines or 10 KB into a log.
 *
 * The allow path stays cheap at info level: one header scan, one UUID when
 * none was sent, one response header; nothing else per request. At debug
 * level each request also gets a log line when it ends, and for that its
 * decision (reason, key id) is found through an AsyncLocalStorage, which
 * costs a little on every promise and so is entered only at debug.
 */

export const REQUEST_ID_HEADER = "x-request-id";
export const MAX_REQUEST_ID_LENGTH = 128;
const SAFE_ID = /^[A-Za-z0-9._:+=/-]+$/;

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

const kRequestId = Symbol("keygate.requestId");
type Tagged = { [kRequestId]?: string };

/** The request id given to this request by `withRequestIds` (undefined for a request that never went through it). */
export function requestIdOf(req: Request): string | undefined {
  return (req as Request & Tagged)[kRequestId];
}

/** The request id as an RPC handler sees it (`context.values.get(kRequestIdValue)`). */
export const kRequestIdValue = createContextKey<string | undefined>(undefined, { description: "request id" });

/** Wraps connectNodeAdapter's `contextValues` so handlers see the request id. */
export function withRequestIdValue(contextValues: (req: Request) => ContextValues = () => createContextValues()): (req: Request) => ContextValues {
  return (req) => {
    const values = contextValues(req);
    const id = requestIdOf(req);
    if (id !== undefined) values.set(kRequestIdValue, id);
    return values;
  };
}

/** A client's x-request-id if there is exactly one and it is well formed; else undefined. */
export function incomingRequestId(rawHeaders: readonly string[]): string | undefined {
  let found: string | undefined;
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length !== REQUEST_ID_HEADER.length || name.toLowerCase() !== REQUEST_ID_HEADER) continue;
    if (found !== undefined) return undefined; // sent twice: trust neither
    found = rawHeaders[i + 1]!;
  }
  if (found === undefined || found.length === 0 || found.length > MAX_REQUEST_ID_LENGTH || !SAFE_ID.test(found)) return undefined;
  return found;
}

/** The request's id (kept or made), remembered on the request; the response header is not set. */
export function tagRequestId(req: Request): string {
  const id = incomingRequestId(req.rawHeaders) ?? randomUUID();
  (req as Request & Tagged)[kRequestId] = id;
  return id;
}

/** Sets the x-request-id response header from the request's id, if it has one. */
export function setRequestIdHeader(req: Request, res: Response): void {
  const id = requestIdOf(req);
  if (id !== undefined) res.setHeader(REQUEST_ID_HEADER, id);
}

/**
 * The x-request-id header for a response a hot-path writer builds itself
 * (the Cube callback, the direct Authorize path): passing it in writeHead's
 * own header object keeps Node's fast path, which a setHeader beforehand
 * gives up. Undefined when the request was never given an id.
 */
export function requestIdOfResponse(res: Response): string | undefined {
  const req = (res as { req?: Request }).req;
  return req === undefined ? undefined : requestIdOf(req);
}

/** The request's id (kept or made), remembered on the request and set on the response. */
export function assignRequestId(req: Request, res: Response): string {
  const id = tagRequestId(req);
  res.setHeader(REQUEST_ID_HEADER, id);
  return id;
}

/** What the debug line says about a request's decision(s). */
interface RequestNote {
  id: string;
  entry?: string;
  reason?: string;
  keyId?: string;
  decisions: number;
}

/** The request being handled, at debug level only (see the file comment). */
const current = new AsyncLocalStorage<RequestNote>();

/** The id of the request being handled, when known (debug level only): for log lines made deep in the core. */
export function currentRequestId(): string | undefined {
  return current.getStore()?.id;
}

/** For the runtime's onDecision: remembers a decision for the request's debug line. Free when not at debug. */
export function noteDecision(input: AuthorizeInput, decision: Decision): void {
  const note = current.getStore();
  if (!note) return;
  note.decisions++;
  if (note.decisions > 1) return; // a stream's first decision stands for it; the count says there were more
  if (input.entry !== undefined) note.entry = input.entry;
  note.reason = decision.reason;
  if (decision.key) note.keyId = decision.key.id;
}

/**
 * Every request through `handler` gets an id (header in, header out). At
 * debug level, one line per request once it has ended: method, route (the
 * path without its query, cut and made printable), status, duration, the
 * decision's entry, reason and key id, and the id. Never a header value.
 */
export function withRequestIds<Req extends Request, Res extends Response>(
  handler: (req: Req, res: Res) => void,
  log: Logger,
  /** "handler": the handler sets the x-request-id response header itself (setRequestIdHeader, requestIdOfResponse). */
  header: "here" | "handler" = "here",
): (req: Req, res: Res) => void {
  const assign = header === "here" ? assignRequestId : (req: Req) => tagRequestId(req);
  if (log.level !== "debug") {
    return (req, res) => {
      assign(req, res);
      handler(req, res);
    };
  }
  return (req, res) => {
    const id = assign(req, res);
    const started = performance.now();
    const note: RequestNote = { id, decisions: 0 };
    res.once("close", () => {
      log.debug("request", {
        request_id: id,
        method: printable(req.method ?? "", 16),
        route: printable(urlPath(req.url), 200),
        http: req.httpVersion,
        status: res.statusCode,
        ...(!res.writableFinished && { aborted: true }),
        duration_ms: Math.round((performance.now() - started) * 100) / 100,
        ...(note.entry !== undefined && { entry: note.entry }),
        ...(note.reason !== undefined && { reason: note.reason }),
        ...(note.keyId !== undefined && { key_id: note.keyId }),
        ...(note.decisions > 1 && { decisions: note.decisions }),
      });
    });
    current.run(note, () => handler(req, res));
  };
}

/** A client-supplied string for a log line: cut to `max`, control characters escaped. */
function printable(text: string, max: number): string {
  const cut = text.length > max ? `${text.slice(0, max)}…` : text;
  // eslint-disable-next-line no-control-regex
  return cut.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}
