import http from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";

/**
 * Sustained concurrent load whose every request ends in one of three
 * outcomes: `completed` (the server answered, whatever the answer),
 * `refused` (the request never reached a server: the connection was
 * refused, or an HTTP/2 GOAWAY/REFUSED_STREAM said it was not processed), or
 * `dropped` (sent, then lost to a reset, a broken pipe or a hang-up: what a
 * graceful shutdown must never cause).
 */

export type Outcome = "completed" | "refused" | "dropped";

export interface Classified {
  outcome: Outcome;
  /** For refused and dropped: what the client said. */
  detail?: string;
}

const REFUSED_CODES = new Set(["ECONNREFUSED"]);

/** Node's own errors (http.request, net): refused only when the connection never opened. */
export function classifyNodeError(error: unknown): Classified {
  const code = (error as NodeJS.ErrnoException).code;
  const detail = `${code ?? "?"}: ${(error as Error).message}`;
  return { outcome: code && REFUSED_CODES.has(code) ? "refused" : "dropped", detail };
}

function causeCode(error: unknown): string | undefined {
  let cause: unknown = error;
  for (let i = 0; i < 5 && cause; i++) {
    const code = (cause as NodeJS.ErrnoException).code;
    if (typeof code === "string") return code;
    cause = (cause as Error).cause;
  }
  return undefined;
}

/**
 * A connect-node error: an answer from the server (any code it sent) is
 * completed; Unavailable from a refused connection or a REFUSED_STREAM reset
 * is refused; anything else the transport made up is dropped.
 */
export function classifyConnectError(error: unknown): Classified {
  const connect = ConnectError.from(error);
  const detail = `${Code[connect.code]}: ${connect.rawMessage}${causeCode(error) ? ` (${causeCode(error)})` : ""}`;
  // REFUSED_STREAM: the server says it did not process the stream (connect-node reports it as Internal).
  if ((connect.code === Code.Unavailable && causeCode(error) === "ECONNREFUSED") || /REFUSED_STREAM/.test(connect.rawMessage)) return { outcome: "refused", detail };
  // A GOAWAY that reached a session manager with nothing open: the request was never sent.
  if (connect.code === Code.Canceled && /received GOAWAY without any open streams/.test(connect.rawMessage)) return { outcome: "refused", detail };
  // Codes only a server sends for these calls (the transport makes up Unavailable, Canceled, Internal, Unknown).
  if ([Code.ResourceExhausted, Code.InvalidArgument, Code.PermissionDenied, Code.Unauthenticated, Code.DeadlineExceeded, Code.NotFound].includes(connect.code)) {
    return { outcome: "completed" };
  }
  return { outcome: "dropped", detail };
}

/**
 * A grpc-js error: UNAVAILABLE because no connection could be made is
 * refused (grpc-js retries a REFUSED_STREAM on a new connection by itself);
 * a status with trailers from the server is completed; the rest is dropped.
 */
export function classifyGrpcError(error: grpc.ServiceError): Classified {
  const detail = `${grpc.status[error.code]}: ${error.details}`;
  if (error.code === grpc.status.UNAVAILABLE) {
    if (/ECONNREFUSED|No connection established|REFUSED_STREAM/.test(error.details)) return { outcome: "refused", detail };
    return { outcome: "dropped", detail };
  }
  if (error.code === grpc.status.CANCELLED || error.code === grpc.status.INTERNAL || error.code === grpc.status.UNKNOWN) return { outcome: "dropped", detail };
  return { outcome: "completed" };
}

export interface LoadCounts {
  completed: number;
  refused: number;
  dropped: number;
}

/** Outcomes per client kind, plus samples of what dropped (to show in a failure). */
export class LoadTally {
  readonly byKind = new Map<string, LoadCounts>();
  readonly droppedDetails: string[] = [];
  readonly refusedDetails = new Set<string>();
  private inFlight = new Map<number, { kind: string; startedAt: number }>();
  private nextId = 0;
  /** Ids of requests that were in flight when `snapshot()` was taken, and their outcomes. */
  private watched = new Map<number, Outcome | undefined>();

  /** Starts counting one request; call the returned function with its outcome. */
  start(kind: string): (result: Classified) => void {
    const id = this.nextId++;
    this.inFlight.set(id, { kind, startedAt: Date.now() });
    return ({ outcome, detail }) => {
      this.inFlight.delete(id);
      if (this.watched.has(id)) this.watched.set(id, outcome);
      const counts = this.byKind.get(kind) ?? { completed: 0, refused: 0, dropped: 0 };
      counts[outcome]++;
      this.byKind.set(kind, counts);
      if (outcome === "dropped") this.droppedDetails.push(`${kind}: ${detail ?? "?"}`);
      if (outcome === "refused" && detail) this.refusedDetails.add(`${kind}: ${detail}`);
    };
  }

  /** Marks every request now in flight (at SIGTERM); returns how many. */
  snapshot(): number {
    for (const id of this.inFlight.keys()) this.watched.set(id, undefined);
    return this.inFlight.size;
  }

  /** The outcomes of the requests in flight at `snapshot()`. */
  watchedOutcomes(): Record<Outcome | "pending", number> {
    const out = { completed: 0, refused: 0, dropped: 0, pending: 0 };
    for (const outcome of this.watched.values()) out[outcome ?? "pending"]++;
    return out;
  }

  total(): LoadCounts {
    const out = { completed: 0, refused: 0, dropped: 0 };
    for (const counts of this.byKind.values()) for (const key of ["completed", "refused", "dropped"] as const) out[key] += counts[key];
    return out;
  }
}

export interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One HTTP/1.1 request through `agent` (keep-alive); rejects with Node's error. */
export function httpRequest(agent: http.Agent, url: string, options: http.RequestOptions, body?: string): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { ...options, agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** Runs `fn` in `concurrency` loops until `running()` turns false; a refused request waits `backoffMs` before the next. */
export async function loop(concurrency: number, running: () => boolean, fn: () => Promise<Outcome>, backoffMs = 20): Promise<void> {
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (running()) {
        const outcome = await fn();
        if (outcome === "refused") await new Promise((resolve) => setTimeout(resolve, backoffMs));
      }
    }),
  );
}
