/** How many decisions one AuthorizeStream may have in flight (the proto documents this number). */
export const STREAM_MAX_IN_FLIGHT = 256;

type Settled<O> = { ok: true; value: O } | { ok: false; error: unknown };

/**
 * Maps each item of `source` through `fn`, at most `limit` calls at a time,
 * yielding results as they complete rather than in source order: a slow item
 * (a cold key lookup) does not hold up fast ones behind it.
 *
 * The next item is pulled only while fewer than `limit` are running and every
 * finished result has been taken by the consumer, so a producer faster than
 * `fn` or than the consumer waits (for a request stream: HTTP/2 flow control)
 * instead of filling memory. When `source` ends, the running calls are
 * awaited and yielded, then the iterable ends. When `signal` aborts, it
 * throws the abort reason at once and stops pulling; running calls are left
 * to finish unobserved.
 *
 * `fn` should not reject: a rejection ends the iterable with that error.
 */
export async function* mapUnordered<I, O>(source: AsyncIterable<I>, limit: number, fn: (item: I) => Promise<O>, signal?: AbortSignal): AsyncGenerator<O> {
  const iterator = source[Symbol.asyncIterator]();
  const finished: Settled<O>[] = [];
  let running = 0;
  let sourceDone = false;
  let pulling: Promise<IteratorResult<I>> | undefined;
  // Resolved when a call finishes or the signal aborts: whatever the loop waits on besides `pulling`.
  let wake = () => {};
  const onAbort = () => wake();
  const settle = (result: Settled<O>) => {
    running--;
    finished.push(result);
    wake();
  };
  signal?.addEventListener("abort", onAbort);
  try {
    while (!sourceDone || running > 0 || finished.length > 0) {
      signal?.throwIfAborted();
      const result = finished.shift();
      if (result) {
        if (!result.ok) throw result.error;
        yield result.value;
        continue;
      }
      if (!sourceDone && running < limit) pulling ??= iterator.next();
      const woken = new Promise<"woken">((resolve) => (wake = () => resolve("woken")));
      const next = await (pulling ? Promise.race([pulling, woken]) : woken);
      if (next === "woken") continue;
      pulling = undefined;
      if (next.done) {
        sourceDone = true;
        continue;
      }
      running++;
      void fn(next.value).then(
        (value) => settle({ ok: true, value }),
        (error: unknown) => settle({ ok: false, error }),
      );
    }
  } finally {
    signal?.removeEventListener("abort", onAbort);
    if (!sourceDone) {
      // Not awaited: an async generator source answers return() only after its pending
      // next(), which may never come. A rejection of either is the caller's cancellation.
      pulling?.catch(() => {});
      iterator.return?.().catch(() => {});
    }
  }
}
