import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
  type HealthCheckResponse,
} from "../../../gen/grpc/health/v1/health_pb.js";
import type { Readiness } from "../../core/authorize/readiness.js";

/**
 * grpc.health.v1.Health (https://github.com/grpc/grpc/blob/master/doc/health-checking.md)
 * over the readiness check: SERVING when keygate can decide (its database
 * answers and a policy is in force), NOT_SERVING when it cannot or while the
 * server shuts down. Every service keygate serves shares that one status:
 * none of them is useful while no decision can be made.
 */

export interface HealthServiceDeps {
  /** Fully-qualified names of the services served ("" — the server as a whole — is always known). */
  services: readonly string[];
  readiness: () => Promise<Readiness>;
  /** Aborted when the server begins to shut down: NOT_SERVING from then on, and Watch streams end. */
  shutdown?: AbortSignal;
  /** How often readiness is re-checked while anyone watches (default 2 s). */
  pollMs?: number;
}

export const HEALTH_POLL_MS = 2_000;

export function createHealthService({ services, readiness, shutdown, pollMs = HEALTH_POLL_MS }: HealthServiceDeps): ServiceImpl<typeof Health> {
  const known = new Set(["", ...services]);
  const monitor = createStatusMonitor(readiness, pollMs, shutdown);

  return {
    async check({ service }) {
      if (!known.has(service)) throw new ConnectError(`unknown service "${service}"`, Code.NotFound);
      return response(await monitor.current());
    },

    async list() {
      const status = await monitor.current();
      return create(HealthListResponseSchema, { statuses: Object.fromEntries([...known].map((name) => [name, response(status)])) });
    },

    async *watch({ service }, context) {
      if (!known.has(service)) {
        // The spec: answer SERVICE_UNKNOWN and keep the call open (the set never changes here).
        yield response(ServingStatus.SERVICE_UNKNOWN);
        await aborted(context.signal, shutdown);
        return;
      }
      for await (const status of watchStatus(monitor, context.signal, shutdown)) yield response(status);
    },
  };
}

function response(status: ServingStatus): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status });
}

interface StatusMonitor {
  /** The status now, from a fresh readiness check (concurrent callers share one); a change is also published. */
  current(): Promise<ServingStatus>;
  /** Calls `listener` with every status published; readiness is polled while anyone listens. Returns unsubscribe. */
  subscribe(listener: (status: ServingStatus) => void): () => void;
}

/**
 * One poller for every watcher: a database ping every `pollMs` however many
 * streams are open, and none when nobody watches.
 */
function createStatusMonitor(readiness: () => Promise<Readiness>, pollMs: number, shutdown: AbortSignal | undefined): StatusMonitor {
  const listeners = new Set<(status: ServingStatus) => void>();
  let inFlight: Promise<ServingStatus> | undefined;
  let last: ServingStatus | undefined;
  let timer: NodeJS.Timeout | undefined;
  let polling = false;

  function publish(status: ServingStatus): void {
    if (status === last) return;
    last = status;
    for (const listener of listeners) listener(status);
  }

  function current(): Promise<ServingStatus> {
    if (shutdown?.aborted) return Promise.resolve(ServingStatus.NOT_SERVING);
    inFlight ??= readiness()
      .then(
        (r) => (r.ready && !shutdown?.aborted ? ServingStatus.SERVING : ServingStatus.NOT_SERVING),
        // The check reports failures as values; anything thrown is still "cannot decide".
        () => ServingStatus.NOT_SERVING,
      )
      .then((status) => {
        inFlight = undefined;
        publish(status);
        return status;
      });
    return inFlight;
  }

  function schedule(): void {
    timer = setTimeout(() => {
      timer = undefined;
      void current().then(() => {
        if (listeners.size > 0 && !shutdown?.aborted) schedule();
        else polling = false;
      });
    }, pollMs);
    timer.unref();
  }

  return {
    current,
    subscribe(listener) {
      listeners.add(listener);
      if (!polling) {
        polling = true;
        schedule();
      }
      return () => {
        if (!listeners.delete(listener)) return;
        if (listeners.size === 0 && timer) {
          clearTimeout(timer);
          timer = undefined;
          polling = false;
        }
      };
    },
  };
}

/**
 * The statuses one Watch call sends: the current one at once, then each
 * change; on shutdown NOT_SERVING, then the end of the stream (a client
 * retries, and finds another instance). Ends when the caller cancels.
 */
async function* watchStatus(monitor: StatusMonitor, signal: AbortSignal, shutdown: AbortSignal | undefined): AsyncGenerator<ServingStatus> {
  // Only the newest status matters to a watcher that has not read the last one yet.
  let pending: ServingStatus | undefined;
  let wake: (() => void) | undefined;
  const notify = () => {
    wake?.();
    wake = undefined;
  };
  // Subscribed before the first check, so no change between the two is missed.
  const unsubscribe = monitor.subscribe((status) => {
    pending = status;
    notify();
  });
  // A cancelled call stops counting as a watcher at once: the generator may be
  // parked at a yield that nobody will resume, and polling must not wait for it.
  const stop = () => {
    unsubscribe();
    notify();
  };
  signal.addEventListener("abort", stop);
  shutdown?.addEventListener("abort", stop);
  try {
    const first = await monitor.current();
    // A change published meanwhile is newer than the answer awaited.
    pending ??= first;
    let sent: ServingStatus | undefined;
    while (!signal.aborted) {
      if (shutdown?.aborted) {
        if (sent !== ServingStatus.NOT_SERVING) yield ServingStatus.NOT_SERVING;
        return;
      }
      const next = pending;
      pending = undefined;
      if (next === undefined) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      if (next !== sent) {
        sent = next;
        yield next;
      }
    }
  } finally {
    unsubscribe();
    signal.removeEventListener("abort", stop);
    shutdown?.removeEventListener("abort", stop);
  }
}

/** Resolves once any of the signals is aborted. */
function aborted(...signals: (AbortSignal | undefined)[]): Promise<void> {
  const live = signals.filter((s): s is AbortSignal => s !== undefined);
  if (live.some((s) => s.aborted)) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      for (const s of live) s.removeEventListener("abort", done);
      resolve();
    };
    for (const s of live) s.addEventListener("abort", done);
  });
}
