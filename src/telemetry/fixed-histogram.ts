import type { Metric, Registry } from "prom-client";

/**
 * A histogram over a fixed set of series (one label with values known when
 * it is made, or no label), recorded into preallocated arrays and rendered
 * by a prom-client Registry at scrape time.
 *
 * Why not prom-client's Histogram: its observe(), even through a cached
 * `.labels()` child, allocates a label object and builds a label hash
 * string on every call (about 0.4 µs each on this machine). A decision is
 * timed on every request, so this one records with a short bucket scan and
 * three array writes, and pays for the text format only when scraped.
 */
export interface FixedHistogramOptions {
  name: string;
  help: string;
  /** Upper bounds in ascending order; +Inf is implied. */
  buckets: readonly number[];
  /** The one label and all its values, in series order; unset = a single series without labels. */
  label?: { name: string; values: readonly string[] };
}

interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName: string;
}

export class FixedHistogram {
  readonly name: string;
  readonly help: string;
  /** What a prom-client Registry reads to render the metric. */
  readonly type = "histogram";
  readonly aggregator = "sum";
  private readonly bounds: Float64Array;
  private readonly label: FixedHistogramOptions["label"];
  /** Per series: one count per bucket, then the +Inf bucket (not cumulative). */
  private readonly counts: Float64Array;
  private readonly sums: Float64Array;
  private readonly stride: number;

  constructor({ name, help, buckets, label }: FixedHistogramOptions) {
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i]! > buckets[i - 1]!)) throw new Error(`${name}: buckets must increase`);
    }
    this.name = name;
    this.help = help;
    this.bounds = Float64Array.from(buckets);
    this.label = label;
    this.stride = buckets.length + 1;
    const series = label ? label.values.length : 1;
    this.counts = new Float64Array(series * this.stride);
    this.sums = new Float64Array(series);
  }

  /** Records `value` in series number `series` (the label value's index). No allocation. */
  observe(series: number, value: number): void {
    const bounds = this.bounds;
    let bucket = 0;
    while (bucket < bounds.length && value > bounds[bucket]!) bucket++;
    this.counts[series * this.stride + bucket]!++;
    this.sums[series]! += value;
  }

  /** The metric as prom-client's metrics report it (called by the Registry at scrape time). */
  async get(): Promise<{ name: string; help: string; type: "histogram"; aggregator: "sum"; values: Sample[] }> {
    const values: Sample[] = [];
    const bucketName = `${this.name}_bucket`;
    const seriesCount = this.sums.length;
    for (let series = 0; series < seriesCount; series++) {
      const own: Record<string, string> = this.label ? { [this.label.name]: this.label.values[series]! } : {};
      let cumulative = 0;
      const base = series * this.stride;
      for (let bucket = 0; bucket < this.bounds.length; bucket++) {
        cumulative += this.counts[base + bucket]!;
        values.push({ labels: { le: this.bounds[bucket]!, ...own }, value: cumulative, metricName: bucketName });
      }
      cumulative += this.counts[base + this.bounds.length]!;
      values.push({ labels: { le: "+Inf", ...own }, value: cumulative, metricName: bucketName });
      values.push({ labels: own, value: this.sums[series]!, metricName: `${this.name}_sum` });
      values.push({ labels: own, value: cumulative, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Registry.resetMetrics() calls this. */
  reset(): void {
    this.counts.fill(0);
    this.sums.fill(0);
  }

  /**
   * Adds it to a registry. prom-client's Registry renders any metric by
   * calling get() (the shape above); its TypeScript types name only its own
   * classes, hence the cast.
   */
  registerIn(registry: Registry): this {
    registry.registerMetric(this as unknown as Metric);
    return this;
  }
}
