import type { LoadResult } from "./http-load.js";
import { LatencyHistogram } from "./stats.js";

/**
 * RPC load at a fixed concurrency, in this process: `concurrency` callers,
 * each issuing its next call as soon as the last is answered (a closed
 * loop, like autocannon's connections), for `durationMs`.
 */
export async function unaryLoad(call: (caller: number) => Promise<void>, { concurrency, durationMs }: { concurrency: number; durationMs: number }): Promise<LoadResult> {
  const histogram = new LatencyHistogram();
  const started = performance.now();
  const end = started + durationMs;
  const caller = async (index: number) => {
    while (performance.now() < end) {
      const sent = performance.now();
      await call(index);
      histogram.record(performance.now() - sent);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, i) => caller(i)));
  const seconds = (performance.now() - started) / 1000;
  return { requests: histogram.total, seconds, rps: histogram.total / seconds, p50: histogram.quantile(0.5), p99: histogram.quantile(0.99) };
}

/** One bidirectional stream: requests in, responses out, matched by an id the caller picks. */
export interface StreamDriver<I, O> {
  open(input: AsyncIterable<I>, stream: number): AsyncIterable<O>;
  request(id: number): I;
  /** The id a response answers. */
  idOf(response: O): number;
  /** Throws when a response is not what the bench expects. */
  check(response: O): void;
}

/**
 * `streams` streams, each keeping `window` requests in flight: a new
 * request goes out as each answer comes in. At the deadline each stream
 * stops sending, half-closes, and counts the answers still owed to it.
 */
export async function streamLoad<I, O>(driver: StreamDriver<I, O>, { streams, window, durationMs }: { streams: number; window: number; durationMs: number }): Promise<LoadResult> {
  const histogram = new LatencyHistogram();
  const started = performance.now();
  const end = started + durationMs;
  const run = async (stream: number) => {
    const input = createQueue<I>();
    const sentAt = new Map<number, number>();
    let next = 0;
    const send = () => {
      const id = next++;
      sentAt.set(id, performance.now());
      input.push(driver.request(id));
    };
    for (let i = 0; i < window; i++) send();
    for await (const response of driver.open(input, stream)) {
      const id = driver.idOf(response);
      const sent = sentAt.get(id);
      if (sent === undefined) throw new Error(`stream ${stream}: an answer for id ${id}, which is not awaiting one`);
      sentAt.delete(id);
      driver.check(response);
      histogram.record(performance.now() - sent);
      if (performance.now() < end) send();
      else input.end();
    }
    if (sentAt.size > 0) throw new Error(`stream ${stream} ended with ${sentAt.size} requests unanswered`);
  };
  await Promise.all(Array.from({ length: streams }, (_, i) => run(i)));
  const seconds = (performance.now() - started) / 1000;
  return { requests: histogram.total, seconds, rps: histogram.total / seconds, p50: histogram.quantile(0.5), p99: histogram.quantile(0.99) };
}

/**
 * An async iterable fed by push(), ended by end() (idempotent). An async
 * generator underneath, so it has the return() and throw() that
 * connect-es calls when a stream fails.
 */
function createQueue<T>(): AsyncIterable<T> & { push(item: T): void; end(): void } {
  const items: T[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  const signal = () => {
    const resolve = wake;
    wake = undefined;
    resolve?.();
  };
  async function* drain(): AsyncGenerator<T> {
    for (;;) {
      if (items.length > 0) yield items.shift()!;
      else if (ended) return;
      else await new Promise<void>((resolve) => (wake = resolve));
    }
  }
  const iterable = drain();
  return {
    push(item) {
      if (ended) return;
      items.push(item);
      signal();
    },
    end() {
      ended = true;
      signal();
    },
    [Symbol.asyncIterator]: () => iterable,
  };
}
