import { Redis } from "ioredis";
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from "rate-limiter-flexible";
import type { Budget, RateLimit, RateLimitStatus } from "./rate-limit.js";

/**
 * Enforces per-key allocations. Each budget is stored under its id (a key's
 * budget id: its own, or its predecessor's after a rotation). One limiter
 * object per distinct (points, window) pair, created on first use and
 * reused; the pair is part of the storage key, so a changed allocation
 * starts a fresh budget at once (which is why a key may not change its own
 * limit: access.ts).
 *
 * In memory for one instance; with a Redis URL, counters live in Redis and
 * every instance sharing it shares each key's budget. When Redis cannot be
 * reached, each limiter falls back to its in-memory insurance twin (the
 * same allocation, per instance) without waiting: the client neither
 * queues commands while disconnected nor retries them.
 */

export type ConsumeResult = { allowed: boolean; status: RateLimitStatus };

export interface RateLimiterHealth {
  backend: "memory" | "redis";
  /** The Redis URL without its password (redis backend only). */
  redis?: string;
  /** False while Redis cannot be reached: limits are then per instance. */
  shared: boolean;
  /** When Redis became unreachable, ISO time; null while reachable. */
  unreachableSince: string | null;
  lastError: string | null;
}

export interface RateLimiter {
  /** Takes one request from the key's budget under `limit`. Never throws for an over-limit key. */
  consume(keyId: string, limit: RateLimit): Promise<ConsumeResult>;
  /**
   * Takes one request from every budget at once (in parallel: one round trip
   * to Redis); allowed only if all allow. When one refuses, the points taken
   * from the others are given back, so a key over its own limit never drains
   * its ancestors'. The status is the tightest budget's.
   */
  consumeAll(budgets: readonly Budget[]): Promise<ConsumeResult>;
  /** The key's budget under `limit` as it stands, without taking from it; null when nothing was taken this window. */
  peek(keyId: string, limit: RateLimit): Promise<RateLimitStatus | null>;
  /** Where counters live and whether Redis is reachable (waits briefly for a first connection). */
  health(): Promise<RateLimiterHealth>;
  close(): Promise<void>;
}

export interface HealthLog {
  warn(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
}

export interface RateLimiterOptions {
  /** redis:// or rediss://; unset = in memory. */
  redisUrl?: string | undefined;
  log?: HealthLog;
  now?: () => Date;
  /** Prefix of Redis keys (tests isolate themselves with it). */
  keyPrefix?: string;
}

const KEY_PREFIX = "keygate:rl";
/** How long a connection attempt may take before it counts as a failure. */
const CONNECT_TIMEOUT_MS = 1_000;
/** A command on a connection that died silently gives up after this and falls back. */
const COMMAND_TIMEOUT_MS = 50;

export function createRateLimiter(options: RateLimiterOptions = {}): RateLimiter {
  return options.redisUrl ? createRedisRateLimiter(options.redisUrl, options) : createMemoryRateLimiter(options.keyPrefix ?? KEY_PREFIX);
}

function prefixFor(base: string, limit: RateLimit): string {
  return `${base}:${limit.points}:${limit.windowSeconds}`;
}

async function consumeWith(limiter: RateLimiterAbstract, keyId: string, limit: RateLimit): Promise<ConsumeResult> {
  try {
    const res = await limiter.consume(keyId, 1);
    return { allowed: true, status: statusOf(limit, res) };
  } catch (rejection) {
    // Over the limit is a RateLimiterRes; anything else is an outage, for the caller to handle.
    if (rejection instanceof RateLimiterRes) return { allowed: false, status: { ...statusOf(limit, rejection), remaining: 0 } };
    throw rejection;
  }
}

type Consume = (id: string, limit: RateLimit) => Promise<ConsumeResult>;
type Reward = (id: string, limit: RateLimit) => Promise<unknown>;

async function consumeAllWith(consume: Consume, reward: Reward, budgets: readonly Budget[]): Promise<ConsumeResult> {
  if (budgets.length === 1) return consume(budgets[0]!.id, budgets[0]!.limit);
  const results = await Promise.all(budgets.map((budget) => consume(budget.id, budget.limit)));
  const allowed = results.every((result) => result.allowed);
  if (!allowed) {
    // A lost refund only over-counts (stricter, never looser): the deny stands either way.
    await Promise.all(budgets.map((budget, i) => (results[i]!.allowed ? reward(budget.id, budget.limit).catch(() => undefined) : undefined)));
  }
  return { allowed, status: tightest(results) };
}

/** A refusal's: the one that resets last (the request fits again only then); else the least remaining. */
function tightest(results: readonly ConsumeResult[]): RateLimitStatus {
  let best: ConsumeResult | undefined;
  for (const result of results) {
    if (!best) best = result;
    else if (result.allowed !== best.allowed) {
      if (!result.allowed) best = result;
    } else if (!result.allowed ? result.status.resetSeconds > best.status.resetSeconds : result.status.remaining < best.status.remaining) {
      best = result;
    }
  }
  return best!.status;
}

async function peekWith(limiter: RateLimiterAbstract, keyId: string, limit: RateLimit): Promise<RateLimitStatus | null> {
  const res = await limiter.get(keyId);
  return res ? { ...statusOf(limit, res), remaining: Math.max(0, limit.points - res.consumedPoints) } : null;
}

function statusOf(limit: RateLimit, res: RateLimiterRes): RateLimitStatus {
  const ms = res.msBeforeNext > 0 ? res.msBeforeNext : limit.windowSeconds * 1000;
  return { limit: limit.points, remaining: Math.max(0, res.remainingPoints), resetSeconds: Math.max(1, Math.ceil(ms / 1000)) };
}

function createMemoryRateLimiter(base: string): RateLimiter {
  const limiters = new Map<string, RateLimiterMemory>();
  const limiterFor = (limit: RateLimit) => {
    const prefix = prefixFor(base, limit);
    let limiter = limiters.get(prefix);
    if (!limiter) limiters.set(prefix, (limiter = new RateLimiterMemory({ points: limit.points, duration: limit.windowSeconds, keyPrefix: prefix })));
    return limiter;
  };
  const consume: Consume = (keyId, limit) => consumeWith(limiterFor(limit), keyId, limit);
  const reward: Reward = (keyId, limit) => limiterFor(limit).reward(keyId, 1);
  return {
    consume,
    consumeAll: (budgets) => consumeAllWith(consume, reward, budgets),
    peek: (keyId, limit) => peekWith(limiterFor(limit), keyId, limit),
    health: async () => ({ backend: "memory", shared: false, unreachableSince: null, lastError: null }),
    close: async () => {},
  };
}

export function redactRedisUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = "***";
    return parsed.toString();
  } catch {
    return "(unparsable URL)";
  }
}

function createRedisRateLimiter(redisUrl: string, options: RateLimiterOptions): RateLimiter {
  const base = options.keyPrefix ?? KEY_PREFIX;
  const now = options.now ?? (() => new Date());
  const shown = redactRedisUrl(redisUrl);
  const client = new Redis(redisUrl, {
    // Never hold a decision for a dead Redis: fail at once and let the insurance limiter answer.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    connectTimeout: CONNECT_TIMEOUT_MS,
    commandTimeout: COMMAND_TIMEOUT_MS,
    // Keep trying in the background, at most every 2 s, so a recovered Redis is used again by itself.
    retryStrategy: (times) => Math.min(times * 100, 2_000),
  });
  let closing = false;
  let unreachableSince: Date | null = null;
  let lastError: string | null = null;
  /** Settles once the first connection attempt has succeeded or failed. */
  let settle: () => void = () => {};
  const firstAttempt = new Promise<void>((resolve) => (settle = resolve));

  const down = (error?: Error) => {
    if (closing) return;
    if (error) lastError = error.message;
    settle();
    if (unreachableSince) return;
    unreachableSince = now();
    // Once per outage, never per request.
    options.log?.warn("rate limits: redis unreachable, using per-instance limits", {
      redis: shown,
      ...(lastError && { error: lastError }),
    });
  };
  const up = () => {
    settle();
    if (unreachableSince) options.log?.info("rate limits: redis reachable again, limits shared", { redis: shown, unreachable_since: unreachableSince.toISOString() });
    unreachableSince = null;
    lastError = null;
  };
  client.on("ready", up);
  client.on("error", (error: Error) => down(error));
  client.on("close", () => down());

  const limiters = new Map<string, RateLimiterRedis>();
  const limiterFor = (limit: RateLimit) => {
    const prefix = prefixFor(base, limit);
    let limiter = limiters.get(prefix);
    if (!limiter) {
      limiter = new RateLimiterRedis({
        storeClient: client,
        points: limit.points,
        duration: limit.windowSeconds,
        keyPrefix: prefix,
        rejectIfRedisNotReady: true,
        insuranceLimiter: new RateLimiterMemory({ points: limit.points, duration: limit.windowSeconds, keyPrefix: prefix }),
      });
      limiters.set(prefix, limiter);
    }
    return limiter;
  };
  const consume: Consume = (keyId, limit) => consumeWith(limiterFor(limit), keyId, limit);
  const reward: Reward = (keyId, limit) => limiterFor(limit).reward(keyId, 1);
  return {
    consume,
    consumeAll: (budgets) => consumeAllWith(consume, reward, budgets),
    peek: (keyId, limit) => peekWith(limiterFor(limit), keyId, limit),
    async health() {
      await Promise.race([firstAttempt, new Promise((resolve) => setTimeout(resolve, CONNECT_TIMEOUT_MS + 200).unref())]);
      // A connection that just died may still read "ready" until its close event is handled: ask.
      if (client.status === "ready") {
        await client.ping().then(
          () => client.status === "ready" && up(),
          (error: unknown) => down(error instanceof Error ? error : new Error(String(error))),
        );
      }
      const reachable = client.status === "ready" && unreachableSince === null;
      return {
        backend: "redis",
        redis: shown,
        shared: reachable,
        unreachableSince: reachable ? null : (unreachableSince ?? now()).toISOString(),
        lastError,
      };
    },
    async close() {
      closing = true;
      settle();
      if (client.status === "ready") await client.quit().catch(() => client.disconnect());
      else client.disconnect();
    },
  };
}
