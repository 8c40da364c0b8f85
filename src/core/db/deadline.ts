/**
 * A database that stopped answering (hung, partitioned) would otherwise hold
 * a decision until the connection dies, which may be never: past the
 * deadline the work fails with `timeout()`'s error. The query itself is left
 * to finish or fail on its connection; its answer is dropped.
 */
export function withDeadline<T>(work: Promise<T>, timeoutMs: number, timeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(timeout()), timeoutMs);
  });
  // race() handles `work`'s late rejection, so a query failing after the deadline is not unhandled.
  return Promise.race([work, deadline]).finally(() => clearTimeout(timer));
}
