import type { EventEmitter } from "node:events";
import http from "node:http";
import autocannon from "autocannon";
import { LatencyHistogram } from "./stats.js";

/**
 * HTTP load from autocannon, in this process: a fixed number of keep-alive
 * connections, each sending its next request as soon as the last is
 * answered. Latencies are taken from autocannon's per-response event into
 * a 10 µs histogram (autocannon's own histogram keeps whole milliseconds).
 */
export interface HttpLoadOptions {
  url: string;
  connections: number;
  /** Run this long… */
  durationMs?: number;
  /** …or until this many requests are answered (wins over durationMs). */
  amount?: number;
  method?: "GET" | "POST";
  headers?: Record<string, string>;
  /** Headers of each request in turn (e.g. a different key every time); merged over `headers`. */
  nextHeaders?: () => Record<string, string>;
  /** Every response must have this status, else the round fails (default 200). */
  expectStatus?: number;
}

export interface LoadResult {
  requests: number;
  seconds: number;
  rps: number;
  /** Milliseconds. */
  p50: number;
  p99: number;
  /** CPU time the measured server used meanwhile, ms, when it was sampled. */
  serverCpuMs?: number;
  /** CPU time this process (the load generator) used meanwhile, ms. */
  clientCpuMs?: number;
}

export function httpLoad({ url, connections, durationMs = 1_000, amount, method = "POST", headers = {}, nextHeaders, expectStatus = 200 }: HttpLoadOptions): Promise<LoadResult> {
  const histogram = new LatencyHistogram();
  let unexpected = 0;
  let lastStatus = 0;
  return new Promise((resolve, reject) => {
    const options: autocannon.Options = {
      url,
      connections,
      pipelining: 1,
      method,
      headers,
      ...(amount === undefined ? { duration: durationMs / 1000 } : { amount }),
      ...(nextHeaders && {
        requests: [
          {
            setupRequest: (request: autocannon.Request) => {
              request.headers = { ...request.headers, ...nextHeaders() };
              return request;
            },
          },
        ],
      }),
    };
    const started = performance.now();
    const instance = autocannon(options, (error: unknown, result: autocannon.Result) => {
      const seconds = (performance.now() - started) / 1000;
      if (error) return reject(error instanceof Error ? error : new Error(String(error)));
      if (result.errors > 0 || result.timeouts > 0) return reject(new Error(`${url}: ${result.errors} connection errors, ${result.timeouts} timeouts`));
      if (unexpected > 0) return reject(new Error(`${url}: ${unexpected} responses were not ${expectStatus} (the last: ${lastStatus})`));
      if (histogram.total === 0) return reject(new Error(`${url}: no response in ${seconds.toFixed(1)} s`));
      resolve({ requests: histogram.total, seconds, rps: histogram.total / seconds, p50: histogram.quantile(0.5), p99: histogram.quantile(0.99) });
    });
    // The tracker emits (client, status, bytes, ms); @types/autocannon leaves the client out.
    (instance as unknown as EventEmitter).on("response", (_client: unknown, status: number, _bytes: number, latencyMs: number) => {
      if (status !== expectStatus) {
        unexpected++;
        lastStatus = status;
      }
      histogram.record(latencyMs);
    });
  });
}

/**
 * An offered load: `rate` requests per second at evenly spaced times,
 * whether or not earlier ones were answered, over at most `connections`
 * keep-alive connections (node:http). autocannon's own rate limit sends
 * each second's quota in a burst; this does not. A request's latency runs
 * from when it is handed to node:http, so time spent waiting for a free
 * connection counts, but not the timer's lateness in sending it (timers
 * fire at millisecond granularity, as coarse as what is measured).
 */
export async function pacedHttpLoad({ url, connections, durationMs = 1_000, rate, method = "POST", headers = {}, nextHeaders, expectStatus = 200 }: Omit<HttpLoadOptions, "amount"> & { rate: number }): Promise<LoadResult> {
  const target = new URL(url);
  const agent = new http.Agent({ keepAlive: true, maxSockets: connections });
  const histogram = new LatencyHistogram();
  const failures: string[] = [];
  const inFlight = new Set<Promise<void>>();
  const send = () => {
    const sent = performance.now();
    const done = new Promise<void>((resolve) => {
      const req = http.request(
        { agent, host: target.hostname, port: target.port, path: target.pathname, method, headers: { ...headers, ...nextHeaders?.(), "content-length": "0" } },
        (res) => {
          if (res.statusCode !== expectStatus) failures.push(`status ${res.statusCode}`);
          res.resume();
          res.once("end", () => {
            histogram.record(performance.now() - sent);
            resolve();
          });
        },
      );
      req.once("error", (error) => {
        failures.push(error.message);
        resolve();
      });
      req.end();
    });
    inFlight.add(done);
    void done.then(() => inFlight.delete(done));
  };
  const interval = 1000 / rate;
  const started = performance.now();
  const total = Math.floor((durationMs / 1000) * rate);
  try {
    for (let i = 0; i < total; ) {
      const now = performance.now();
      // Everything due by now goes out; then sleep until the next one is due.
      for (; i < total && started + i * interval <= now; i++) send();
      if (i < total) await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + i * interval - performance.now())));
    }
    await Promise.all(inFlight);
  } finally {
    agent.destroy();
  }
  const seconds = (performance.now() - started) / 1000;
  if (failures.length > 0) throw new Error(`${url}: ${failures.length} requests failed (the first: ${failures[0]})`);
  return { requests: histogram.total, seconds, rps: histogram.total / seconds, p50: histogram.quantile(0.5), p99: histogram.quantile(0.99) };
}
