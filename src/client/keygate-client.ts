import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AuditService } from "../../gen/keygate/v1/audit_pb.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { ResourceService } from "../../gen/keygate/v1/resource_pb.js";

/** What every keygate client takes, whichever way it reaches the server. */
export interface KeygateClientCommonOptions {
  /**
   * A key allowed to manage keys (or read the audit log, or claim resources), sent as
   * `Authorization: Bearer …` on KeyService, AuditService and ResourceService calls only:
   * Authorize carries the key it checks in its request, and needs no key of
   * the caller's. A call's own `Authorization` header wins.
   */
  apiKey?: string;
  /**
   * The deadline of a unary call (Authorize, ManageKey, ListAuditEvents) that
   * sets no `timeoutMs` of its own; 10 000 ms by default. keygate fails
   * closed, and so should its caller: a hung call ends with
   * `Code.DeadlineExceeded` instead of holding a request forever. Lower it
   * for an Authorize on every request of a hot path; 0 means no deadline.
   * AuthorizeStream is long-lived and gets no default deadline.
   */
  timeoutMs?: number;
}

/** keygate over the Connect protocol, built here. */
export interface KeygateUrlOptions extends KeygateClientCommonOptions {
  /** keygate's address, e.g. "http://127.0.0.1:8080": Connect, gRPC and gRPC-Web share its one port. */
  baseUrl: string;
  /**
   * "2" (the default): one multiplexed HTTP/2 connection (h2c for http://),
   * kept open between calls; AuthorizeStream needs it. "1.1": for a proxy
   * in between that speaks only HTTP/1.1; AuthorizeStream then fails.
   */
  httpVersion?: "1.1" | "2";
  /** Run around every call, e.g. to add tracing headers or log. */
  interceptors?: Interceptor[];
}

/**
 * keygate over a transport of the caller's making: gRPC
 * (`createGrpcTransport`), TLS options, keep-alive pings, or an in-memory
 * `createRouterTransport` in tests. apiKey and timeoutMs still apply.
 */
export interface KeygateTransportOptions extends KeygateClientCommonOptions {
  transport: Transport;
}

export type KeygateClientOptions = KeygateUrlOptions | KeygateTransportOptions;

/** Typed clients for keygate's services, sharing one transport. */
export interface KeygateClient {
  /** Authorize and AuthorizeStream: a deny is a response (`allowed: false`, a reason), not an error. */
  authorize: Client<typeof AuthorizeService>;
  /** ManageKey: create, get, list, update, revoke, rotate, delete, reset-all. Needs `apiKey`. */
  keys: Client<typeof KeyService>;
  /** ListAuditEvents. Needs `apiKey`. */
  audit: Client<typeof AuditService>;
  /** Claim, Release, Get, List of owned resources (who owns which sandbox). Needs `apiKey`. */
  resources: Client<typeof ResourceService>;
  /**
   * Closes the HTTP/2 connection this client opened (none for HTTP/1.1 or a
   * given transport). Not needed for a process to exit, since an idle
   * connection does not hold it; for a graceful shutdown, call it last.
   */
  close(): void;
}

/** The default deadline of a unary call: Cube waits as long for its auth callback. */
const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Typed Connect clients for keygate.
 *
 * @example
 * const keygate = createKeygateClient({ baseUrl: "http://127.0.0.1:8080" });
 * const res = await keygate.authorize.authorize({ credential, path: "/sandboxes/abc", method: "DELETE" });
 * if (!res.allowed) console.log(Reason[res.reason], res.message);
 */
export function createKeygateClient(options: KeygateClientOptions): KeygateClient {
  let session: Http2SessionManager | undefined;
  let transport: Transport;
  if ("transport" in options) transport = options.transport;
  else {
    const httpVersion = options.httpVersion ?? "2";
    // Own session manager, so close() ends this client's connection and no other.
    if (httpVersion === "2") session = new Http2SessionManager(options.baseUrl);
    transport = createConnectTransport({ baseUrl: options.baseUrl, httpVersion, sessionManager: session, interceptors: options.interceptors });
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const decisions = withDefaults(transport, timeoutMs, undefined);
  const managed = withDefaults(transport, timeoutMs, options.apiKey);
  return {
    authorize: createClient(AuthorizeService, decisions),
    keys: createClient(KeyService, managed),
    audit: createClient(AuditService, managed),
    resources: createClient(ResourceService, managed),
    close: () => session?.abort(),
  };
}

/** A call's request headers, as a transport takes them. */
type CallHeader = Parameters<Transport["unary"]>[3];

/** `transport` with a default deadline for unary calls and, when `apiKey` is given, its Authorization header. */
function withDefaults(transport: Transport, timeoutMs: number, apiKey: string | undefined): Transport {
  const headerOf = (header: CallHeader): CallHeader => {
    if (apiKey === undefined) return header;
    const merged = new Headers(header);
    if (!merged.has("authorization")) merged.set("authorization", `Bearer ${apiKey}`);
    return merged;
  };
  return {
    unary: (method, signal, callTimeoutMs, header, input, contextValues) =>
      transport.unary(method, signal, callTimeoutMs ?? timeoutMs, headerOf(header), input, contextValues),
    stream: (method, signal, callTimeoutMs, header, input, contextValues) =>
      transport.stream(method, signal, callTimeoutMs, headerOf(header), input, contextValues),
  };
}
