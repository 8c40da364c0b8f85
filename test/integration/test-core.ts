import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import type { Kysely, KyselyPlugin, PluginTransformQueryArgs, PluginTransformResultArgs, QueryResult, RootOperationNode, UnknownRow } from "kysely";
import { afterAll, beforeAll, expect } from "vitest";
import { createAuthorizer, type Authorize } from "../../src/core/authorize/authorizer.js";
import type { AuthorizeInput, Decision } from "../../src/core/authorize/decision.js";
import type { Database } from "../../src/core/db/schema.js";
import { createKeyCache, type KeyCache } from "../../src/core/keys/key-cache.js";
import { DEFAULT_KEY_PREFIX } from "../../src/core/keys/key-format.js";
import { createKeyLookup, type LookupKey } from "../../src/core/keys/key-lookup.js";
import { createKeyManager, type CreatedKey, type CreateKeyInput, type KeyManager } from "../../src/core/manage/key-manager.js";
import type { ManageResult, Principal } from "../../src/core/manage/access.js";
import type { KeyRecord } from "../../src/core/keys/key-record.js";
import { createKeyUsageReader, withKeyUsage } from "../../src/core/manage/key-usage.js";
import { createUsageRecorder, type UsageRecorder } from "../../src/core/keys/usage-recorder.js";
import { loadPolicy, type Policy } from "../../src/core/policy/policy.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import type { RateLimit } from "../../src/core/ratelimit/rate-limit.js";
import { createRateLimiter, type RateLimiter } from "../../src/core/ratelimit/rate-limiter.js";
import { createResourceCache } from "../../src/core/resources/resource-cache.js";
import { createResourceLedger, type ResourceLedger } from "../../src/core/resources/resource-ledger.js";
import { createAuditRecorder, type AuditRecorder } from "../../src/core/audit/audit-recorder.js";

/**
 * keygate's core wired as `openRuntime` wires it, over a test database, with
 * a fake clock: expiry and grace periods are tested by moving `now`, never by
 * sleeping. The usage recorder's timer is an hour long, so only an explicit
 * `flush()` writes last-used times.
 */

export const POLICY_DIR = resolve(import.meta.dirname, "../../policies");
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;
/** Far from the real date, so nothing passes by accident on a wall clock. */
export const START = new Date("2031-03-01T12:00:00.000Z");

export interface FakeClock {
  now(): Date;
  advance(ms: number): void;
  set(at: Date): void;
}

export function createFakeClock(start: Date = START): FakeClock {
  let current = new Date(start);
  return {
    now: () => new Date(current),
    advance(ms) {
      current = new Date(current.getTime() + ms);
    },
    set(at) {
      current = new Date(at);
    },
  };
}

export interface Core {
  clock: FakeClock;
  db: Kysely<Database>;
  policy: Policy;
  cache: KeyCache;
  lookupKey: LookupKey;
  authorize: Authorize;
  keys: KeyManager;
  usage: UsageRecorder;
  /** Refused attempts: written only by an explicit `flush()` (no timer), windows by the fake clock. */
  auditRecorder: AuditRecorder;
  rateLimiter: RateLimiter;
  /** The ownership ledger (consulted by decisions only with `ownership: true`). */
  resources: ResourceLedger;
  /** Errors the core reported (outages), newest last. */
  errors: unknown[];
  close(): Promise<void>;
}

export interface CoreOptions {
  clock?: FakeClock;
  dev?: boolean;
  policy?: Policy;
  /** Replaces the key lookup the authorizer uses (to simulate an outage). */
  lookupKey?: LookupKey;
  /** Default: a fresh in-memory limiter per core. */
  rateLimiter?: RateLimiter;
  /** The allocation of keys without their own (default: unlimited). */
  defaultRateLimit?: RateLimit | null;
  /** Decisions on owned paths consult the ledger (default: off, as in a single-tenant deployment). */
  ownership?: boolean;
  /** Replaces the ledger the authorizer asks (to simulate an outage). */
  owner?: ResourceLedger["owner"];
}

let defaultPolicy: Promise<Policy> | undefined;
/** The real default policy from policies/, loaded once per test file. */
export function realPolicy(): Promise<Policy> {
  defaultPolicy ??= loadPolicy(POLICY_DIR);
  return defaultPolicy;
}

export async function createCore(db: Kysely<Database>, options: CoreOptions = {}): Promise<Core> {
  const clock = options.clock ?? createFakeClock();
  const policy = options.policy ?? (await realPolicy());
  const errors: unknown[] = [];
  const onError = (error: unknown) => void errors.push(error);
  const cache = createKeyCache({ ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 10_000, now: () => clock.now().getTime() });
  const usage = createUsageRecorder(db, HOUR, onError);
  const auditRecorder = createAuditRecorder({ db, now: clock.now, flushEveryMs: 0, onError });
  const lookupKey = options.lookupKey ?? createKeyLookup({ db, cache, keyPrefix: DEFAULT_KEY_PREFIX, now: clock.now });
  const rateLimiter = options.rateLimiter ?? createRateLimiter();
  const resources = createResourceLedger({
    db,
    cache: createResourceCache({ ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 10_000, now: () => clock.now().getTime() }),
    now: clock.now,
  });
  const authorize = createAuthorizer({
    lookupKey,
    policy: () => policy,
    now: clock.now,
    onUsed: usage.touch,
    onDenied: usage.countDenied,
    onError,
    dev: options.dev ?? false,
    rateLimiter,
    defaultRateLimit: options.defaultRateLimit ?? null,
    ...(options.ownership && { ownership: { owner: options.owner ?? resources.owner } }),
  });
  const keys = withKeyUsage(
    createKeyManager({ db, policy: () => policy, cache, keyPrefix: DEFAULT_KEY_PREFIX, now: clock.now, recorder: auditRecorder, pendingLastUsed: usage.pending, defaultRateLimit: options.defaultRateLimit ?? null }),
    createKeyUsageReader({ db, now: clock.now, pendingCounts: usage.pendingCounts }),
  );
  return {
    clock,
    db,
    policy,
    cache,
    lookupKey,
    authorize,
    keys,
    usage,
    auditRecorder,
    rateLimiter,
    resources,
    errors,
    async close() {
      await usage.stop();
      await auditRecorder.stop();
      await rateLimiter.close();
    },
  };
}

export const LOCAL: Principal = { kind: "local" };

export function asKey(key: KeyRecord): Principal {
  return { kind: "key", key };
}

/** The value of a successful result; a failed one fails the test with its code and message. */
export function unwrap<T>(result: ManageResult<T>): T {
  if (!result.ok) expect.fail(`expected success, got ${result.code}: ${result.message}`);
  return result.value;
}

/** A key created by the local operator. */
export async function createKey(core: Core, input: CreateKeyInput): Promise<CreatedKey> {
  return unwrap(await core.keys.create(LOCAL, input));
}

/** An Authorize call as a gateway would make it (no namespace or org hint unless given). */
export function check(core: Core, credential: string, method: string, path: string, extra: Partial<AuthorizeInput> = {}): Promise<Decision> {
  return core.authorize({ credential, method, path, namespace: "", org: "", ...extra });
}

/** "policy.csv:N" for the line of the default policy that reads exactly `rule`. */
export function ruleLine(rule: string): string {
  const lines = readFileSync(resolve(POLICY_DIR, "policy.csv"), "utf8").split(/\r?\n/);
  const index = lines.findIndex((line) => line.trim() === rule);
  if (index === -1) throw new Error(`no line "${rule}" in policy.csv`);
  return `policy.csv:${index + 1}`;
}

/** Counts the statements that reach the database through a Kysely instance. */
export function countStatements(db: Kysely<Database>): { db: Kysely<Database>; statements: string[] } {
  const statements: string[] = [];
  const plugin: KyselyPlugin = {
    transformQuery({ node }: PluginTransformQueryArgs): RootOperationNode {
      statements.push(node.kind);
      return node;
    },
    async transformResult({ result }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
      return result;
    },
  };
  return { db: db.withPlugin(plugin), statements };
}

/**
 * The usual file setup: one fresh test database (PGlite or Postgres, see
 * test/support/database.ts) and a core over it, closed after the file.
 * `use` receives them once they exist.
 */
export function useCoreDatabase(use: (core: Core, database: TestDatabase) => void, options: CoreOptions = {}): void {
  let database: TestDatabase | undefined;
  let core: Core | undefined;
  beforeAll(async () => {
    database = await createTestDatabase();
    core = await createCore(database.store.db, options);
    use(core, database);
  });
  afterAll(async () => {
    await core?.close();
    await database?.dispose();
  });
}

/** A database outage at will: every query through `plugin` fails while `down` is true. */
export function createOutage(): { plugin: KyselyPlugin; down: boolean } {
  const outage = {
    down: true,
    plugin: {
      transformQuery({ node }: PluginTransformQueryArgs): RootOperationNode {
        if (outage.down) throw new Error("the database is down");
        return node;
      },
      transformResult: async ({ result }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> => result,
    } satisfies KyselyPlugin,
  };
  return outage;
}
