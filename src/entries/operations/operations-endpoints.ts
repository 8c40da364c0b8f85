import type { ServerResponse } from "node:http";
import type { Handler } from "../../http/listener.js";
import { HEALTHZ_PATH, METRICS_PATH, READYZ_PATH } from "../../config/public-paths.js";
import type { Readiness, ReadinessCheck } from "../../core/authorize/readiness.js";
import type { Metrics } from "../../telemetry/metrics.js";

/**
 * Liveness, readiness and metrics for operators, on the public port:
 *
 * - `/healthz`: 200 `{"status":"ok"}` whenever the process can answer HTTP
 *   (liveness: restart it only when this fails).
 * - `/readyz`: 200 with the readiness JSON when the database answers and a
 *   policy is in force, 503 with the same JSON when not, or once shutdown
 *   has begun (send it no more traffic). The port is public: each check says
 *   ok or a short reason, never an error's text (policy rule text, database
 *   addresses); the details go to the log (`onNotReady`) and `keygate status`.
 * - `/metrics`: Prometheus text format (absent with KEYGATE_METRICS=false).
 *
 * GET or HEAD only; never cached.
 */

type Request = Parameters<Handler>[0];
type Response = Parameters<Handler>[1];

export interface OperationsDeps {
  readiness: ReadinessCheck;
  /** Served at /metrics; unset (KEYGATE_METRICS=false) = no /metrics. */
  metrics?: Pick<Metrics, "render" | "contentType">;
  /** A readiness check with a failing part, with its details (for the log; the answer carries none). */
  onNotReady?: (state: Readiness) => void;
  /** Aborted when the server begins to stop: /readyz answers 503 from then on. */
  shutdown?: AbortSignal;
  onError?: (error: unknown) => void;
}

const HEALTHY = JSON.stringify({ status: "ok" });
const SHUTTING_DOWN = JSON.stringify({ ready: false, shuttingDown: true });

/** What /readyz shows: each check's state and a short reason, never an error's own text. */
export function publicReadiness(state: Readiness): Readiness {
  const { database, policy } = state.checks;
  return {
    ready: state.ready,
    checks: {
      database: database.ok ? { ok: true } : { ok: false, error: "the database does not answer (details in the server log)" },
      policy: {
        ok: policy.ok,
        ...(policy.version !== undefined && { version: policy.version }),
        ...(policy.error !== undefined && { error: policy.ok ? "last reload failed: still serving this version (details in the log and keygate status)" : "no policy in force (details in the server log)" }),
      },
    },
  };
}

export function operationsEndpoints({ readiness, metrics, shutdown, onError, onNotReady }: OperationsDeps): [string, Handler][] {
  const endpoints: [string, Handler][] = [
    [
      HEALTHZ_PATH,
      (req, res) => {
        if (readOnly(req, res)) write(res, 200, "application/json", HEALTHY);
      },
    ],
    [
      READYZ_PATH,
      (req, res) => {
        if (!readOnly(req, res)) return;
        if (shutdown?.aborted) return write(res, 503, "application/json", SHUTTING_DOWN);
        readiness().then(
          (state) => {
            // A failed reload was logged when it happened; an unready part is logged on each probe.
            if (!state.ready) onNotReady?.(state);
            write(res, state.ready ? 200 : 503, "application/json", JSON.stringify(publicReadiness(state)));
          },
          (error: unknown) => {
            onError?.(error);
            write(res, 503, "application/json", JSON.stringify({ ready: false, error: "readiness check failed" }));
          },
        );
      },
    ],
  ];
  if (metrics) {
    endpoints.push([
      METRICS_PATH,
      (req, res) => {
        if (!readOnly(req, res)) return;
        metrics.render().then(
          (text) => write(res, 200, metrics.contentType, text),
          (error: unknown) => {
            onError?.(error);
            write(res, 500, "text/plain; charset=utf-8", "metrics could not be collected\n");
          },
        );
      },
    ]);
  }
  return endpoints;
}

/** True for GET and HEAD; anything else is answered 405 here. A body is never read. */
function readOnly(req: Request, res: Response): boolean {
  req.resume();
  if (req.method === "GET" || req.method === "HEAD") return true;
  write(res, 405, "application/json", JSON.stringify({ code: 405, message: "use GET" }), { allow: "GET, HEAD" });
  return false;
}

function write(res: Response, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const out = res as ServerResponse;
  out.writeHead(status, { "content-type": contentType, "content-length": String(Buffer.byteLength(body)), "cache-control": "no-store", ...headers });
  out.end(body);
}
