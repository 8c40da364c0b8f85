import { canonicalIp, inList } from "../core/request/address.js";
import { createFailedAuthGuard, type FailedAuthGuard } from "../core/authorize/failed-auth-guard.js";
import { createAuthorizer, type Authorize } from "../core/authorize/authorizer.js";
import { createBudgetConsumer, type ConsumeBudgets } from "../core/authorize/consume-budgets.js";
import type { AuthorizeInput, Decision } from "../core/authorize/decision.js";
import type { RuntimeConfig, ServeConfig } from "../config/config.js";
import { openStore, type Store, type StoreTarget } from "../core/db/connect.js";
import { migrateToLatest, type MigrateOutcome } from "../core/db/migrate.js";
import { createKeyCache, type KeyCache } from "../core/keys/key-cache.js";
import { createKeyLookup, createKnownKey, type KnownKey, type LookupKey } from "../core/keys/key-lookup.js";
import { createKeyManager, type KeyManager } from "../core/manage/key-manager.js";
import { createKeyUsageReader, withKeyUsage } from "../core/manage/key-usage.js";
import { withoutKeyChanges } from "../core/manage/dev-mode.js";
import { createUsageRecorder, type UsageRecorder } from "../core/keys/usage-recorder.js";
import { createMetrics, type Metrics } from "../telemetry/metrics.js";
import { createResourceCache } from "../core/resources/resource-cache.js";
import { createResourceLedger, type ResourceLedger } from "../core/resources/resource-ledger.js";
import { loadPolicy, type Policy } from "../core/policy/policy.js";
import { createPolicyHolder, type PolicyHolder, type ReloadOutcome } from "../core/policy/policy-watcher.js";
import type { RateLimit } from "../core/ratelimit/rate-limit.js";
import { createRateLimiter, type HealthLog, type RateLimiter } from "../core/ratelimit/rate-limiter.js";
import { startTracing, type Tracing } from "../telemetry/tracing.js";
import { createAuditRecorder, type AuditRecorder } from "../core/audit/audit-recorder.js";
import { createAuditPruner, type AuditPruner } from "../core/audit/audit-retention.js";

/**
 * keygate's core wired together: store, policy, key cache, lookup,
 * authorizer and key manager. `serve` and the CLI's local mode both use it;
 * neither the core nor this file knows about HTTP or Connect.
 */
export interface Runtime {
  store: Store;
  migration: MigrateOutcome;
  /** The policy in force now; a reload swaps it (every decision calls this once). */
  policy: () => Policy;
  /** Holds the policy, reloads it on demand, keeps reload status. Watching is serve's job. */
  policyHolder: PolicyHolder;
  authorize: Authorize;
  lookupKey: LookupKey;
  /** The lookup's answer when it needs no database: what the failed-auth guard lets through from a blocked address. */
  knownKey: KnownKey;
  /** The failed-auth guard (unset: KEYGATE_AUTH_FAIL_LIMIT=off), for every entry that takes a credential. */
  guard?: FailedAuthGuard;
  keys: KeyManager;
  cache: KeyCache;
  /** The ownership ledger: who owns each sandbox (filled by the proxy, the ResourceService, webhooks). */
  resources: ResourceLedger;
  /** True when decisions on owned paths consult the ledger. */
  ownership: boolean;
  usage: UsageRecorder;
  /** Refused management attempts: written in the background, repeats collapsed. */
  auditRecorder: AuditRecorder;
  /** Audit retention; serve starts it (a CLI command's runtime never prunes). */
  auditPruner: AuditPruner;
  /** null: audit rows are kept forever. */
  auditRetentionMs: number | null;
  /** Per-key rate limits: in memory, or in Redis shared by every instance. */
  rateLimiter: RateLimiter;
  /** The allocation of keys without their own; null = unlimited. */
  defaultRateLimit: RateLimit | null;
  /** Takes a call by a key from its budgets (ManageKey, audit and resource calls count as decisions do). */
  consumeBudgets: ConsumeBudgets;
  dev: boolean;
  startedAt: Date;
  /** Prometheus metrics (serve, unless KEYGATE_METRICS=false); undefined in the CLI's own process. */
  metrics?: Metrics;
  close(): Promise<void>;
}

/** What only `serve` configures: the CLI's in-process runtime has neither. */
export type RuntimeTelemetryConfig = Partial<Pick<ServeConfig, "metrics" | "tracing">>;

export interface RuntimeOptions {
  now?: () => Date;
  onError?: (error: unknown) => void;
  /** Overrides where the data is (tests pass an in-memory PGlite). */
  storeTarget?: StoreTarget;
  /** Where rate-limit backend changes are reported (Redis lost, Redis back). */
  log?: HealthLog;
  /** Every decision as it leaves the core, from either entry point (the decision log). */
  onDecision?: (input: AuthorizeInput, decision: Decision) => void;
  /** The failed-auth guard's delay (tests pass a fake). */
  sleep?: (ms: number) => Promise<void>;
}

export function storeTargetFor(config: Pick<RuntimeConfig, "databaseUrl" | "dataDir" | "defaultDbUser" | "dbPoolSize">): StoreTarget {
  return config.databaseUrl
    ? { kind: "postgres", url: config.databaseUrl, defaultUser: config.defaultDbUser, poolSize: config.dbPoolSize }
    : { kind: "pglite", dataDir: config.dataDir };
}

export async function openRuntime(config: RuntimeConfig & RuntimeTelemetryConfig, options: RuntimeOptions = {}): Promise<Runtime> {
  const now = options.now ?? (() => new Date());
  const onError = options.onError ?? (() => {});
  // Load the policy first: a broken policy should fail before the database opens.
  const loadedHolder = createPolicyHolder({ initial: await loadPolicy(config.policyDir, now), load: () => loadPolicy(config.policyDir, now), now });
  const store = await openStore(options.storeTarget ?? storeTargetFor(config));
  let tracing: Tracing | undefined;
  try {
    const migration = await migrateToLatest(store.db);
    const cache = createKeyCache({
      ttlMs: config.keyCacheTtlMs,
      negativeTtlMs: config.negativeCacheTtlMs,
      maxEntries: config.keyCacheMaxEntries,
      now: () => now().getTime(),
    });
    const usage = createUsageRecorder(store.db, config.usageFlushMs, onError);
    const auditRecorder = createAuditRecorder({
      db: store.db,
      now,
      onError,
      onDropped: ({ dropped, sampledOut }) => options.log?.warn("refused attempts not written to the audit log", { dropped, sampled_out: sampledOut }),
    });
    const auditPruner = createAuditPruner({
      db: store.db,
      retentionMs: config.auditRetentionMs,
      now,
      onError,
      onPruned: (count, cutoff) => options.log?.info("audit rows pruned", { count, before: cutoff.toISOString() }),
    });
    const resources = createResourceLedger({
      db: store.db,
      cache: createResourceCache({
        ttlMs: config.keyCacheTtlMs,
        negativeTtlMs: config.negativeCacheTtlMs,
        maxEntries: config.keyCacheMaxEntries,
        now: () => now().getTime(),
      }),
      now,
      announce: store.kind === "postgres",
      onError,
    });
    // "auto" is resolved by serve (on in proxy mode); anywhere else it means off.
    const ownership = config.ownership === "on";
    // Everything derived from the policy (its compiled index, role closures) lives inside it,
    // so taking the holder's current one is all a reload needs.
    const currentPolicy = loadedHolder.current;
    const rateLimiter = createRateLimiter({ redisUrl: config.redisUrl, ...(options.log && { log: options.log }) });
    const metrics = config.metrics
      ? createMetrics({
          cacheEntries: () => cache.size,
          policy: () => currentPolicy().info,
          rateLimiter: () => rateLimiter.health(),
          ...(store.pool && { pool: store.pool }),
        })
      : undefined;
    const policyHolder = metrics ? countingReloads(loadedHolder, metrics.reloaded) : loadedHolder;
    if (config.tracing?.enabled) {
      tracing = await startTracing(config.tracing, options.log);
      const { endpoint, protocol, serviceName, sampler, samplerRatio } = config.tracing;
      options.log?.info("tracing on", { endpoint, protocol, service: serviceName, sampler, ...(sampler.endsWith("traceidratio") && { ratio: samplerRatio }) });
    }
    const lookupKey = createKeyLookup({ db: store.db, cache, keyPrefix: config.keyPrefix, now, ...(metrics && { metrics: metrics.lookup }) });
    const knownKey = createKnownKey({ cache, keyPrefix: config.keyPrefix, now, ...(metrics && { metrics: metrics.lookup }) });
    // Counted in the same limiter (memory or Redis) as key budgets, under "authfail:<address>".
    const guard = config.authFailLimit
      ? createFailedAuthGuard({
          rateLimiter,
          limit: config.authFailLimit,
          onError,
          exempt: (source) => inList(config.authGuardExempt, canonicalIp(source)),
          ...(options.sleep && { sleep: options.sleep }),
        })
      : undefined;
    // Give Redis its first connection attempt (about a second at most), so counting starts there;
    // unreachable, decisions use per-instance limits meanwhile and it is logged.
    if (config.redisUrl) await rateLimiter.health();
    const authorize = createAuthorizer({
      lookupKey,
      knownKey,
      policy: currentPolicy,
      now,
      onUsed: usage.touch,
      onDenied: usage.countDenied,
      onError,
      dev: config.dev,
      rateLimiter,
      defaultRateLimit: config.defaultRateLimit,
      ...(guard && { guard }),
      ...(options.onDecision && { onDecision: options.onDecision }),
      ...(metrics && { observe: metrics.observeDecision }),
      ...(tracing && { tracer: tracing.tracer }),
      ...(ownership && { ownership: resources }),
    });
    const managed = withKeyUsage(
      createKeyManager({ db: store.db, policy: currentPolicy, cache, keyPrefix: config.keyPrefix, now, recorder: auditRecorder, pendingLastUsed: usage.pending, defaultRateLimit: config.defaultRateLimit }),
      createKeyUsageReader({ db: store.db, now, pendingCounts: usage.pendingCounts }),
    );
    // Dev mode changes no key, through any door of this process (core/manage/dev-mode.ts).
    const keys = config.dev ? withoutKeyChanges(managed) : managed;
    return {
      store,
      migration,
      policy: currentPolicy,
      policyHolder,
      authorize,
      lookupKey,
      knownKey,
      ...(guard && { guard }),
      keys,
      cache,
      resources,
      ownership,
      usage,
      auditRecorder,
      auditPruner,
      auditRetentionMs: config.auditRetentionMs,
      rateLimiter,
      defaultRateLimit: config.defaultRateLimit,
      consumeBudgets: createBudgetConsumer(rateLimiter, config.defaultRateLimit),
      dev: config.dev,
      startedAt: now(),
      ...(metrics && { metrics }),
      async close() {
        await usage.stop();
        await auditPruner.stop();
        await auditRecorder.stop();
        await rateLimiter.close();
        await store.close();
        // Last: the spans of the final decisions are exported before the process ends.
        await tracing?.shutdown().catch(() => {});
      },
    };
  } catch (error) {
    await tracing?.shutdown().catch(() => {});
    await store.close().catch(() => {});
    throw error;
  }
}

/**
 * The holder, with every reload outcome counted once: callers that share a
 * reload (the watcher and a SIGHUP arriving together) share its outcome.
 */
function countingReloads(holder: PolicyHolder, count: (kind: ReloadOutcome["kind"]) => void): PolicyHolder {
  const counted = new WeakSet<ReloadOutcome>();
  return {
    current: holder.current,
    status: holder.status,
    reload: (trigger) =>
      holder.reload(trigger).then((outcome) => {
        if (!counted.has(outcome)) {
          counted.add(outcome);
          count(outcome.kind);
        }
        return outcome;
      }),
  };
}
