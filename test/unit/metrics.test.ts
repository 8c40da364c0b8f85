import { Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import type { Decision, DecisionEntry, Reason } from "../../src/core/authorize/decision.js";
import { FixedHistogram } from "../../src/telemetry/fixed-histogram.js";
import { createMetrics, DECISION_BUCKETS, ENTRIES, REASONS, type MetricSources } from "../../src/telemetry/metrics.js";

/**
 * The metrics on their own: what a decision, a lookup and a reload add;
 * bounded label sets whatever the traffic; and the preallocated histogram
 * rendered exactly as prom-client renders its own.
 */

const KEY = { id: "key_0123456789abcdefghij", name: "k", org: "acme", namespace: "*", roles: ["reader"] };

function sources(overrides: Partial<MetricSources> = {}): MetricSources {
  return {
    cacheEntries: () => 7,
    policy: () => ({ version: "0123abcd4567", rules: 42 }),
    rateLimiter: async () => ({ backend: "memory", shared: false }),
    ...overrides,
  };
}

function decision(reason: Reason, withKey = reason !== "missing_credential" && reason !== "invalid_key" && reason !== "bad_request"): Decision {
  const fields = { message: reason, matchedRule: "", ...(withKey && { key: KEY }) };
  return reason === "allowed" ? { allowed: true, reason, ...fields } : { allowed: false, reason, ...fields };
}

/** Sample lines of one metric family: `name{labels} value`. */
function samples(text: string, name: string): string[] {
  return text.split("\n").filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `));
}

function value(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no sample ${series} in:\n${text}`);
  return Number(line.slice(series.length + 1));
}

describe("label sets are bounded", () => {
  it("decisions: entries × reasons series, whatever the keys, paths and entries seen", async () => {
    const metrics = createMetrics(sources(), { defaultMetrics: false });
    for (let i = 0; i < 2_000; i++) {
      const entry = i % 5 === 4 ? undefined : ENTRIES[i % 4]!;
      const reason = REASONS[i % REASONS.length]!;
      metrics.observeDecision(entry, { ...decision(reason), key: { ...KEY, id: `key_${i}` }, message: `API key is not allowed to GET /sandboxes/sbx-${i}` }, i * 1e-6);
    }
    const text = await metrics.render();
    expect(samples(text, "keygate_decisions_total")).toHaveLength(ENTRIES.length * REASONS.length);
    expect(ENTRIES).toEqual(["rpc", "shim", "ext_authz", "forward_auth", "proxy"]);
    expect(REASONS).toHaveLength(10);
    // One series per entry: its buckets, +Inf, sum and count.
    expect(samples(text, "keygate_decision_duration_seconds_bucket")).toHaveLength(ENTRIES.length * (DECISION_BUCKETS.length + 1));
    expect(samples(text, "keygate_decision_duration_seconds_count")).toHaveLength(ENTRIES.length);
    expect(text).not.toMatch(/key_\d|sbx-|\/sandboxes/);
    // Every label value comes from the closed lists.
    const labelValues = new Set([...text.matchAll(/(\w+)="([^"]*)"/g)].map((m) => `${m[1]}=${m[2]}`));
    const allowed = new Set([
      ...ENTRIES.map((e) => `entry=${e}`),
      ...REASONS.map((r) => `reason=${r}`),
      ...["hit", "miss", "negative_hit"].map((r) => `result=${r}`),
      ...["reloaded", "unchanged", "failed"].map((o) => `outcome=${o}`),
      "version=0123abcd4567",
      "backend=memory",
    ]);
    for (const label of labelValues) if (!label.startsWith("le=")) expect(allowed, label).toContain(label);
  });

  it("an unset entry counts as rpc, as in the decision log", async () => {
    const metrics = createMetrics(sources(), { defaultMetrics: false });
    metrics.observeDecision(undefined, decision("allowed"), 0.0001);
    metrics.observeDecision("rpc", decision("allowed"), 0.0001);
    const text = await metrics.render();
    expect(value(text, 'keygate_decisions_total{entry="rpc",reason="allowed"}')).toBe(2);
    expect(value(text, 'keygate_decision_duration_seconds_count{entry="rpc"}')).toBe(2);
  });
});

describe("what is counted", () => {
  it("decisions by entry and reason, with their durations", async () => {
    const metrics = createMetrics(sources(), { defaultMetrics: false });
    const table: [DecisionEntry, Reason, number][] = [
      ["shim", "allowed", 3],
      ["shim", "forbidden", 2],
      ["rpc", "invalid_key", 1],
      ["ext_authz", "unavailable", 1],
      ["forward_auth", "expired", 4],
    ];
    for (const [entry, reason, times] of table) for (let i = 0; i < times; i++) metrics.observeDecision(entry, decision(reason), 0.0002);
    const text = await metrics.render();
    for (const [entry, reason, times] of table) expect(value(text, `keygate_decisions_total{entry="${entry}",reason="${reason}"}`)).toBe(times);
    expect(value(text, 'keygate_decisions_total{entry="rpc",reason="allowed"}')).toBe(0);
    expect(value(text, 'keygate_decision_duration_seconds_count{entry="shim"}')).toBe(5);
    expect(value(text, 'keygate_decision_duration_seconds_bucket{le="0.0001",entry="shim"}')).toBe(0);
    expect(value(text, 'keygate_decision_duration_seconds_bucket{le="0.00025",entry="shim"}')).toBe(5);
    expect(value(text, 'keygate_decision_duration_seconds_sum{entry="shim"}')).toBeCloseTo(0.001, 9);
  });

  it("rate_limited splits into a key's budget (the key is named) and the failed-auth guard (no key)", async () => {
    const metrics = createMetrics(sources(), { defaultMetrics: false });
    metrics.observeDecision("shim", decision("rate_limited", true), 0.0001);
    metrics.observeDecision("rpc", decision("rate_limited", true), 0.0001);
    metrics.observeDecision("shim", decision("rate_limited", false), 0.0001);
    const text = await metrics.render();
    expect(value(text, "keygate_rate_limit_rejections_total")).toBe(2);
    expect(value(text, "keygate_auth_guard_refusals_total")).toBe(1);
  });

  it("cache results, database lookup times, reload outcomes", async () => {
    const metrics = createMetrics(sources(), { defaultMetrics: false });
    metrics.lookup.cacheHit();
    metrics.lookup.cacheHit();
    metrics.lookup.cacheMiss();
    metrics.lookup.cacheNegativeHit();
    metrics.lookup.databaseLookup(0.0003);
    metrics.reloaded("swapped");
    metrics.reloaded("unchanged");
    metrics.reloaded("unchanged");
    const text = await metrics.render();
    expect(value(text, 'keygate_key_cache_requests_total{result="hit"}')).toBe(2);
    expect(value(text, 'keygate_key_cache_requests_total{result="miss"}')).toBe(1);
    expect(value(text, 'keygate_key_cache_requests_total{result="negative_hit"}')).toBe(1);
    expect(value(text, "keygate_key_lookup_duration_seconds_count")).toBe(1);
    expect(value(text, 'keygate_key_lookup_duration_seconds_bucket{le="0.0005"}')).toBe(1);
    expect(value(text, 'keygate_policy_reloads_total{outcome="reloaded"}')).toBe(1);
    expect(value(text, 'keygate_policy_reloads_total{outcome="unchanged"}')).toBe(2);
    expect(value(text, 'keygate_policy_reloads_total{outcome="failed"}')).toBe(0);
  });

  it("scrape-time state: cache size, policy, rate-limit backend, pool (Postgres only)", async () => {
    let health = { backend: "redis" as const, shared: true };
    const pg = createMetrics(sources({ rateLimiter: async () => health, pool: () => ({ total: 4, idle: 3, waiting: 1 }) }), { defaultMetrics: false });
    let text = await pg.render();
    expect(value(text, "keygate_key_cache_entries")).toBe(7);
    expect(value(text, 'keygate_policy_info{version="0123abcd4567"}')).toBe(1);
    expect(value(text, "keygate_policy_rules")).toBe(42);
    expect(value(text, 'keygate_rate_limit_backend_up{backend="redis"}')).toBe(1);
    expect(value(text, 'keygate_db_pool_connections{state="total"}')).toBe(4);
    expect(value(text, 'keygate_db_pool_connections{state="idle"}')).toBe(3);
    expect(value(text, 'keygate_db_pool_connections{state="waiting"}')).toBe(1);
    health = { backend: "redis", shared: false };
    text = await pg.render();
    expect(value(text, 'keygate_rate_limit_backend_up{backend="redis"}')).toBe(0);

    const pglite = await createMetrics(sources(), { defaultMetrics: false }).render();
    expect(value(pglite, 'keygate_rate_limit_backend_up{backend="memory"}')).toBe(1);
    expect(pglite).not.toContain("keygate_db_pool_connections");
  });

  it("each server has a registry of its own, with the process metrics when asked", async () => {
    const one = createMetrics(sources());
    const two = createMetrics(sources());
    one.observeDecision("shim", decision("allowed"), 0.0001);
    expect(value(await two.render(), 'keygate_decisions_total{entry="shim",reason="allowed"}')).toBe(0);
    expect(await one.render()).toMatch(/^process_cpu_seconds_total /m);
    expect(one.contentType).toBe("text/plain; version=0.0.4; charset=utf-8");
  });
});

describe("FixedHistogram", () => {
  it("renders what prom-client's Histogram renders for the same observations", async () => {
    const buckets = [0.001, 0.01, 0.1, 1];
    const values = [0, 0.0005, 0.001, 0.0011, 0.05, 0.1, 0.7, 1, 3, 1e9];
    const theirs = new Registry();
    const reference = new Histogram({ name: "h_seconds", help: "help", labelNames: ["entry"], buckets, registers: [theirs] });
    const ours = new Registry();
    const fixed = new FixedHistogram({ name: "h_seconds", help: "help", buckets, label: { name: "entry", values: ["a", "b"] } }).registerIn(ours);
    values.forEach((v, i) => {
      const series = i % 2;
      reference.labels(["a", "b"][series]!).observe(v);
      fixed.observe(series, v);
    });
    expect(await ours.metrics()).toBe(await theirs.metrics());
  });

  it("without a label: one series", async () => {
    const registry = new Registry();
    const fixed = new FixedHistogram({ name: "x_seconds", help: "help", buckets: [1, 2] }).registerIn(registry);
    fixed.observe(0, 1.5);
    expect(await registry.metrics()).toBe(
      ["# HELP x_seconds help", "# TYPE x_seconds histogram", 'x_seconds_bucket{le="1"} 0', 'x_seconds_bucket{le="2"} 1', 'x_seconds_bucket{le="+Inf"} 1', "x_seconds_sum 1.5", "x_seconds_count 1", ""].join(
        "\n",
      ),
    );
    registry.resetMetrics();
    expect(await registry.metrics()).toContain("x_seconds_count 0");
  });

  it("refuses buckets that do not increase", () => {
    expect(() => new FixedHistogram({ name: "y", help: "h", buckets: [1, 1] })).toThrow(/increase/);
  });
});
