/**
 * Soak: one real `keygate serve` under a steady, mixed load for a set
 * time; it fails (exit code 1) on any error or when the server's memory
 * grows by 10 % or more.
 *
 *   npm run soak                                 5 minutes at 500 req/s, PGlite in a temp dir
 *   npm run soak -- --quick                      20 s (what CI runs)
 *   npm run soak -- --duration 30m --rate 800    any length (90s, 5m, 1h) and rate
 *   npm run soak -- --database postgres          a fresh database on KEYGATE_BENCH_DATABASE_URL's server
 *   npm run soak -- --json FILE                  also write the report as JSON
 *   npm run soak -- --seed N                     another (reproducible) request sequence
 *   npm run soak -- --server-env NAME=VALUE      a server setting (repeatable), e.g. KEYGATE_KEY_CACHE_SIZE=1000
 *   npm run soak -- --heap-snapshots DIR         heap snapshots of the server at both memory points, and what grew
 *
 * The server is bench/servers/keygate-with-gc.js: `keygate serve --port 0`
 * (the CLI's own code and defaults) plus a hook that runs a full GC and
 * reports its memory on SIGUSR2. Before the clock starts, an admin key is
 * made with the CLI, a pool of keys over ManageKey, one call is answered
 * on each transport, and the server runs a full GC (start-up garbage —
 * PGlite's initdb — is hundreds of MB on a new data dir).
 *
 * The load is open-loop: request i is due at start + i / rate, whether or
 * not earlier ones were answered, and its latency runs from when it was
 * due, so a server (or load generator) that falls behind shows in the
 * latency instead of quietly lowering the rate (no coordinated omission).
 * A request sent more than LATE_MS after it was due is a late start. The
 * mix, by a seeded random draw per request:
 *
 *   70 % allow          a pool key (reader or writer) on a route its role may use
 *    8 % deny, policy   a reader writing, or any key with another org's hint → FORBIDDEN / 403
 *    6 % deny, unknown  well-formed keys never issued, bad checksums, a few repeated → INVALID_KEY / 401
 *    6 % deny, revoked  keys this soak revoked → REVOKED / 401
 *    5 % create         ManageKey create (reader); the key joins the allow pool at once
 *    5 % revoke         ManageKey revoke of the oldest key it created (none in flight),
 *                       which then serves the revoked denials; creations and
 *                       revocations take turns, so the live population stays put
 *
 * Decisions go equally over the Cube callback (HTTP/1.1 keep-alive),
 * Authorize over Connect (h2c) and Authorize over gRPC (grpc-js);
 * ManageKey over Connect HTTP/1.1 as the admin key. The database keeps
 * every revoked key (and an audit row per action).
 *
 * Every answer is checked against what it should be. An error is a
 * transport error, a timeout (REQUEST_TIMEOUT_MS), any other decision,
 * reason, message or key id than expected, a ManageKey answer that is not
 * the created or revoked key, and any line the server logs at error level
 * (or that is not one of its JSON log lines) during the soak. A server log
 * line holding any key the soak made or sent (issued, revoked, unknown,
 * mistyped: the random part, prefixed or not) fails the soak too.
 *
 * Memory: the server's VmRSS (/proc/PID/status) every second. "Start" is
 * taken when the warm-up ends (the larger of 10 % of the duration and 5 s:
 * JIT, caches, connection pools, the database's buffers filling), "end" as
 * soon as the load ends; at both points the server runs a full GC and
 * reports its RSS at once, so that garbage not yet collected does not
 * count as growth. Growth = (end − start) / start of those; VmRSS a second
 * after each GC, the raw samples and the trend of the
 * samples after warm-up (MB/min) are reported too. Latencies are of the
 * requests due after the warm-up (the warm-up's GC pause, tens of ms,
 * included); errors count over the whole run. The slowest seconds of the
 * run (by when requests were due) are listed, to tell a periodic stall
 * (a usage flush, a GC) from a lasting one.
 */
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import { join, resolve } from "node:path";
import { generateKey } from "../src/core/keys/key-format.js";
import type { ManageKeyRequest } from "../gen/keygate/v1/key_pb.js";
import { ADMIN_URL, createScratchDatabase, unreachable, type ScratchDatabase } from "./support/postgres.js";
import { memoryOf, runCli, startBenchServer, type ServerProcess } from "./support/process.js";
import { openSoakClients, TimeoutError, TRANSPORT_LABEL, TRANSPORTS, type DecisionAnswer, type DecisionRequest, type SoakClients, type Transport } from "./support/soak-clients.js";
import { heapGrowth, summarizeHeapSnapshot, takeHeapSnapshot } from "./support/soak-heap.js";
import { secretPart, watchServerLog, type ServerLogWatch } from "./support/soak-server-log.js";
import { count, LatencyHistogram, mb, rps } from "./support/stats.js";
import { formatColumns } from "./support/table.js";
import { prng } from "./support/prng.js";

// ---------------------------------------------------------------- settings

const USAGE = `usage: node --expose-gc dist/bench/soak.js [--duration 5m] [--rate 500] [--database pglite|postgres] [--quick] [--json FILE] [--seed N] [--server-env NAME=VALUE]... [--heap-snapshots DIR]`;

const argv = process.argv.slice(2);
/** A bad command line: what is wrong and the usage, exit code 2. */
function usageError(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}
if (argv.includes("--help") || argv.includes("-h")) {
  console.log(USAGE);
  process.exit(0);
}
const KNOWN = new Set(["--duration", "--rate", "--database", "--quick", "--json", "--seed", "--server-env", "--heap-snapshots"]);
for (const arg of argv) {
  if (arg.startsWith("--") && !KNOWN.has(arg)) {
    usageError(`unknown option ${arg}`);
  }
}
const optionValue = (name: string) => {
  const at = argv.indexOf(name);
  if (at === -1) return undefined;
  const value = argv[at + 1];
  if (value === undefined || value.startsWith("--")) usageError(`${name} needs a value`);
  return value;
};

/** "20s", "5m", "1h", "1500ms", or plain seconds. */
function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) usageError(`--duration: "${text}" is not a duration (e.g. 20s, 5m, 1h)`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[match[2] ?? "s"]!;
  return Number(match[1]) * unit;
}

const QUICK = argv.includes("--quick");
const DURATION_MS = parseDuration(optionValue("--duration") ?? (QUICK ? "20s" : "5m"));
const RATE = Number(optionValue("--rate") ?? 500);
const DATABASE = optionValue("--database") ?? "pglite";
const JSON_FILE = optionValue("--json");
const SEED = Number(optionValue("--seed") ?? 1);
/** --heap-snapshots DIR: the server writes a heap snapshot after the warm-up's GC and after the end's, and the bench lists what grew (it stops the server for a second or more each time: latency figures suffer). */
const HEAP_DIR = optionValue("--heap-snapshots");
/** --server-env NAME=VALUE (repeatable): a setting for the server, e.g. KEYGATE_KEY_CACHE_SIZE=1000 (the bench's own environment never reaches it). */
const SERVER_ENV: Record<string, string> = {};
argv.forEach((arg, i) => {
  if (arg !== "--server-env") return;
  const match = /^([A-Z_][A-Z0-9_]*)=(.*)$/.exec(argv[i + 1] ?? "");
  if (!match) usageError(`--server-env: "${argv[i + 1] ?? ""}" is not NAME=VALUE`);
  SERVER_ENV[match[1]!] = match[2]!;
});
if (!(RATE > 0 && RATE <= 20_000)) usageError(`--rate: ${RATE} is not a rate from 1 to 20000 requests per second`);
if (DATABASE !== "pglite" && DATABASE !== "postgres") usageError(`--database: "${DATABASE}" is neither pglite nor postgres`);
if (DURATION_MS < 10_000) usageError("--duration: at least 10s (the warm-up alone takes 5 s)");

/** The warm-up: the larger of 10 % of the run and 5 s. */
const WARMUP_MS = Math.max(DURATION_MS * 0.1, 5_000);
/** A request sent this much after it was due is a late start. */
const LATE_MS = 5;
const REQUEST_TIMEOUT_MS = 5_000;
/** The most RSS may grow from the end of the warm-up to the end, after GC. */
const MAX_GROWTH = 0.1;

/** Keys made before the clock starts. */
const POOL_READERS = 80;
const POOL_WRITERS = 20;
/** Created keys ready to be revoked when the soak starts (creations then replace what revocations take). */
const POOL_REVOCABLE = 50;
/** Keys revoked before the clock starts, so that revoked denials have keys from the first second. */
const POOL_REVOKED = 20;
/** Revoked keys kept for denials (the most recent). */
const REVOKED_KEPT = 500;

const KINDS = ["allow", "deny-policy", "deny-unknown", "deny-revoked", "create", "revoke"] as const;
type Kind = (typeof KINDS)[number];
const MIX: Record<Kind, number> = { allow: 70, "deny-policy": 8, "deny-unknown": 6, "deny-revoked": 6, create: 5, revoke: 5 };
const KIND_LABEL: Record<Kind, string> = {
  allow: "allow (pool and created keys)",
  "deny-policy": "deny: policy, wrong org",
  "deny-unknown": "deny: unknown / malformed key",
  "deny-revoked": "deny: revoked key",
  create: "ManageKey create",
  revoke: "ManageKey revoke",
};

// ---------------------------------------------------------------- the request mix

const random = prng(SEED);
const pick = <T>(items: readonly T[]): T => items[Math.floor(random() * items.length)]!;
const resourceId = () => Math.floor(random() * 1e6).toString(36);

/** Creations and revocations take turns (their draws are pooled), so the live key population never drifts. */
let nextChange: "create" | "revoke" = "create";

function drawKind(): Kind {
  let r = random() * 100;
  for (const kind of KINDS) {
    r -= MIX[kind];
    if (r >= 0) continue;
    if (kind !== "create" && kind !== "revoke") return kind;
    const change = nextChange;
    nextChange = change === "create" ? "revoke" : "create";
    return change;
  }
  return "allow";
}

type Role = "reader" | "writer";
interface SoakKey {
  id: string;
  key: string;
  role: Role;
  /** Decisions on this key not answered yet: it is revoked only when there are none. */
  inFlight: number;
}

/** Routes and methods the default policy (policies/policy.csv) gives each role (templates and volumes change only with "platform"). */
function allowedRoute(role: Role): { path: string; method: string } {
  const reads = [
    () => "/sandboxes",
    () => "/v2/sandboxes",
    () => `/sandboxes/${resourceId()}`,
    () => `/sandboxes/${resourceId()}/logs`,
    () => "/templates",
    () => `/templates/${resourceId()}`,
    () => `/templates/${resourceId()}/builds/${resourceId()}/status`,
    () => "/snapshots",
    () => "/volumes",
    () => `/volumes/${resourceId()}`,
  ];
  if (role === "writer" && random() < 0.5) {
    return pick([
      { path: "/sandboxes", method: "POST" },
      { path: `/sandboxes/${resourceId()}`, method: "DELETE" },
      { path: `/sandboxes/${resourceId()}/timeout`, method: "POST" },
      { path: `/sandboxes/${resourceId()}/network`, method: "PUT" },
      { path: `/sandboxes/${resourceId()}/pause`, method: "POST" },
      { path: "/v2/sandboxes", method: "POST" },
      { path: `/cubeapi/v1/sandboxes/${resourceId()}/terminal/ws`, method: "GET" },
    ]);
  }
  return { path: pick(reads)(), method: random() < 0.9 ? "GET" : "HEAD" };
}

/** What a reader may not do. */
function forbiddenRoute(): { path: string; method: string } {
  return pick([
    { path: `/sandboxes/${resourceId()}`, method: "DELETE" },
    { path: "/templates", method: "POST" },
    { path: `/sandboxes/${resourceId()}/network`, method: "PUT" },
    { path: `/templates/${resourceId()}`, method: "PATCH" },
    { path: "/admin/metrics", method: "GET" },
  ]);
}

interface Expectation {
  allowed: boolean;
  reason: string;
  /** Exact message, when the contract fixes one. */
  message?: string;
  /** The key the decision must name (allows only: the callback sends X-Auth-User only then). */
  keyId?: string;
}

const forbiddenMessage = (method: string, path: string) => `API key is not allowed to ${method} ${path}`;

// ---------------------------------------------------------------- results

type ErrorCategory = "transport" | "timeout" | "unexpected answer";

interface Bucket {
  requests: number;
  errors: number;
  /** Latencies of requests due after the warm-up. */
  histogram: LatencyHistogram;
  maxMs: number;
}
const bucket = (): Bucket => ({ requests: 0, errors: 0, histogram: new LatencyHistogram(), maxMs: 0 });

class Results {
  readonly byKind = new Map<Kind, Bucket>(KINDS.map((kind) => [kind, bucket()]));
  readonly byTransport = new Map<Transport, Bucket>(TRANSPORTS.map((transport) => [transport, bucket()]));
  readonly overall = bucket();
  /** The warm-up's latencies, for reference. */
  readonly warmup = bucket();
  readonly errorCounts = new Map<string, number>();
  readonly errorExamples: string[] = [];
  sent = 0;
  answered = 0;
  lateStarts = 0;
  maxLagMs = 0;
  created = 0;
  revoked = 0;
  /** Revocations due when no created key was free to revoke (none, or all in flight). */
  revokesSkipped = 0;
  /** Per second of the run (by when requests were due): where the slow answers and errors are. */
  readonly timeline: { second: number; requests: number; over10ms: number; maxMs: number; errors: number }[] = [];

  constructor(private readonly t0: number) {}

  record(kind: Kind, transport: Transport | undefined, dueAt: number, steady: boolean, error?: { category: ErrorCategory; detail: string }): void {
    const latency = performance.now() - dueAt;
    this.answered++;
    const buckets = steady ? [this.byKind.get(kind)!, this.overall, ...(transport ? [this.byTransport.get(transport)!] : [])] : [this.warmup];
    if (!steady) {
      // Requests and errors of the warm-up count in their kind too; only the latency figures are the steady phase's.
      this.byKind.get(kind)!.requests++;
      if (transport) this.byTransport.get(transport)!.requests++;
      if (error) {
        this.byKind.get(kind)!.errors++;
        if (transport) this.byTransport.get(transport)!.errors++;
      }
    }
    for (const b of buckets) {
      b.requests++;
      if (error) b.errors++;
      b.histogram.record(latency);
      b.maxMs = Math.max(b.maxMs, latency);
    }
    const second = Math.max(0, Math.floor((dueAt - this.t0) / 1000));
    while (this.timeline.length <= second) this.timeline.push({ second: this.timeline.length, requests: 0, over10ms: 0, maxMs: 0, errors: 0 });
    const slot = this.timeline[second]!;
    slot.requests++;
    if (latency > 10) slot.over10ms++;
    slot.maxMs = Math.max(slot.maxMs, latency);
    if (error) slot.errors++;
    if (error) {
      const label = `${kind}${transport ? ` via ${transport}` : ""}: ${error.category}`;
      this.errorCounts.set(label, (this.errorCounts.get(label) ?? 0) + 1);
      if (this.errorExamples.length < 20) this.errorExamples.push(`${label}: ${error.detail}`);
    }
  }

  get errors(): number {
    let total = 0;
    for (const n of this.errorCounts.values()) total += n;
    return total;
  }
}

function classify(error: unknown): { category: ErrorCategory; detail: string } {
  if (error instanceof TimeoutError) return { category: "timeout", detail: error.message };
  return { category: "transport", detail: error instanceof Error ? `${error.name}: ${error.message}` : String(error) };
}

function mismatch(answer: DecisionAnswer, expected: Expectation): string | undefined {
  const wrong: string[] = [];
  if (answer.allowed !== expected.allowed) wrong.push(`allowed ${answer.allowed}, expected ${expected.allowed}`);
  if (answer.reason !== expected.reason) wrong.push(`reason ${answer.reason}, expected ${expected.reason}`);
  if (expected.message !== undefined && answer.message !== expected.message) wrong.push(`message "${answer.message}", expected "${expected.message}"`);
  if (expected.keyId !== undefined && answer.keyId !== expected.keyId) wrong.push(`key "${answer.keyId}", expected "${expected.keyId}"`);
  return wrong.length === 0 ? undefined : wrong.join("; ") + (answer.status ? ` (HTTP ${answer.status})` : "");
}

// ---------------------------------------------------------------- memory

interface MemorySnapshot {
  /** VmRSS as found, before the GC. */
  rss: number;
  /** process.memoryUsage().rss as the server reported it right after a full GC: the figure the verdict compares. */
  rssAfterGc: number;
  /**
   * VmRSS one second after the GC, for reference: V8 gives pages back in the
   * background, and under load the young generation is back a moment later
   * (at the warm-up's end this dips by up to 10 MB that return within
   * seconds; the end is taken with no load), so it is not compared.
   */
  rssSettled: number;
  heapAfterGc: number;
  /** V8's committed heap (heap_total: old and young generations), and memory outside it (external: Buffers, ArrayBuffers, PGlite's WASM memory), after the GC. */
  heapTotalAfterGc: number;
  externalAfterGc: number;
  /** Seconds since the soak's clock started, when the GC was asked for. */
  atSeconds: number;
  /** From asking for the GC to the server's report: how long the server was stopped (plus a signal's and a pipe's delivery). */
  gcMs: number;
}

/** SETTLE_MS after a GC, its memory is back with the system. */
const SETTLE_MS = 1_000;

/** /proc/PID/status, then a full GC in the server (SIGUSR2, bench/servers/keygate-with-gc.ts), its own figures, and /proc again SETTLE_MS later. */
async function memorySnapshot(server: ServerProcess, t0: number): Promise<MemorySnapshot> {
  const found = await memoryOf(server.pid);
  const logged = server.waitFor(/"msg":"bench memory","rss":(\d+),"heap_used":(\d+),"heap_total":(\d+),"external":(\d+)/, 30_000);
  const asked = performance.now();
  server.child.kill("SIGUSR2");
  const after = await logged;
  const gcMs = performance.now() - asked;
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  const settled = await memoryOf(server.pid);
  return { rss: found.rss, rssAfterGc: Number(after[1]), rssSettled: settled.rss, heapAfterGc: Number(after[2]), heapTotalAfterGc: Number(after[3]), externalAfterGc: Number(after[4]), atSeconds: (asked - t0) / 1000, gcMs };
}

/** Least-squares slope of RSS over time, bytes per minute. */
function slopePerMinute(samples: readonly { atSeconds: number; rss: number }[]): number {
  if (samples.length < 2) return NaN;
  const n = samples.length;
  const meanT = samples.reduce((s, x) => s + x.atSeconds, 0) / n;
  const meanR = samples.reduce((s, x) => s + x.rss, 0) / n;
  let num = 0;
  let den = 0;
  for (const x of samples) {
    num += (x.atSeconds - meanT) * (x.rss - meanR);
    den += (x.atSeconds - meanT) ** 2;
  }
  return den === 0 ? NaN : (num / den) * 60;
}

// ---------------------------------------------------------------- the soak

interface KeyPools {
  /** Never revoked. */
  pool: SoakKey[];
  /** Created by the soak and not revoked yet, oldest first: allowed like the pool, revoked in turn. */
  live: SoakKey[];
  /** Revoked by the soak, the most recent REVOKED_KEPT. */
  revoked: SoakKey[];
  /** Well-formed keys never issued, sent again and again (the negative cache's case). */
  unknownRepeated: string[];
}

/** The random part of every key the soak made or sent (issued, unknown, mistyped): none may appear in the server's log. */
const secrets = new Set<string>();
function secret(key: string): string {
  secrets.add(secretPart(key));
  return key;
}

/** A ManageKey answer that is not what was asked for (an error of its own kind, not a transport error). */
class UnexpectedAnswer extends Error {}

async function createKey(clients: SoakClients, name: string, role: Role): Promise<SoakKey> {
  const response = await clients.manage({ case: "create", value: { $typeName: "keygate.v1.CreateKeyAction", name, org: "", namespace: "", roles: [role], expiry: { case: undefined }, rateLimit: "" } }, REQUEST_TIMEOUT_MS);
  if (response.result.case !== "created" || !response.result.value.plaintext || !response.result.value.key?.id) throw new UnexpectedAnswer(`ManageKey create: expected a created key, got ${response.result.case}`);
  return { id: response.result.value.key.id, key: secret(response.result.value.plaintext), role, inFlight: 0 };
}

async function revokeKey(clients: SoakClients, key: SoakKey): Promise<void> {
  const action: ManageKeyRequest["action"] = { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", id: key.id } };
  const response = await clients.manage(action, REQUEST_TIMEOUT_MS);
  if (response.result.case !== "key" || response.result.value.id !== key.id || response.result.value.enabled || !response.result.value.revokedAt) {
    throw new UnexpectedAnswer(`ManageKey revoke ${key.id}: got ${response.result.case} ${response.result.case === "key" ? `${response.result.value.id} enabled=${response.result.value.enabled} revoked_at=${response.result.value.revokedAt ? "set" : "unset"}` : ""}`);
  }
}

/** Runs `fn` over items, at most `limit` at a time. */
async function inBatches<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let i = 0; i < items.length; i += limit) results.push(...(await Promise.all(items.slice(i, i + limit).map((item, j) => fn(item, i + j)))));
  return results;
}

async function makePools(clients: SoakClients): Promise<KeyPools> {
  const roles: Role[] = [...Array<Role>(POOL_READERS).fill("reader"), ...Array<Role>(POOL_WRITERS).fill("writer")];
  const pool = await inBatches(roles, 8, (role, i) => createKey(clients, `soak-pool-${i}`, role));
  const live = await inBatches(Array.from({ length: POOL_REVOCABLE }), 8, (_, i) => createKey(clients, `soak-initial-${i}`, "reader"));
  const revoked = await inBatches(Array.from({ length: POOL_REVOKED }), 8, async (_, i) => {
    const key = await createKey(clients, `soak-revoked-${i}`, "reader");
    await revokeKey(clients, key);
    return key;
  });
  return { pool, live, revoked, unknownRepeated: Array.from({ length: 16 }, () => secret(generateKey())) };
}

/** A key's last checksum character changed: malformed, refused without a database lookup. */
function badChecksum(key: string): string {
  const last = key.at(-1)!;
  return key.slice(0, -1) + (last === "A" ? "B" : "A");
}

interface Plan {
  kind: Kind;
  transport?: Transport;
  run(): Promise<string | undefined>;
}

/**
 * What request i is: drawn now, when it is due (the pools are as the
 * answers so far left them). run() resolves with a mismatch (undefined
 * when the answer is the expected one) or rejects on a transport error.
 */
function plan(clients: SoakClients, pools: KeyPools, results: Results): Plan {
  const kind = drawKind();
  const decide = (transport: Transport, request: DecisionRequest, expected: Expectation, key?: SoakKey): Plan => ({
    kind,
    transport,
    async run() {
      if (key) key.inFlight++;
      try {
        return mismatch(await clients.decide(transport, request, REQUEST_TIMEOUT_MS), expected);
      } finally {
        if (key) key.inFlight--;
      }
    },
  });
  const transport = pick(TRANSPORTS);
  switch (kind) {
    case "allow": {
      const n = Math.floor(random() * (pools.pool.length + pools.live.length));
      const key = n < pools.pool.length ? pools.pool[n]! : pools.live[n - pools.pool.length]!;
      const route = allowedRoute(key.role);
      return decide(transport, { key: key.key, ...route, org: random() < 0.2 ? "bench" : "" }, { allowed: true, reason: "ALLOWED", keyId: key.id }, key);
    }
    case "deny-policy": {
      if (random() < 0.25) {
        // Any key, a route it may use, but another org's hint.
        const key = pick(pools.pool);
        const route = allowedRoute(key.role);
        return decide(transport, { key: key.key, ...route, org: "soak-other-org" }, { allowed: false, reason: "FORBIDDEN", message: forbiddenMessage(route.method, route.path) }, key);
      }
      const key = pick(pools.pool.filter((k) => k.role === "reader"));
      const route = forbiddenRoute();
      return decide(transport, { key: key.key, ...route, org: "" }, { allowed: false, reason: "FORBIDDEN", message: forbiddenMessage(route.method, route.path) }, key);
    }
    case "deny-unknown": {
      const r = random();
      const key = r < 0.4 ? secret(generateKey()) : r < 0.7 ? pick(pools.unknownRepeated) : badChecksum(pick(pools.pool).key);
      const route = allowedRoute("reader");
      return decide(transport, { key, ...route, org: "" }, { allowed: false, reason: "INVALID_KEY", message: "invalid API key" });
    }
    case "deny-revoked": {
      const key = pick(pools.revoked);
      const route = allowedRoute(key.role);
      return decide(transport, { key: key.key, ...route, org: "" }, { allowed: false, reason: "REVOKED", message: "API key has been revoked" });
    }
    case "create":
      return {
        kind,
        async run() {
          let key: SoakKey;
          try {
            key = await createKey(clients, `soak-${results.created + results.revoked}`, "reader");
          } catch (error) {
            if (error instanceof UnexpectedAnswer) return error.message;
            throw error;
          }
          results.created++;
          pools.live.push(key);
          return undefined;
        },
      };
    case "revoke": {
      // The oldest created key with no decision in flight leaves the allow pool now, before its revocation is sent.
      const at = pools.live.findIndex((k) => k.inFlight === 0);
      if (at === -1) {
        results.revokesSkipped++;
        return { kind, run: async () => undefined };
      }
      const [key] = pools.live.splice(at, 1) as [SoakKey];
      return {
        kind,
        async run() {
          try {
            await revokeKey(clients, key);
          } catch (error) {
            if (error instanceof UnexpectedAnswer) return error.message;
            throw error;
          }
          results.revoked++;
          pools.revoked.push(key);
          if (pools.revoked.length > REVOKED_KEPT) pools.revoked.shift();
          return undefined;
        },
      };
    }
  }
}

interface RunOutcome {
  results: Results;
  elapsedSeconds: number;
  samples: { atSeconds: number; rss: number }[];
  warmupMemory: MemorySnapshot;
  endMemory: MemorySnapshot;
  liveAtEnd: number;
  heapSnapshots?: { warmup: string; end: string };
}

async function soak(server: ServerProcess, clients: SoakClients, pools: KeyPools): Promise<RunOutcome> {
  const samples: { atSeconds: number; rss: number }[] = [];
  const inFlight = new Set<Promise<void>>();
  const interval = 1000 / RATE;
  const total = Math.floor((DURATION_MS / 1000) * RATE);
  const t0 = performance.now();
  const results = new Results(t0);
  const warmupEnd = t0 + WARMUP_MS;

  let sampleError: unknown;
  const sampler = setInterval(() => {
    memoryOf(server.pid).then(
      (memory) => samples.push({ atSeconds: (performance.now() - t0) / 1000, rss: memory.rss }),
      (error: unknown) => (sampleError ??= error),
    );
  }, 1_000);
  let warmupMemory: Promise<MemorySnapshot> | undefined;
  let heapAtWarmup: string | undefined;
  let progressAt = t0 + 30_000;

  const launch = (dueAt: number, now: number) => {
    const lag = now - dueAt;
    if (lag > LATE_MS) results.lateStarts++;
    results.maxLagMs = Math.max(results.maxLagMs, lag);
    const steady = dueAt >= warmupEnd;
    const p = plan(clients, pools, results);
    results.sent++;
    const done = p.run().then(
      (wrong) => results.record(p.kind, p.transport, dueAt, steady, wrong === undefined ? undefined : { category: "unexpected answer", detail: wrong }),
      (error: unknown) => results.record(p.kind, p.transport, dueAt, steady, classify(error)),
    );
    inFlight.add(done);
    void done.finally(() => inFlight.delete(done));
  };

  try {
    for (let i = 0; i < total; ) {
      const now = performance.now();
      // Everything due by now goes out; then sleep until the next one is due.
      for (; i < total && t0 + i * interval <= now; i++) launch(t0 + i * interval, now);
      if (!warmupMemory && now >= warmupEnd) {
        warmupMemory = memorySnapshot(server, t0).then(async (memory) => {
          if (HEAP_DIR) heapAtWarmup = await takeHeapSnapshot(server.pid, (signal) => server.child.kill(signal), HEAP_DIR);
          return memory;
        });
      }
      if (now >= progressAt) {
        progressAt += 30_000;
        const last = samples.at(-1);
        console.log(`  ${((now - t0) / 1000).toFixed(0)} s: ${count(results.answered)} answered, ${results.errors} errors, ${inFlight.size} in flight${last ? `, RSS ${mb(last.rss)}` : ""}`);
      }
      if (server.child.exitCode !== null || server.child.signalCode !== null) throw new Error(`the server exited (${server.child.exitCode ?? server.child.signalCode}) during the soak`);
      if (i < total) await new Promise((resolve) => setTimeout(resolve, Math.max(0, t0 + i * interval - performance.now())));
    }
    await Promise.all(inFlight);
  } finally {
    clearInterval(sampler);
  }
  const elapsedSeconds = (performance.now() - t0) / 1000;
  if (sampleError) throw sampleError;
  // The last raw sample: as the load ends, before the final GC.
  samples.push({ atSeconds: elapsedSeconds, rss: (await memoryOf(server.pid)).rss });
  const endMemory = await memorySnapshot(server, t0);
  const atWarmup = await warmupMemory!;
  const heapSnapshots = HEAP_DIR && heapAtWarmup ? { warmup: heapAtWarmup, end: await takeHeapSnapshot(server.pid, (signal) => server.child.kill(signal), HEAP_DIR) } : undefined;
  return { results, elapsedSeconds, samples, warmupMemory: atWarmup, endMemory, liveAtEnd: pools.live.length, heapSnapshots };
}

// ---------------------------------------------------------------- report

const fmtMs = (value: number) => (Number.isNaN(value) ? "—" : value < 10 ? `${value.toFixed(2)} ms` : `${value.toFixed(0)} ms`);
const pct = (fraction: number) => `${fraction >= 0 ? "+" : ""}${(fraction * 100).toFixed(1)} %`;
const latencyDigest = (b: Bucket) => ({ requests: b.requests, errors: b.errors, p50_ms: b.histogram.quantile(0.5), p99_ms: b.histogram.quantile(0.99), max_ms: b.maxMs });

async function main(): Promise<number> {
  const started = performance.now();
  const cpus = os.cpus();
  const loadAtStart = os.loadavg()[0]!;
  console.log(
    `soak: ${(DURATION_MS / 1000).toFixed(0)} s at ${count(RATE)} req/s offered, ${DATABASE === "pglite" ? "PGlite (temp data dir)" : "Postgres (fresh database)"}; ` +
      `warm-up ${(WARMUP_MS / 1000).toFixed(0)} s; seed ${SEED};${Object.keys(SERVER_ENV).length ? ` server env ${Object.entries(SERVER_ENV).map(([k, v]) => `${k}=${v}`).join(" ")};` : ""} ${cpus.length} × ${cpus[0]?.model.trim()}, Node ${process.version}, load average ${loadAtStart.toFixed(2)}`,
  );

  const dir = await mkdtemp(join(os.tmpdir(), "keygate-soak-"));
  let database: ScratchDatabase | undefined;
  let server: ServerProcess | undefined;
  let clients: SoakClients | undefined;
  let log: ServerLogWatch | undefined;
  try {
    let env: Record<string, string>;
    if (DATABASE === "postgres") {
      const why = await unreachable(ADMIN_URL);
      if (why) throw new Error(`no Postgres at ${ADMIN_URL} (${why}); set KEYGATE_BENCH_DATABASE_URL`);
      database = await createScratchDatabase(ADMIN_URL);
      env = { DATABASE_URL: database.url };
    } else {
      env = { KEYGATE_DATA_DIR: join(dir, "data") };
    }
    env = { ...env, ...SERVER_ENV };
    if (HEAP_DIR) await mkdir(HEAP_DIR, { recursive: true });
    const heapArgs = HEAP_DIR ? ["--heapsnapshot-signal=SIGUSR1", `--diagnostic-dir=${resolve(HEAP_DIR)}`] : [];
    server = await startBenchServer("keygate-with-gc.js", env, dir, { nodeArgs: ["--expose-gc", ...heapArgs], timeoutMs: 60_000 });
    log = watchServerLog(server);
    const rssListening = (await memoryOf(server.pid)).rss;
    const admin = JSON.parse(await runCli(["keygen", "--json", "--org", "bench", "--role", "admin", "--name", "soak-admin"], env, dir)) as { key: string };
    clients = openSoakClients(server.url, secret(admin.key));
    const setupStarted = performance.now();
    const pools = await makePools(clients);
    // One answered call on each transport: connections open, first-call costs paid before the clock starts.
    for (const transport of TRANSPORTS) {
      const key = pools.pool[0]!;
      const wrong = mismatch(await clients.decide(transport, { key: key.key, path: "/sandboxes", method: "GET", org: "" }, REQUEST_TIMEOUT_MS), { allowed: true, reason: "ALLOWED", keyId: key.id });
      if (wrong) throw new Error(`${TRANSPORT_LABEL[transport]}: the first call was not allowed: ${wrong}`);
    }
    const rssReady = (await memoryOf(server.pid)).rss;
    // A full GC before the clock starts: start-up garbage (PGlite's initdb, the migrations) would
    // otherwise be collected by the warm-up's GC, in the middle of the load, and take seconds.
    const setupMemory = await memorySnapshot(server, performance.now());
    console.log(
      `server pid ${server.pid} on ${server.url}, RSS ${mb(rssListening)} when listening, ${mb(rssReady)} with the keys made, ${mb(setupMemory.rssSettled)} after a full GC (${fmtMs(setupMemory.gcMs)}); ${pools.pool.length} pool keys (${POOL_READERS} readers, ${POOL_WRITERS} writers), ${pools.live.length} to revoke, ${pools.revoked.length} revoked, made in ${((performance.now() - setupStarted) / 1000).toFixed(1)} s`,
    );

    const run = await soak(server, clients, pools);
    const { results } = run;
    clients.close();
    clients = undefined;
    await server.stop();
    const exitCode = server.child.exitCode;
    log.stop();

    // ------------------------------------------------------------ figures
    const growth = (run.endMemory.rssAfterGc - run.warmupMemory.rssAfterGc) / run.warmupMemory.rssAfterGc;
    // The first sample after the warm-up's GC: from there on, samples and GC'd figures start level.
    const warmupDone = run.warmupMemory.atSeconds + (run.warmupMemory.gcMs + SETTLE_MS) / 1000;
    const afterWarmup = run.samples.filter((s) => s.atSeconds >= warmupDone);
    const rawStart = afterWarmup[0] ?? run.samples.at(-1)!;
    const rawEnd = run.samples.at(-1)!;
    const rawGrowth = (rawEnd.rss - rawStart.rss) / rawStart.rss;
    const trend = slopePerMinute(afterWarmup);
    const logErrors = log.errors;
    const leaks = log.leaks(secrets);
    const exitProblem = exitCode === 0 ? 0 : 1;
    const errors = results.errors + logErrors + exitProblem;
    const achieved = results.answered / run.elapsedSeconds;
    const steadyRequests = results.overall.requests;

    const rows: string[][] = [["", "requests", "errors", "p50", "p99", "max"]];
    const line = (label: string, b: Bucket) => [label, count(b.requests), count(b.errors), fmtMs(b.histogram.quantile(0.5)), fmtMs(b.histogram.quantile(0.99)), fmtMs(b.maxMs)];
    rows.push(line("all, after warm-up (latency from the time due)", results.overall));
    rows.push(line(`warm-up (first ${(WARMUP_MS / 1000).toFixed(0)} s)`, results.warmup));
    for (const kind of KINDS) rows.push(line(`  ${KIND_LABEL[kind]}`, results.byKind.get(kind)!));
    for (const transport of TRANSPORTS) rows.push(line(`  decisions: ${TRANSPORT_LABEL[transport]}`, results.byTransport.get(transport)!));
    console.log();
    console.log("requests and errors: whole run; latency figures: requests due after the warm-up");
    console.log(formatColumns(rows));
    const slowest = [...results.timeline].sort((x, y) => y.maxMs - x.maxMs).slice(0, 5);
    console.log(`slowest seconds (by the time due: max latency, answers over 10 ms): ${slowest.map((t) => `${t.second} s ${fmtMs(t.maxMs)} ${t.over10ms}`).join("; ")}`);
    console.log();
    const memoryRows = [
      ["server memory", "after warm-up", "end", "growth"],
      [`RSS after a full GC (verdict: < ${(MAX_GROWTH * 100).toFixed(0)} %)`, mb(run.warmupMemory.rssAfterGc), mb(run.endMemory.rssAfterGc), pct(growth)],
      ["RSS 1 s after that GC", mb(run.warmupMemory.rssSettled), mb(run.endMemory.rssSettled), pct((run.endMemory.rssSettled - run.warmupMemory.rssSettled) / run.warmupMemory.rssSettled)],
      ["RSS as sampled (VmRSS, no GC)", mb(rawStart.rss), mb(rawEnd.rss), pct(rawGrowth)],
      ["JS heap after full GC: used", mb(run.warmupMemory.heapAfterGc), mb(run.endMemory.heapAfterGc), pct((run.endMemory.heapAfterGc - run.warmupMemory.heapAfterGc) / run.warmupMemory.heapAfterGc)],
      ["JS heap after full GC: committed", mb(run.warmupMemory.heapTotalAfterGc), mb(run.endMemory.heapTotalAfterGc), pct((run.endMemory.heapTotalAfterGc - run.warmupMemory.heapTotalAfterGc) / run.warmupMemory.heapTotalAfterGc)],
      ["external (Buffers, WASM) after full GC", mb(run.warmupMemory.externalAfterGc), mb(run.endMemory.externalAfterGc), pct((run.endMemory.externalAfterGc - run.warmupMemory.externalAfterGc) / run.warmupMemory.externalAfterGc)],
    ];
    console.log(formatColumns(memoryRows));
    const peak = Math.max(...run.samples.map((s) => s.rss));
    console.log(
      `RSS samples: ${run.samples.length}, every 1 s; min ${mb(Math.min(...run.samples.map((s) => s.rss)))}, peak ${mb(peak)}; trend after warm-up ${Number.isNaN(trend) ? "—" : `${trend >= 0 ? "+" : ""}${(trend / 1024 / 1024).toFixed(2)} MB/min`}` +
        ` ("after warm-up" = at ${run.warmupMemory.atSeconds.toFixed(1)} s, its GC took ${fmtMs(run.warmupMemory.gcMs)}; "end" = at ${run.endMemory.atSeconds.toFixed(1)} s, as the load ended)`,
    );
    console.log();
    console.log(
      `rate: ${rps(RATE)} offered, ${rps(achieved)} achieved (${count(results.answered)} answered in ${run.elapsedSeconds.toFixed(1)} s); ` +
        `late starts (sent > ${LATE_MS} ms after due): ${count(results.lateStarts)}, worst ${fmtMs(results.maxLagMs)}`,
    );
    console.log(`keys: ${count(results.created)} created, ${count(results.revoked)} revoked during the soak (${run.liveAtEnd} created keys live at the end${results.revokesSkipped ? `; ${results.revokesSkipped} revocations skipped: no free key` : ""})`);
    console.log(
      `server log: ${Object.entries(log.levels)
        .map(([level, n]) => `${count(n)} ${level}`)
        .join(", ")} line(s); exit code after SIGTERM ${exitCode ?? server.child.signalCode}; ` +
        `${leaks.length} line(s) holding any of the ${count(secrets.size)} keys made or sent`,
    );
    if (results.errors > 0) {
      console.log("errors by kind:");
      for (const [label, n] of results.errorCounts) console.log(`  ${label}: ${count(n)}`);
      console.log("first errors:");
      for (const example of results.errorExamples) console.log(`  ${example}`);
    }
    if (leaks.length > 0) {
      // The lines themselves hold keys: say where, not what.
      console.log(`server log lines holding a key: ${leaks.length} (first at log line text "${leaks[0]!.slice(0, 40).replace(/[A-Za-z0-9]{12,}/g, "…")}")`);
    }
    if (log.examples.length > 0) {
      console.log("server log lines at error level (or not JSON):");
      for (const example of log.examples) console.log(`  ${example}`);
    }

    if (run.heapSnapshots) {
      const grew = heapGrowth(await summarizeHeapSnapshot(run.heapSnapshots.warmup), await summarizeHeapSnapshot(run.heapSnapshots.end));
      console.log(`heap growth from ${run.heapSnapshots.warmup} to ${run.heapSnapshots.end}, by constructor (self size):`);
      console.log(formatColumns([["", "objects", "bytes"], ...grew.map((g) => [g.name, `${g.countDelta >= 0 ? "+" : ""}${count(g.countDelta)}`, `${g.bytesDelta >= 0 ? "+" : ""}${count(g.bytesDelta)}`])]));
    }

    const failures: string[] = [];
    if (leaks.length > 0) failures.push(`${leaks.length} server log line(s) hold a key`);
    if (errors > 0) failures.push(`${count(errors)} error(s) (${count(results.errors)} in answers, ${logErrors} server log error line(s)${exitProblem ? ", server exit code not 0" : ""})`);
    // A heap snapshot costs the server memory of its own (the end's GC'd figure comes after the warm-up's snapshot): no memory verdict then.
    if (HEAP_DIR) console.log(`(--heap-snapshots: writing the warm-up's snapshot grew the server's RSS, so the RSS figures say nothing and are not checked)`);
    else if (!(growth < MAX_GROWTH)) failures.push(`RSS grew ${pct(growth)} (limit ${(MAX_GROWTH * 100).toFixed(0)} %)`);
    if (steadyRequests === 0) failures.push("no request after the warm-up");
    const verdict = failures.length === 0 ? "PASS" : "FAIL";
    console.log();
    console.log(
      `${verdict}: ${failures.length === 0 ? `0 errors in ${count(results.answered)} requests, p99 ${fmtMs(results.overall.histogram.quantile(0.99))}, RSS ${pct(growth)} after GC` : failures.join("; ")}` +
        `${QUICK ? " (--quick)" : ""}; took ${((performance.now() - started) / 1000).toFixed(0)} s, load average ${loadAtStart.toFixed(2)} at the start, ${os.loadavg()[0]!.toFixed(2)} at the end`,
    );

    if (JSON_FILE) {
      const report = {
        bench: "soak",
        verdict,
        failures,
        date: new Date().toISOString(),
        machine: { cpus: cpus.length, cpu_model: cpus[0]?.model.trim(), node: process.version, load_average_at_start: loadAtStart, load_average_at_end: os.loadavg()[0] },
        settings: { duration_ms: DURATION_MS, rate: RATE, database: DATABASE, server_env: SERVER_ENV, quick: QUICK, seed: SEED, warmup_ms: WARMUP_MS, late_ms: LATE_MS, request_timeout_ms: REQUEST_TIMEOUT_MS, mix_percent: MIX, pool: { readers: POOL_READERS, writers: POOL_WRITERS, revocable: POOL_REVOCABLE, revoked: POOL_REVOKED } },
        rate: { offered: RATE, achieved, answered: results.answered, seconds: run.elapsedSeconds, late_starts: results.lateStarts, max_lag_ms: results.maxLagMs },
        secrets: { keys_made_or_sent: secrets.size, server_log_lines_holding_one: leaks.length },
        errors: { total: errors, answers: results.errors, server_log_error_lines: logErrors, server_exit_code: exitCode, by_kind: Object.fromEntries(results.errorCounts), examples: results.errorExamples, server_log_examples: log.examples },
        latency: {
          overall: latencyDigest(results.overall),
          warmup: latencyDigest(results.warmup),
          by_kind: Object.fromEntries(KINDS.map((kind) => [kind, latencyDigest(results.byKind.get(kind)!)])),
          by_transport: Object.fromEntries(TRANSPORTS.map((transport) => [transport, latencyDigest(results.byTransport.get(transport)!)])),
        },
        memory: {
          growth_after_gc: growth,
          raw_growth: rawGrowth,
          trend_bytes_per_minute: trend,
          after_warmup: run.warmupMemory,
          end: run.endMemory,
          rss_listening: rssListening,
          rss_keys_made: rssReady,
          setup_after_gc: setupMemory,
          raw_start: rawStart,
          raw_end: rawEnd,
          samples: run.samples,
        },
        timeline: results.timeline,
        keys: { created: results.created, revoked: results.revoked, live_at_end: run.liveAtEnd, revokes_skipped: results.revokesSkipped },
        server_log_levels: log.levels,
      };
      const rounded = (_: string, value: unknown) => (typeof value === "number" && !Number.isInteger(value) ? Number(value.toPrecision(6)) : value);
      await writeFile(JSON_FILE, JSON.stringify(report, rounded, 2) + "\n");
      console.log(`JSON written to ${JSON_FILE}`);
    }
    return verdict === "PASS" ? 0 : 1;
  } catch (error) {
    if (server) console.error(`--- server (port ${server.port}) log tail:\n${server.output()}`);
    throw error;
  } finally {
    clients?.close();
    log?.stop();
    await server?.stop().catch(() => {});
    await database?.drop();
    await rm(dir, { recursive: true, force: true });
  }
}

process.exitCode = await main();
