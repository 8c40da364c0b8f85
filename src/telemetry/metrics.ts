import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client";
import type { DecisionObserver } from "../core/authorize/authorizer.js";
import type { DecisionEntry, Reason } from "../core/authorize/decision.js";
import type { PoolState } from "../core/db/connect.js";
import type { KeyLookupMetrics } from "../core/keys/key-lookup.js";
import type { ReloadOutcome } from "../core/policy/policy-watcher.js";
import type { RateLimiterHealth } from "../core/ratelimit/rate-limiter.js";
import { FixedHistogram } from "./fixed-histogram.js";

/**
 * keygate's Prometheus metrics, in a Registry of the server's own (never
 * prom-client's global one, so in-process servers and tests never share
 * series).
 *
 * The hot path (every decision, every key lookup) only bumps numbers in
 * preallocated arrays, indexed by entry and reason; those become prom-client
 * series when /metrics is scraped. Everything else (cache size, policy,
 * Redis reachability, the Postgres pool) is read at scrape time.
 *
 * Cardinality is bounded by construction: every label takes its values from
 * a closed list here (entries × reasons, cache results, reload outcomes,
 * pool states, backends), plus the one policy version in force. Never a key,
 * a key id, a path, an org or an address.
 */

/** Series number of every entry point and every reason (a Record: the compiler insists on all of them). */
const ENTRY_INDEX: Record<DecisionEntry, number> = { rpc: 0, shim: 1, ext_authz: 2, forward_auth: 3, proxy: 4 };
const REASON_INDEX: Record<Reason, number> = {
  allowed: 0,
  missing_credential: 1,
  invalid_key: 2,
  revoked: 3,
  expired: 4,
  forbidden: 5,
  rate_limited: 6,
  bad_request: 7,
  unavailable: 8,
  not_found: 9,
};
const inSeriesOrder = <T extends string>(index: Record<T, number>): T[] => (Object.keys(index) as T[]).sort((a, b) => index[a] - index[b]);
export const ENTRIES = inSeriesOrder(ENTRY_INDEX);
export const REASONS = inSeriesOrder(REASON_INDEX);

export const CACHE_RESULTS = ["hit", "miss", "negative_hit"] as const;
export const RELOAD_OUTCOMES = ["reloaded", "unchanged", "failed"] as const;
const RELOAD_LABEL: Record<ReloadOutcome["kind"], (typeof RELOAD_OUTCOMES)[number]> = { swapped: "reloaded", unchanged: "unchanged", failed: "failed" };
export const POOL_STATES = ["total", "idle", "waiting"] as const;

/** A decision takes microseconds warm, a database round trip when cold, up to seconds when the guard slows it. */
export const DECISION_BUCKETS = [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
/** A key lookup by hash: ~0.2 ms on either database, more under load or when a connection is opened. */
export const LOOKUP_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/** What is read at scrape time. */
export interface MetricSources {
  /** Key records and negative entries in the cache now. */
  cacheEntries(): number;
  /** The policy in force. */
  policy(): { version: string; rules: number };
  /** The rate-limit backend, and whether Redis answers (asked at each scrape: one PING). */
  rateLimiter(): Promise<Pick<RateLimiterHealth, "backend" | "shared">>;
  /** The Postgres pool's connections; unset on PGlite (one in-process connection, no pool). */
  pool?: () => PoolState;
}

export interface MetricsOptions {
  /** prom-client's process and Node.js metrics (default on; unit tests turn them off). */
  defaultMetrics?: boolean;
}

export interface Metrics {
  readonly registry: Registry;
  /** For the authorizer: called once per decision. */
  readonly observeDecision: DecisionObserver;
  /** For the key lookup. */
  readonly lookup: KeyLookupMetrics;
  /** One policy reload attempt, however triggered. */
  reloaded(outcome: ReloadOutcome["kind"]): void;
  /** The text exposition format. */
  render(): Promise<string>;
  readonly contentType: string;
}

export function createMetrics(sources: MetricSources, { defaultMetrics = true }: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  const registers = [registry];

  // ---- hot path: plain numbers, turned into series at scrape time
  const decisions = new Float64Array(ENTRIES.length * REASONS.length);
  const cache = new Float64Array(CACHE_RESULTS.length);
  let rateLimitRejections = 0;
  let guardRefusals = 0;
  const decisionDuration = new FixedHistogram({
    name: "keygate_decision_duration_seconds",
    help: "Time to decide one request, from the core's entry to its answer (key lookup, policy, rate limit, any failed-auth delay)",
    buckets: DECISION_BUCKETS,
    label: { name: "entry", values: ENTRIES },
  }).registerIn(registry);
  const lookupDuration = new FixedHistogram({
    name: "keygate_key_lookup_duration_seconds",
    help: "Time of one key lookup in the database (cache misses only)",
    buckets: LOOKUP_BUCKETS,
  }).registerIn(registry);

  const decisionLabels = ENTRIES.flatMap((entry) => REASONS.map((reason) => ({ entry, reason })));
  new Counter({
    name: "keygate_decisions_total",
    help: "Decisions by entry point (rpc, shim, ext_authz, forward_auth) and reason",
    labelNames: ["entry", "reason"],
    registers,
    collect() {
      this.reset();
      for (let i = 0; i < decisionLabels.length; i++) this.inc(decisionLabels[i]!, decisions[i]!);
    },
  });
  new Counter({
    name: "keygate_key_cache_requests_total",
    help: "Key cache lookups of well-formed credentials: hit, miss (then asked the database) or negative_hit (remembered as unknown)",
    labelNames: ["result"],
    registers,
    collect() {
      this.reset();
      CACHE_RESULTS.forEach((result, i) => this.inc({ result }, cache[i]!));
    },
  });
  new Counter({
    name: "keygate_rate_limit_rejections_total",
    help: "Requests refused because their key's rate limit was used up",
    registers,
    collect() {
      this.reset();
      this.inc(rateLimitRejections);
    },
  });
  new Counter({
    name: "keygate_auth_guard_refusals_total",
    help: "Invalid credentials refused by the failed-auth guard (too many from one address)",
    registers,
    collect() {
      this.reset();
      this.inc(guardRefusals);
    },
  });

  // ---- rare events: prom-client counters as they are
  const reloads = new Counter({
    name: "keygate_policy_reloads_total",
    help: "Policy reload attempts: reloaded (a new version in force), unchanged, failed (the last good policy kept serving)",
    labelNames: ["outcome"],
    registers,
  });
  for (const outcome of RELOAD_OUTCOMES) reloads.inc({ outcome }, 0);

  // ---- read at scrape time
  new Gauge({
    name: "keygate_key_cache_entries",
    help: "Entries in the key cache (known keys and remembered unknown hashes)",
    registers,
    collect() {
      this.set(sources.cacheEntries());
    },
  });
  new Gauge({
    name: "keygate_policy_info",
    help: "The policy version in force (always 1)",
    labelNames: ["version"],
    registers,
    collect() {
      this.reset();
      this.set({ version: sources.policy().version }, 1);
    },
  });
  new Gauge({
    name: "keygate_policy_rules",
    help: "Rules in the policy in force",
    registers,
    collect() {
      this.set(sources.policy().rules);
    },
  });
  new Gauge({
    name: "keygate_rate_limit_backend_up",
    help: "1 when the rate-limit backend counts as configured (memory always; redis while it answers), 0 while Redis is unreachable and limits are per instance",
    labelNames: ["backend"],
    registers,
    async collect() {
      const health = await sources.rateLimiter();
      this.reset();
      this.set({ backend: health.backend }, health.backend === "memory" || health.shared ? 1 : 0);
    },
  });
  const pool = sources.pool;
  if (pool) {
    new Gauge({
      name: "keygate_db_pool_connections",
      help: "Postgres pool connections: total open, idle, and queries waiting for one",
      labelNames: ["state"],
      registers,
      collect() {
        const state = pool();
        for (const name of POOL_STATES) this.set({ state: name }, state[name]);
      },
    });
  }

  if (defaultMetrics) collectDefaultMetrics({ register: registry });

  return {
    registry,
    observeDecision(entry, decision, seconds) {
      const e = entry === undefined ? 0 : ENTRY_INDEX[entry];
      decisions[e * REASONS.length + REASON_INDEX[decision.reason]]!++;
      decisionDuration.observe(e, seconds);
      // A key's budget refusal names the key; the failed-auth guard's (an invalid credential) cannot.
      if (decision.reason === "rate_limited") {
        if (decision.key) rateLimitRejections++;
        else guardRefusals++;
      }
    },
    lookup: {
      cacheHit: () => void cache[0]!++,
      cacheMiss: () => void cache[1]!++,
      cacheNegativeHit: () => void cache[2]!++,
      databaseLookup: (seconds) => lookupDuration.observe(0, seconds),
    },
    reloaded(outcome) {
      reloads.inc({ outcome: RELOAD_LABEL[outcome] });
    },
    render: () => registry.metrics(),
    contentType: registry.contentType,
  };
}
