/** Order statistics and number formatting shared by the benches. */

/** The q-quantile of ascending values (nearest rank); NaN when empty. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

export const sortedCopy = (values: readonly number[]) => [...values].sort((x, y) => x - y);
export const median = (values: readonly number[]) => quantile(sortedCopy(values), 0.5);

export interface Summary {
  median: number;
  min: number;
  max: number;
  /** Every sample, in the order taken. */
  samples: number[];
}

export function summarize(samples: readonly number[]): Summary {
  return { median: median(samples), min: Math.min(...samples), max: Math.max(...samples), samples: [...samples] };
}

export const ms = (value: number, digits = 1) => `${value.toFixed(digits)} ms`;
export const rps = (value: number) => `${Math.round(value).toLocaleString("en-US")}/s`;
export const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(0)} MB`;
export const count = (value: number) => Math.round(value).toLocaleString("en-US");

/**
 * Latencies in 10 µs buckets up to 100 ms (anything slower is kept as is):
 * recording costs an increment, so the load generator measures without
 * slowing itself down by much, at a resolution far below the 2 ms targets.
 */
export class LatencyHistogram {
  static readonly BUCKET_MS = 0.01;
  private readonly buckets = new Uint32Array(10_000);
  private readonly slow: number[] = [];
  total = 0;

  record(latencyMs: number): void {
    const bucket = Math.floor(latencyMs / LatencyHistogram.BUCKET_MS);
    if (bucket < this.buckets.length) this.buckets[bucket]!++;
    else this.slow.push(latencyMs);
    this.total++;
  }

  /** The q-quantile in ms (the upper edge of its bucket); NaN when empty. */
  quantile(q: number): number {
    if (this.total === 0) return NaN;
    const rank = Math.min(this.total, Math.max(1, Math.ceil(q * this.total)));
    let seen = 0;
    for (let i = 0; i < this.buckets.length; i++) {
      seen += this.buckets[i]!;
      if (seen >= rank) return Math.round((i + 1) * LatencyHistogram.BUCKET_MS * 100) / 100;
    }
    return quantile(sortedCopy(this.slow), (rank - seen) / this.slow.length);
  }
}
