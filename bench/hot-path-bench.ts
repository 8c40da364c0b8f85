/**
 * Hot-path benchmark: what a decision costs on each way in, measured
 * against a baseline in the same run.
 *
 *   npm run bench:hot                      this bench alone (≈ 6 min)
 *   npm run bench:hot -- --quick           small counts and short rounds, to check the bench works (CI)
 *   npm run bench:hot -- --json FILE       also write the results as JSON
 *   npm run bench:hot -- --only a,b        only these rows (a–f)
 *   npm run bench:hot -- --profile DIR     run the keygate servers of rows a–d with --cpu-prof, profiles in DIR
 *   npm run bench:hot -- --node 22         compare keygate on Node 22 (default 24; `off`: none) with the bench's Node
 *   npm run bench:hot -- --no-docs         a full run that leaves docs/performance.md alone
 *
 * A full run (not --quick, --only or --profile) writes its tables, dated,
 * with the machine and the versions, between the bench:hot-path and
 * bench:node markers of docs/performance.md.
 *
 * Every server is a child process (`keygate serve`, or a script from
 * bench/servers/); the load comes from this process: autocannon for HTTP,
 * connect-node clients at a fixed concurrency for RPC. A measure and its
 * baseline run in alternating rounds (the order flips every round, after a
 * warm-up of each), and the table gives the median and the min–max spread
 * over the rounds, the ratio of the medians, the target and whether the
 * median meets it. A missed target never fails the run; only a broken bench
 * does (exit code 1).
 *
 * Client and servers share the machine's cores, so a throughput figure is
 * as much the load generator's as the server's: the connect-node client
 * spends several times more CPU per call than the server does, and keeps
 * it well below one busy core. Rows a1c, b1c–b3c and cc therefore also
 * give the server's CPU time per request (from /proc/PID/stat around each
 * round) and the capacity ratio it implies (baseline ÷ value), which does
 * not depend on how hard the client pushed; their notes say how busy each
 * server was and what the client spent per request.
 *
 *   a. Cube callback POST /verify, a warm allowed key, 50 keep-alive
 *      connections (autocannon), against a bare node:http server child
 *      answering 200 `{}` (bench/servers/bare-http-server.ts).
 *      Targets: ≥ 0.5× its req/s, p99 ≤ 5 ms.
 *   b. Authorize, unary, 50 calls in flight, over Connect HTTP/1.1 (50
 *      keep-alive sockets), Connect h2c and gRPC (one HTTP/2 session each),
 *      against bench/servers/stub-core-server.ts: keygate's own runtime and
 *      startServer with runtime.authorize replaced by a constant allow, so
 *      only the decision core differs. Target: ≥ 0.9×.
 *   c. AuthorizeStream over gRPC, STREAM_CLIENTS clients (one HTTP/2
 *      session each) each keeping STREAM_WINDOW requests in flight on its
 *      stream, against unary Authorize from the same number of clients (one
 *      call in flight each). Target: ≥ 5×. "not available" when the RPC is
 *      missing from gen/ or the server answers UNIMPLEMENTED.
 *   d. Cold keys: the callback on a server with KEYGATE_KEY_CACHE_TTL=0s
 *      (caching off: every request is a database lookup), cycling through
 *      COLD_KEYS distinct real keys over COLD_CONNECTIONS connections,
 *      against the warm key on a server with the default cache at the same
 *      load: first closed-loop (as fast as answers come: the server is
 *      saturated and latency is mostly queueing), then (d1b, d2b) at an
 *      offered COLD_RATE req/s, evenly spaced. On Postgres (target p99 ≤
 *      2 ms) and on PGlite (reported).
 *   e. Memory (Postgres): RSS of keygate serve (bench/servers/keygate-with-gc.ts:
 *      the CLI's serve plus a full-GC-and-report hook on SIGUSR2) at start
 *      on an empty database, after 1,000,000 key rows are inserted (one
 *      INSERT … generate_series for the filler, the used keys' hashes from
 *      here), and after 100,000 distinct real keys were each used once
 *      through the callback (key cache TTL 10m, so all of them are cached
 *      up to the bound): with the default bound (KEYGATE_KEY_CACHE_SIZE
 *      100,000), a small one (10,000), and no cache (TTL 0s: the growth
 *      that is not the cache's). One sample each, after a full GC; the
 *      notes give the heap and the RSS as found before the GC
 *      (/proc/PID/status).
 *   n. Node lines: rows a–c also run a second keygate server (and, for
 *      reference, a second bare node:http server) on another Node line
 *      (--node, default 24: the binary from scripts/node.sh), in the same
 *      alternating rounds as their baselines; the load generator and every
 *      other server stay on the bench's Node. Each row: that line against
 *      the bench's Node, req/s, server CPU per request (and p99 for the
 *      callback); ratio > 1× = the other line is better. Without the binary
 *      (no registry, or the bench already runs on that line) the rows say why
 *      and the rest runs as before.
 *   f. Start: spawning `keygate serve` to its "keygate listening" line, on
 *      an existing PGlite data dir (target < 1.5 s), on Postgres (an
 *      existing, migrated database), and on a new PGlite data dir (for
 *      reference: initdb). Median over START_RUNS runs.
 *
 * Postgres: KEYGATE_BENCH_DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test) names a server on which the bench
 * creates, and afterwards drops, databases of its own; when none answers,
 * the Postgres rows say "skipped".
 */
import { cp, lstat, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import os from "node:os";
import { basename, join } from "node:path";
import { create, type DescMethod, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { sql } from "kysely";
import { AuthorizeRequestSchema, AuthorizeService, type AuthorizeResponse } from "../gen/keygate/v1/authorize_pb.js";
import { BENCH_ORG, generateBenchKeys, insertFiller, insertKeys, withDatabase, type BenchKey } from "./support/bench-keys.js";
import { writeDocSection, writesDocs } from "./support/docs.js";
import { httpLoad, pacedHttpLoad, type LoadResult } from "./support/http-load.js";
import { describeMachine, formatStamp, loadAverage, packageVersion, type Machine } from "./support/machine.js";
import { majorOf, nodeLine, type NodeLine } from "./support/node-line.js";
import { ADMIN_URL, createScratchDatabase, pgUser, query, unreachable } from "./support/postgres.js";
import { cpuTimeOf, memoryOf, startBenchServer, startKeygate, type ServerProcess } from "./support/process.js";
import { streamLoad, unaryLoad } from "./support/rpc-load.js";
import { count, mb, median, ms, rps, summarize, type Summary } from "./support/stats.js";
import { formatMarkdown } from "./support/table.js";

// ---------------------------------------------------------------- settings

const argv = process.argv.slice(2);
const QUICK = argv.includes("--quick");
const optionValue = (name: string) => {
  const at = argv.indexOf(name);
  if (at === -1) return undefined;
  const value = argv[at + 1];
  if (value === undefined || value.startsWith("--")) throw new Error(`${name} needs a value`);
  return value;
};
const JSON_FILE = optionValue("--json");
const PROFILE_DIR = optionValue("--profile");
/** --only a,c: just these rows (letters a–f); every row by default. */
const ONLY = optionValue("--only")?.split(",").map((part) => part.trim());
const want = (row: string) => ONLY === undefined || ONLY.includes(row);
/** The Node line keygate also runs on in rows a–c (n), beside the bench's own; "off" for none. */
const COMPARE_NODE = optionValue("--node") ?? "24";
if (COMPARE_NODE !== "off" && !/^\d+$/.test(COMPARE_NODE)) throw new Error(`--node takes a major version (e.g. 24) or off, not ${COMPARE_NODE}`);
const WRITE_DOCS = writesDocs(argv);

const ROUNDS = QUICK ? 2 : 5;
const ROUND_MS = QUICK ? 300 : 3_000;
const WARMUP_MS = QUICK ? 200 : 1_500;

const SHIM_CONNECTIONS = 50;
const RPC_CONCURRENCY = 50;
const STREAM_CLIENTS = 8;
const STREAM_WINDOW = 32;
const COLD_CONNECTIONS = 16;
const COLD_KEYS = QUICK ? 2_000 : 20_000;
/** The offered load of the second cold-key measure. */
const COLD_RATE = 500;
const MEMORY_ROWS = QUICK ? 20_000 : 1_000_000;
const MEMORY_USED = QUICK ? 5_000 : 100_000;
const DEFAULT_CACHE_SIZE = 100_000;
const SMALL_CACHE_SIZE = QUICK ? 1_000 : 10_000;
const START_RUNS = QUICK ? 1 : 5;
const NEW_DIR_RUNS = QUICK ? 1 : 2;

const TARGETS = {
  shimRatio: 0.5,
  shimP99Ms: 5,
  rpcRatio: 0.9,
  streamRatio: 5,
  coldP99Ms: 2,
  startMs: 1_500,
};

/** The request every warm-key measure sends: a reader listing sandboxes (allowed by the default policy). */
const PATH = "/sandboxes";
const METHOD = "GET";

// ---------------------------------------------------------------- results

type Unit = "req/s" | "ms" | "µs" | "bytes";

interface Figure {
  label: string;
  unit: Unit;
  summary: Summary;
}

interface Row {
  id: string;
  /** "node": a row of the Node-line table (n), figure on the other line, baseline on the bench's. */
  group?: "node";
  measure: string;
  value?: Figure;
  baseline?: Figure;
  /** value / baseline, medians (baseline / value for an `inverse` row, a cost). */
  ratio?: number;
  inverse?: boolean;
  target?: string;
  verdict?: "met" | "missed";
  /** Why there is no figure ("skipped: …", "not available: …", "error: …"), or a detail worth a line. */
  note?: string;
  /** Every other figure taken with this row (p50, p99, req/s of both sides), for the JSON. */
  detail?: Record<string, unknown>;
}

const rows: Row[] = [];

function formatValue(unit: Unit, value: number): string {
  switch (unit) {
    case "req/s":
      return rps(value);
    case "ms":
      return ms(value, value < 10 ? 2 : 0);
    case "µs":
      return `${value.toFixed(value < 10 ? 1 : 0)} µs`;
    case "bytes":
      return mb(value);
  }
}

function formatFigure(figure: Figure | undefined): string {
  if (!figure) return "";
  const { median: mid, min, max, samples } = figure.summary;
  const spread = samples.length > 1 ? ` (${formatValue(figure.unit, min)} – ${formatValue(figure.unit, max)})` : "";
  return `${figure.label ? `${figure.label}: ` : ""}${formatValue(figure.unit, mid)}${spread}`;
}

function figure(label: string, unit: Unit, samples: readonly number[]): Figure {
  return { label, unit, summary: summarize(samples) };
}

/** A row whose median is checked against a bound (on the ratio, or on the value itself). */
function addRow(row: Omit<Row, "ratio" | "verdict">, check?: { on: "ratio" | "value"; atLeast?: number; atMost?: number }): void {
  const ratio = !row.value || !row.baseline ? undefined : row.inverse ? row.baseline.summary.median / row.value.summary.median : row.value.summary.median / row.baseline.summary.median;
  let verdict: Row["verdict"];
  if (check) {
    const subject = check.on === "ratio" ? ratio : row.value?.summary.median;
    if (subject !== undefined && !Number.isNaN(subject)) {
      const ok = (check.atLeast === undefined || subject >= check.atLeast) && (check.atMost === undefined || subject <= check.atMost);
      verdict = ok ? "met" : "missed";
    }
  }
  rows.push({ ...row, ...(ratio !== undefined && { ratio }), ...(verdict && { verdict }) });
  const last = rows[rows.length - 1]!;
  console.log(`  ${last.id}. ${last.measure}: ${last.note && !last.value ? last.note : formatFigure(last.value)}${last.baseline ? ` vs ${formatFigure(last.baseline)}` : ""}${ratio !== undefined ? `, ${ratio.toFixed(2)}×` : ""}${verdict ? ` [${verdict}]` : ""}`);
}

function skipRows(ids: { id: string; measure: string; target?: string }[], note: string): void {
  for (const row of ids) addRow({ ...row, note });
}

// ---------------------------------------------------------------- rounds

interface Case {
  name: string;
  /** The server whose CPU time is sampled around each round. */
  server: ServerProcess;
  run: (durationMs: number) => Promise<LoadResult>;
}

/** One round, with the CPU time the server and this process (the load generator) spent meanwhile. */
async function runCase(c: Case, durationMs: number): Promise<LoadResult> {
  const serverBefore = await cpuTimeOf(c.server.pid);
  const clientBefore = process.cpuUsage();
  const result = await c.run(durationMs);
  const client = process.cpuUsage(clientBefore);
  const serverCpuMs = (await cpuTimeOf(c.server.pid)) - serverBefore;
  return { ...result, serverCpuMs, clientCpuMs: (client.user + client.system) / 1000 };
}

/**
 * Each case once for WARMUP_MS (JIT, connections, caches), then ROUNDS
 * rounds of ROUND_MS each, the order reversed every other round, so that
 * machine noise and any drift hit every case alike.
 */
async function alternate(cases: Case[]): Promise<LoadResult[][]> {
  for (const c of cases) await c.run(WARMUP_MS);
  const results = cases.map(() => [] as LoadResult[]);
  for (let round = 0; round < ROUNDS; round++) {
    const order = cases.map((_, i) => (round % 2 === 0 ? i : cases.length - 1 - i));
    for (const i of order) results[i]!.push(await runCase(cases[i]!, ROUND_MS));
  }
  return results;
}

const pick = (results: LoadResult[], field: "rps" | "p50" | "p99") => results.map((r) => r[field]);
/** The server's CPU time per request answered, µs, per round. */
const serverCpuPerRequest = (results: LoadResult[]) => results.map((r) => ((r.serverCpuMs ?? NaN) * 1000) / r.requests);
/** How busy the server was: CPU time / wall time (1 = one core flat out), per round. */
const serverBusy = (results: LoadResult[]) => results.map((r) => (r.serverCpuMs ?? NaN) / (r.seconds * 1000));
const clientCpuPerRequest = (results: LoadResult[]) => results.map((r) => ((r.clientCpuMs ?? NaN) * 1000) / r.requests);

/** Medians of every figure of a case, for the JSON detail. */
const digest = (results: LoadResult[]) => ({
  rps: median(pick(results, "rps")),
  p50_ms: median(pick(results, "p50")),
  p99_ms: median(pick(results, "p99")),
  server_cpu_us_per_request: median(serverCpuPerRequest(results)),
  server_busy: median(serverBusy(results)),
  client_cpu_us_per_request: median(clientCpuPerRequest(results)),
  requests: results.reduce((sum, r) => sum + r.requests, 0),
});

const percent = (fraction: number) => `${Math.round(fraction * 100)} %`;

/**
 * The server's CPU time per request against the baseline server's: the
 * capacity ratio (baseline ÷ value: 0.5× = half as many requests per CPU
 * second), which does not depend on whether the load generator kept the
 * servers busy. The note says how busy each was and what the generator
 * spent per request.
 */
function addCpuRow(id: string, measure: string, results: LoadResult[], baselineLabel: string, baseline: LoadResult[], atLeast: number): void {
  addRow(
    {
      id,
      measure: `${measure}: server CPU per request (ratio = capacity)`,
      value: figure("", "µs", serverCpuPerRequest(results)),
      baseline: figure(baselineLabel, "µs", serverCpuPerRequest(baseline)),
      target: `≥ ${atLeast}×`,
      inverse: true,
      note: `server busy ${percent(median(serverBusy(results)))} of a core (${baselineLabel} ${percent(median(serverBusy(baseline)))}); load generator ${median(clientCpuPerRequest(results)).toFixed(0)} µs CPU per request (${baselineLabel} ${median(clientCpuPerRequest(baseline)).toFixed(0)} µs)`,
    },
    { on: "ratio", atLeast },
  );
}

/** keygate (and, in row a, the bare node:http reference) on the other Node line. */
interface OtherLine {
  version: string;
  keygate: ServerProcess;
  bare?: ServerProcess;
}

/**
 * The same server on the other Node line against the bench's Node, from the
 * same alternating rounds: req/s, server CPU per request and, with `p99`,
 * the p99. Ratio > 1× = the other line is better (CPU and p99 are costs).
 */
function addNodeRows(id: string, measure: string, other: LoadResult[], mine: LoadResult[], version: string, p99 = false): void {
  const row = { group: "node" as const, target: "report" };
  const detail = { [`node${majorOf(version)}`]: digest(other), [`node${majorOf(process.version)}`]: digest(mine) };
  addRow({ ...row, id, measure: `${measure}: req/s`, value: figure(version, "req/s", pick(other, "rps")), baseline: figure(process.version, "req/s", pick(mine, "rps")), detail });
  addRow({
    ...row,
    id: `${id}c`,
    measure: `${measure}: server CPU per request`,
    value: figure(version, "µs", serverCpuPerRequest(other)),
    baseline: figure(process.version, "µs", serverCpuPerRequest(mine)),
    inverse: true,
    note: `server busy ${percent(median(serverBusy(other)))} of a core on ${version}, ${percent(median(serverBusy(mine)))} on ${process.version}`,
  });
  if (p99) {
    addRow({ ...row, id: `${id}p`, measure: `${measure}: p99`, value: figure(version, "ms", pick(other, "p99")), baseline: figure(process.version, "ms", pick(mine, "p99")), inverse: true });
  }
}

// ---------------------------------------------------------------- clients

function verifyHeaders(key: string): Record<string, string> {
  return { authorization: `Bearer ${key}`, "x-request-path": PATH, "x-request-method": METHOD };
}

/** The callback under autocannon; with `keys`, each request takes the next key in turn (the setup cost is the same for one key or many). */
function shimCase(name: string, server: ServerProcess, keys: readonly BenchKey[], connections: number, overallRate?: number): Case {
  let next = 0;
  const options = {
    url: `${server.url}/verify`,
    connections,
    nextHeaders: () => ({ authorization: `Bearer ${keys[next++ % keys.length]!.key}` }),
    headers: { "x-request-path": PATH, "x-request-method": METHOD },
  };
  return {
    name,
    server,
    run: (durationMs) => (overallRate === undefined ? httpLoad({ ...options, durationMs }) : pacedHttpLoad({ ...options, durationMs, rate: overallRate })),
  };
}

type TransportKind = "connect-http1" | "connect-h2c" | "grpc";
const TRANSPORT_LABEL: Record<TransportKind, string> = { "connect-http1": "Connect HTTP/1.1", "connect-h2c": "Connect h2c", grpc: "gRPC" };

interface OpenTransport {
  transport: Transport;
  close(): void;
}

/** One keep-alive agent with `sockets` sockets, or one HTTP/2 session. */
function openTransport(kind: TransportKind, baseUrl: string, sockets: number): OpenTransport {
  if (kind === "connect-http1") {
    const agent = new http.Agent({ keepAlive: true, maxSockets: sockets });
    return { transport: createConnectTransport({ baseUrl, httpVersion: "1.1", nodeOptions: { agent } }), close: () => agent.destroy() };
  }
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = kind === "grpc" ? createGrpcTransport({ baseUrl, sessionManager }) : createConnectTransport({ baseUrl, httpVersion: "2", sessionManager });
  return { transport, close: () => sessionManager.abort() };
}

function authorizeRequest(key: string) {
  return create(AuthorizeRequestSchema, { credential: key, path: PATH, method: METHOD, namespace: "", org: "" });
}

function expectAllowed(response: AuthorizeResponse | undefined): void {
  if (!response?.allowed) throw new Error(`Authorize did not allow the warm key: ${response ? `${response.reason} ${response.message}` : "no response"}`);
}

/** Unary Authorize from `clients` clients (one transport each), `perClient` calls in flight on each. */
function unaryCase(name: string, server: ServerProcess, transports: OpenTransport[], key: string, perClient: number): Case {
  const clients = transports.map((t) => createClient(AuthorizeService, t.transport));
  const request = authorizeRequest(key);
  return {
    name,
    server,
    run: (durationMs) =>
      unaryLoad(async (caller) => expectAllowed(await clients[caller % clients.length]!.authorize(request)), { concurrency: clients.length * perClient, durationMs }),
  };
}

/** AuthorizeStream as the generated client would have it; typed here so the bench compiles whether or not gen/ has it yet. */
interface StreamRequestInit {
  id: bigint;
  request: MessageInitShape<typeof AuthorizeRequestSchema>;
}
interface StreamResponse {
  id: bigint;
  response?: AuthorizeResponse;
}
interface StreamingClient {
  authorizeStream(input: AsyncIterable<StreamRequestInit>, options?: { signal?: AbortSignal }): AsyncIterable<StreamResponse>;
}

function streamMethod(): DescMethod | undefined {
  return AuthorizeService.methods.find((m) => m.localName === "authorizeStream" && m.methodKind === "bidi_streaming");
}

function streamCase(name: string, server: ServerProcess, transports: OpenTransport[], key: string, window: number): Case {
  const clients = transports.map((t) => createClient(AuthorizeService, t.transport) as unknown as StreamingClient);
  const request = authorizeRequest(key);
  return {
    name,
    server,
    run: (durationMs) =>
      streamLoad<StreamRequestInit, StreamResponse>(
        {
          open: (input, stream) => clients[stream]!.authorizeStream(input),
          request: (id) => ({ id: BigInt(id), request }),
          idOf: (response) => Number(response.id),
          check: (response) => expectAllowed(response.response),
        },
        { streams: clients.length, window, durationMs },
      ),
  };
}

/** Why AuthorizeStream cannot be measured, or undefined when one request on one stream is answered. */
async function streamUnavailable(server: ServerProcess, key: string): Promise<string | undefined> {
  if (!streamMethod()) return "AuthorizeStream is not in gen/keygate/v1/authorize_pb.ts";
  const open = openTransport("grpc", server.url, 1);
  let timer: NodeJS.Timeout | undefined;
  try {
    const probe = streamCase("probe", server, [open], key, 1);
    const silent = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("no answer on AuthorizeStream in 10 s")), 10_000)));
    await Promise.race([probe.run(0), silent]);
    return undefined;
  } catch (error) {
    const connectError = ConnectError.from(error);
    if (connectError.code === Code.Unimplemented) return "the server answers AuthorizeStream with UNIMPLEMENTED";
    throw error;
  } finally {
    clearTimeout(timer);
    open.close();
  }
}

// ---------------------------------------------------------------- the rows

async function measureShim(bare: ServerProcess, keygate: ServerProcess, warm: BenchKey, other: OtherLine | undefined): Promise<void> {
  console.log(`a. Cube callback vs bare node:http, ${SHIM_CONNECTIONS} connections${other ? `; both also on Node ${other.version}` : ""}`);
  const verifyCase = (name: string, server: ServerProcess): Case => ({
    name,
    server,
    run: (durationMs) => httpLoad({ url: `${server.url}/verify`, connections: SHIM_CONNECTIONS, durationMs, headers: verifyHeaders(warm.key) }),
  });
  const cases = [verifyCase("bare", bare), verifyCase("shim", keygate)];
  if (other) cases.push(verifyCase("shim, other Node", other.keygate), ...(other.bare ? [verifyCase("bare, other Node", other.bare)] : []));
  const [bareResults, shimResults, otherShim, otherBare] = await alternate(cases);
  if (other && otherShim) addNodeRows("na1", `Cube callback, warm key, ${SHIM_CONNECTIONS} connections`, otherShim, shimResults!, other.version, true);
  if (other && otherBare) addNodeRows("na0", `bare node:http (reference: Node alone, not keygate), ${SHIM_CONNECTIONS} connections`, otherBare, bareResults!, other.version);
  const detail = { shim: digest(shimResults!), bare: digest(bareResults!) };
  addRow(
    {
      id: "a1",
      measure: `Cube callback, warm key, ${SHIM_CONNECTIONS} connections: req/s`,
      value: figure("", "req/s", pick(shimResults!, "rps")),
      baseline: figure("bare node:http", "req/s", pick(bareResults!, "rps")),
      target: `≥ ${TARGETS.shimRatio}×`,
      detail,
    },
    { on: "ratio", atLeast: TARGETS.shimRatio },
  );
  addCpuRow("a1c", "Cube callback", shimResults!, "bare node:http", bareResults!, TARGETS.shimRatio);
  addRow(
    {
      id: "a2",
      measure: `Cube callback, warm key, ${SHIM_CONNECTIONS} connections: p99`,
      value: figure("", "ms", pick(shimResults!, "p99")),
      baseline: figure("bare node:http", "ms", pick(bareResults!, "p99")),
      target: `p99 ≤ ${TARGETS.shimP99Ms} ms`,
      detail,
    },
    { on: "value", atMost: TARGETS.shimP99Ms },
  );
}

async function measureRpc(keygate: ServerProcess, stub: ServerProcess, warm: BenchKey, other: OtherLine | undefined): Promise<void> {
  console.log(`b. Authorize vs the same server stack with a constant-allow core, ${RPC_CONCURRENCY} calls in flight${other ? `; keygate also on Node ${other.version}` : ""}`);
  for (const [i, kind] of (["connect-http1", "connect-h2c", "grpc"] as const).entries()) {
    const real = openTransport(kind, keygate.url, RPC_CONCURRENCY);
    const empty = openTransport(kind, stub.url, RPC_CONCURRENCY);
    const otherReal = other && openTransport(kind, other.keygate.url, RPC_CONCURRENCY);
    try {
      const cases = [unaryCase("keygate", keygate, [real], warm.key, RPC_CONCURRENCY), unaryCase("stub", stub, [empty], warm.key, RPC_CONCURRENCY)];
      if (other && otherReal) cases.push(unaryCase("keygate, other Node", other.keygate, [otherReal], warm.key, RPC_CONCURRENCY));
      const [realResults, stubResults, otherResults] = await alternate(cases);
      if (other && otherResults) addNodeRows(`nb${i + 1}`, `Authorize, ${TRANSPORT_LABEL[kind]}, warm key, ${RPC_CONCURRENCY} in flight`, otherResults, realResults!, other.version);
      addRow(
        {
          id: `b${i + 1}`,
          measure: `Authorize, ${TRANSPORT_LABEL[kind]}, warm key, ${RPC_CONCURRENCY} in flight: req/s`,
          value: figure("", "req/s", pick(realResults!, "rps")),
          baseline: figure("constant-allow core", "req/s", pick(stubResults!, "rps")),
          target: `≥ ${TARGETS.rpcRatio}×`,
          detail: { keygate: digest(realResults!), stub: digest(stubResults!) },
        },
        { on: "ratio", atLeast: TARGETS.rpcRatio },
      );
      addCpuRow(`b${i + 1}c`, `Authorize, ${TRANSPORT_LABEL[kind]}`, realResults!, "constant-allow core", stubResults!, TARGETS.rpcRatio);
    } finally {
      real.close();
      empty.close();
      otherReal?.close();
    }
  }
}

async function measureStream(keygate: ServerProcess, warm: BenchKey, other: OtherLine | undefined): Promise<void> {
  console.log(`c. AuthorizeStream vs unary Authorize (gRPC), ${STREAM_CLIENTS} clients`);
  const measure = `AuthorizeStream, gRPC, ${STREAM_CLIENTS} clients × ${STREAM_WINDOW} in flight (vs unary, ${STREAM_CLIENTS} clients): req/s`;
  const target = `≥ ${TARGETS.streamRatio}×`;
  let why: string | undefined;
  try {
    why = await streamUnavailable(keygate, warm.key);
  } catch (error) {
    // The RPC is new and being built: a failing stream is this row's finding, not a broken bench.
    addRow({ id: "c", measure, target, note: `error: ${(error as Error).message}` });
    return;
  }
  if (why) {
    addRow({ id: "c", measure, target, note: `not available: ${why}` });
    return;
  }
  const unaryTransports = Array.from({ length: STREAM_CLIENTS }, () => openTransport("grpc", keygate.url, 1));
  const streamTransports = Array.from({ length: STREAM_CLIENTS }, () => openTransport("grpc", keygate.url, 1));
  const otherTransports = other ? Array.from({ length: STREAM_CLIENTS }, () => openTransport("grpc", other.keygate.url, 1)) : [];
  try {
    const cases = [streamCase("stream", keygate, streamTransports, warm.key, STREAM_WINDOW), unaryCase("unary", keygate, unaryTransports, warm.key, 1)];
    if (other) cases.push(streamCase("stream, other Node", other.keygate, otherTransports, warm.key, STREAM_WINDOW));
    const [streamResults, unaryResults, otherResults] = await alternate(cases);
    if (other && otherResults) addNodeRows("nc", `AuthorizeStream, gRPC, ${STREAM_CLIENTS} clients × ${STREAM_WINDOW} in flight`, otherResults, streamResults!, other.version);
    addRow(
      {
        id: "c",
        measure,
        value: figure("", "req/s", pick(streamResults!, "rps")),
        baseline: figure("unary", "req/s", pick(unaryResults!, "rps")),
        target,
        detail: { stream: digest(streamResults!), unary: digest(unaryResults!) },
      },
      { on: "ratio", atLeast: TARGETS.streamRatio },
    );
    addCpuRow("cc", "AuthorizeStream", streamResults!, "unary", unaryResults!, TARGETS.streamRatio);
  } catch (error) {
    addRow({ id: "c", measure, target, note: `error: ${(error as Error).message}` });
  } finally {
    for (const t of [...unaryTransports, ...streamTransports, ...otherTransports]) t.close();
  }
}

/**
 * The callback with every request a cache miss, against the warm key, both
 * at COLD_CONNECTIONS connections: first as fast as answers come (a
 * saturated server: latency is mostly queueing), then at an offered
 * COLD_RATE req/s (latency is mostly the lookup itself).
 */
async function measureCold(id: string, database: string, cold: ServerProcess, warmServer: ServerProcess, coldKeys: readonly BenchKey[], warm: BenchKey, target: number | undefined): Promise<void> {
  for (const rate of [undefined, COLD_RATE]) {
    const load = rate === undefined ? `${COLD_CONNECTIONS} connections, closed loop` : `${COLD_CONNECTIONS} connections at ${count(rate)} req/s`;
    console.log(`${id}. cold keys on ${database}, ${load}`);
    const [coldResults, warmResults] = await alternate([
      shimCase("cold", cold, coldKeys, COLD_CONNECTIONS, rate),
      shimCase("warm", warmServer, [warm], COLD_CONNECTIONS, rate),
    ]);
    addRow(
      {
        id: rate === undefined ? id : `${id}b`,
        measure: `Cold key, ${database}, ${load}: p99`,
        value: figure("", "ms", pick(coldResults!, "p99")),
        baseline: figure("warm key", "ms", pick(warmResults!, "p99")),
        target: target === undefined ? "report" : `p99 ≤ ${target} ms`,
        note: `cache off, ${count(coldKeys.length)} distinct keys; p50 ${ms(median(pick(coldResults!, "p50")), 2)} (warm ${ms(median(pick(warmResults!, "p50")), 2)}); ${rps(median(pick(coldResults!, "rps")))} (warm ${rps(median(pick(warmResults!, "rps")))})`,
        detail: { cold: digest(coldResults!), warm: digest(warmResults!) },
      },
      target === undefined ? undefined : { on: "value", atMost: target },
    );
  }
}

/** `keygate serve` started `runs` times (stopped in between): spawn → "keygate listening". */
async function measureStart(env: Record<string, string>, cwd: string, runs: number, freshDir?: () => Promise<string>): Promise<{ ready: number[]; startup: number[]; rss: number[] }> {
  const result = { ready: [] as number[], startup: [] as number[], rss: [] as number[] };
  for (let i = 0; i < runs; i++) {
    const runEnv = freshDir ? { ...env, KEYGATE_DATA_DIR: await freshDir() } : env;
    const server = await startKeygate(runEnv, cwd, { timeoutMs: 60_000 });
    try {
      result.ready.push(server.readyMs);
      if (server.startupMs !== undefined) result.startup.push(server.startupMs);
      result.rss.push((await memoryOf(server.pid)).rss);
    } finally {
      // keygate logs "listening" before it handles SIGTERM: a SIGTERM right after that line can
      // kill it outright (no cleanup; lock and control socket left behind). Give it a moment.
      await new Promise((resolve) => setTimeout(resolve, 250));
      await server.stop();
      if (server.child.signalCode !== null) console.log(`note: keygate serve was killed by ${server.child.signalCode} instead of stopping`);
    }
  }
  return result;
}

function addStartRow(id: string, measure: string, start: { ready: number[]; startup: number[]; rss: number[] }, target?: number): void {
  addRow(
    {
      id,
      measure,
      value: figure("", "ms", start.ready),
      target: target === undefined ? "report" : `< ${(target / 1000).toFixed(1)} s`,
      note: `in-process startup_ms ${median(start.startup).toFixed(0)} ms; RSS when listening ${mb(median(start.rss))}`,
      detail: { runs: start.ready.length, startup_ms: start.startup, rss_bytes: start.rss },
    },
    target === undefined ? undefined : { on: "value", atMost: target },
  );
}

interface MemorySnapshot {
  /** VmRSS as found, garbage included. */
  rss: number;
  /** VmHWM: the most it has held. */
  peak: number;
  /** After a full garbage collection: what the process keeps. */
  rssAfterGc: number;
  heapAfterGc: number;
}

/** /proc/PID/status, then a full GC in the server (SIGUSR2, bench/servers/keygate-with-gc.ts) and its own figures. */
async function memorySnapshot(server: ServerProcess): Promise<MemorySnapshot> {
  const found = await memoryOf(server.pid);
  const logged = server.waitFor(/"msg":"bench memory","rss":(\d+),"heap_used":(\d+)/);
  server.child.kill("SIGUSR2");
  const after = await logged;
  return { rss: found.rss, peak: found.peak, rssAfterGc: Number(after[1]), heapAfterGc: Number(after[2]) };
}

/**
 * Memory of three servers over one Postgres database as it fills up and as
 * keys are used: the default cache bound, a small one, and no cache at all
 * (TTL 0s: what grows there is not the cache). Each figure is taken after a
 * full GC, so it is what the server keeps rather than garbage it has not
 * collected yet; usage counts are flushed every 2 s (not 10 s) and the
 * figure is taken after a flush, so they are not counted either.
 */
async function measureMemory(cwd: string): Promise<void> {
  const database = await createScratchDatabase(ADMIN_URL);
  const servers: ServerProcess[] = [];
  try {
    const configs: { name: string; label: string; env: Record<string, string> }[] = [
      { name: "default", label: `cache bound ${count(DEFAULT_CACHE_SIZE)} (default)`, env: { KEYGATE_KEY_CACHE_TTL: "10m", KEYGATE_KEY_CACHE_SIZE: String(DEFAULT_CACHE_SIZE) } },
      { name: "small", label: `cache bound ${count(SMALL_CACHE_SIZE)}`, env: { KEYGATE_KEY_CACHE_TTL: "10m", KEYGATE_KEY_CACHE_SIZE: String(SMALL_CACHE_SIZE) } },
      { name: "off", label: "cache off (TTL 0s)", env: { KEYGATE_KEY_CACHE_TTL: "0s" } },
    ];
    // One at a time: the first start migrates the empty database, the others find the schema in place.
    for (const config of configs) {
      const env = { DATABASE_URL: database.url, KEYGATE_USAGE_FLUSH_INTERVAL: "2s", ...config.env };
      servers.push(await startBenchServer("keygate-with-gc.js", env, cwd, { nodeArgs: ["--expose-gc"] }));
    }
    const sample = () => Promise.all(servers.map(memorySnapshot));
    const atStart = await sample();

    const used = generateBenchKeys(MEMORY_USED);
    const inserted = performance.now();
    await withDatabase({ kind: "postgres", url: database.url, defaultUser: pgUser(database.url), poolSize: 1 }, async (db) => {
      await insertFiller(db, MEMORY_ROWS - MEMORY_USED);
      await insertKeys(db, used);
    });
    const insertMs = performance.now() - inserted;
    const total = Number((await query<{ rows: string }>(database.url, "select count(*) as rows from api_keys"))[0]?.rows);
    const afterRows = await sample();

    /** Each used key once through the callback, then past the next usage flush. */
    const useAll = async (server: ServerProcess) => {
      let next = 0;
      const result = await httpLoad({
        url: `${server.url}/verify`,
        connections: SHIM_CONNECTIONS,
        amount: used.length,
        headers: { "x-request-path": PATH, "x-request-method": METHOD },
        nextHeaders: () => ({ authorization: `Bearer ${used[next++ % used.length]!.key}` }),
      });
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      return { result, memory: await memorySnapshot(server) };
    };
    const afterUse: Awaited<ReturnType<typeof useAll>>[] = [];
    for (const server of servers) afterUse.push(await useAll(server));

    const rowsLabel = count(total);
    const detail = {
      rows: total,
      insert_ms: Math.round(insertMs),
      used_keys: used.length,
      servers: configs.map((config, i) => ({ name: config.name, env: config.env, start: atStart[i], after_rows: afterRows[i], after_use: afterUse[i]!.memory, use_rps: afterUse[i]!.result.rps })),
    };
    const heap = (snapshot: MemorySnapshot) => `heap ${mb(snapshot.heapAfterGc)}`;
    addRow({
      id: "e1",
      measure: "RSS after GC at start (Postgres, empty database)",
      value: figure("", "bytes", [atStart[0]!.rssAfterGc]),
      target: "report",
      note: `${heap(atStart[0]!)}; ${mb(atStart[0]!.rss)} before GC`,
      detail,
    });
    addRow({
      id: "e2",
      measure: `RSS after GC, ${rowsLabel} keys in Postgres, none used yet`,
      value: figure("", "bytes", [afterRows[0]!.rssAfterGc]),
      baseline: figure("at start", "bytes", [atStart[0]!.rssAfterGc]),
      target: "report",
      note: `${heap(afterRows[0]!)}; ${rowsLabel} rows inserted in ${(insertMs / 1000).toFixed(1)} s`,
    });
    configs.forEach((config, i) => {
      const { memory, result } = afterUse[i]!;
      const before = afterRows[i]!;
      addRow({
        id: `e${i + 3}`,
        measure: `RSS after GC, ${count(used.length)} distinct keys used, ${config.label}`,
        value: figure("", "bytes", [memory.rssAfterGc]),
        ...(i > 0 && { baseline: figure(configs[0]!.label.replace(/ \(default\)$/, ""), "bytes", [afterUse[0]!.memory.rssAfterGc]) }),
        target: "report",
        note:
          `${heap(memory)} (${heap(before)} before use); RSS +${mb(memory.rssAfterGc - before.rssAfterGc)}, ${mb(memory.rss)} before GC, peak ${mb(memory.peak)}; ` +
          `${i === 2 ? "lookups" : "cold lookups"} at ${rps(result.rps)}`,
      });
    });
  } catch (error) {
    for (const server of servers) console.error(`--- server (port ${server.port}) log tail:\n${server.output()}`);
    throw error;
  } finally {
    await Promise.allSettled(servers.map((server) => server.stop()));
    await database.drop();
  }
}

// ---------------------------------------------------------------- main

/** The Postgres server's version at ADMIN_URL, or undefined when none answers. */
async function postgresVersion(): Promise<string | undefined> {
  try {
    return (await query<{ server_version: string }>(ADMIN_URL, "show server_version"))[0]?.server_version;
  } catch {
    return undefined;
  }
}

const TABLE_HEADER = ["row", "measure", "figure: median (min – max)", "baseline: median (min – max)", "ratio", "target", "result"];

function mainTable(list: readonly Row[]): string {
  return formatMarkdown(
    [
      TABLE_HEADER,
      ...list.map((row) => [
        row.id,
        row.measure,
        row.value ? formatFigure(row.value) : (row.note ?? ""),
        formatFigure(row.baseline),
        row.ratio === undefined ? "" : `${row.ratio.toFixed(2)}×`,
        row.target ?? "",
        row.verdict ?? (row.value ? "" : "—"),
      ]),
    ],
    [false, false, true, true, true, false, false],
  );
}

/** The Node-line table: the versions head the columns, so the cells carry no labels. */
function nodeTable(list: readonly Row[], version: string | undefined): string {
  const major = version ? majorOf(version) : COMPARE_NODE;
  const bare = (f: Figure | undefined) => formatFigure(f && { ...f, label: "" });
  return formatMarkdown(
    [
      ["row", "measure", `Node ${version ?? COMPARE_NODE}: median (min – max)`, `Node ${process.version}: median (min – max)`, `ratio (> 1× = Node ${major} better)`],
      ...list.map((row) => [row.id, row.measure, row.value ? bare(row.value) : (row.note ?? ""), bare(row.baseline), row.ratio === undefined ? "" : `${row.ratio.toFixed(2)}×`]),
    ],
    [false, false, true, true, true],
  );
}

const noteLines = (list: readonly Row[]) => list.filter((row) => row.value && row.note).map((row) => `${row.id}: ${row.note}`);

async function main(): Promise<void> {
  const started = performance.now();
  const env: Machine = describeMachine();
  const postgres = want("d") || want("e") || want("f") ? await postgresVersion() : undefined;
  let pglite: string | undefined;

  // The other Node line, for rows n: fetched (or found in the cache) before anything is timed.
  const nodeRows = (want("a") || want("b") || want("c")) && COMPARE_NODE !== "off";
  const compare = nodeRows ? await nodeLine(COMPARE_NODE) : undefined;
  const otherNode: NodeLine | undefined = compare?.ok ? compare.line : undefined;
  const otherWhy = compare && !compare.ok ? compare.why : undefined;

  console.log(
    `hot-path bench${QUICK ? " (--quick: small counts, short rounds; figures not meaningful)" : ""}: ${env.cpus} × ${env.cpu_model}, ` +
      `Node ${env.node} (bench, load generator, servers)${otherNode ? `, keygate also on Node ${otherNode.version} (rows n)` : ""}; ` +
      `${ROUNDS} alternating rounds of ${ROUND_MS} ms after a ${WARMUP_MS} ms warm-up; load average ${env.load_average_at_start}`,
  );
  if (otherWhy) console.log(`note: Node ${COMPARE_NODE} not available, so keygate runs on Node ${process.version} only: ${otherWhy}`);
  const dir = await mkdtemp(join(os.tmpdir(), "keygate-hot-bench-"));
  const servers: ServerProcess[] = [];
  const serve = async (start: Promise<ServerProcess>) => {
    const server = await start;
    servers.push(server);
    return server;
  };
  const stop = async (...stopping: ServerProcess[]) => {
    await Promise.all(stopping.map((server) => server.stop()));
    for (const server of stopping) servers.splice(servers.indexOf(server), 1);
  };
  const profile = PROFILE_DIR ? { nodeArgs: ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`] } : {};
  try {
    // f (new data dir) and the template every PGlite server starts from: keygate's own initdb and migrations.
    let fresh = 0;
    const freshDir = async () => join(dir, `fresh-${fresh++}`);
    const newDir = await measureStart({}, dir, NEW_DIR_RUNS, freshDir);
    const template = join(dir, "fresh-0");
    const leftovers = (await readdir(template)).filter((name) => name !== "pgdata");
    if (leftovers.length > 0) console.log(`note: keygate serve left ${leftovers.join(", ")} in its data dir after SIGTERM`);
    const warm = generateBenchKeys(1)[0]!;
    const coldKeys = generateBenchKeys(COLD_KEYS);
    await withDatabase({ kind: "pglite", dataDir: template }, async (db) => {
      pglite = (await sql<{ server_version: string }>`show server_version`.execute(db)).rows[0]?.server_version;
      await insertKeys(db, [warm], "bench-warm");
      await insertKeys(db, coldKeys, "bench-cold");
    });
    const copy = async (name: string) => {
      const to = join(dir, name);
      // Only the database: never a lock or control socket a server may have left behind.
      await cp(template, to, { recursive: true, filter: async (from) => !(await lstat(from)).isSocket() && basename(from) !== "keygate.lock" });
      return to;
    };
    const [keygateDir, stubDir, coldDir, otherDir] = await Promise.all([copy("keygate"), copy("stub"), copy("cold"), otherNode ? copy("keygate-other-node") : undefined]);

    if (want("a") || want("b") || want("c") || want("d")) {
      const onOther = otherNode && (want("a") || want("b") || want("c")) ? { ...profile, node: otherNode.node } : undefined;
      const [bare, keygate, stub, otherKeygate, otherBare] = await Promise.all([
        want("a") ? serve(startBenchServer("bare-http-server.js", {}, dir)) : undefined,
        serve(startKeygate({ KEYGATE_DATA_DIR: keygateDir }, dir, profile)),
        want("b") ? serve(startBenchServer("stub-core-server.js", { KEYGATE_DATA_DIR: stubDir }, dir)) : undefined,
        onOther && otherDir ? serve(startKeygate({ KEYGATE_DATA_DIR: otherDir }, dir, onOther)) : undefined,
        onOther && want("a") ? serve(startBenchServer("bare-http-server.js", {}, dir, { node: onOther.node })) : undefined,
      ]);
      const other = otherNode && otherKeygate ? { version: otherNode.version, keygate: otherKeygate, ...(otherBare && { bare: otherBare }) } : undefined;
      if (bare) await measureShim(bare, keygate, warm, other);
      if (stub) await measureRpc(keygate, stub, warm, other);
      if (want("c")) await measureStream(keygate, warm, other);
      await stop(...[bare, stub, otherKeygate, otherBare].filter((server) => server !== undefined));
      if (want("d")) {
        const coldPglite = await serve(startKeygate({ KEYGATE_DATA_DIR: coldDir, KEYGATE_KEY_CACHE_TTL: "0s" }, dir));
        await measureCold("d2", "PGlite", coldPglite, keygate, coldKeys, warm, undefined);
        await stop(coldPglite);
      }
      await stop(keygate);
    }
    if (nodeRows && !otherNode) addRow({ id: "n", group: "node", measure: `keygate on Node ${COMPARE_NODE} beside Node ${process.version}`, note: `skipped: ${otherWhy}` });
    if (want("f")) addStartRow("f1", "Start, existing PGlite data dir (spawn → listening)", await measureStart({ KEYGATE_DATA_DIR: keygateDir }, dir, START_RUNS), TARGETS.startMs);

    const why = want("d") || want("e") || want("f") ? await unreachable(ADMIN_URL) : undefined;
    if (why) {
      const note = `skipped: no Postgres at ${ADMIN_URL} (${why}); set KEYGATE_BENCH_DATABASE_URL`;
      console.log(note);
      skipRows(
        [
          { id: "d1", measure: "Cold key, Postgres: p99", target: `p99 ≤ ${TARGETS.coldP99Ms} ms` },
          { id: "e", measure: "Memory with 1M keys in Postgres" },
          { id: "f2", measure: "Start, Postgres" },
        ].filter((row) => want(row.id[0]!)),
        note,
      );
    } else {
      if (want("d") || want("f")) {
        const database = await createScratchDatabase(ADMIN_URL);
        try {
          await withDatabase({ kind: "postgres", url: database.url, defaultUser: pgUser(database.url), poolSize: 1 }, async (db) => {
            await insertKeys(db, [warm], "bench-warm");
            await insertKeys(db, coldKeys, "bench-cold");
          });
          const pgEnv = { DATABASE_URL: database.url };
          if (want("d")) {
            const [coldPg, warmPg] = await Promise.all([
              serve(startKeygate({ ...pgEnv, KEYGATE_KEY_CACHE_TTL: "0s" }, dir, profile)),
              serve(startKeygate(pgEnv, dir)),
            ]);
            await measureCold("d1", "Postgres", coldPg, warmPg, coldKeys, warm, TARGETS.coldP99Ms);
            await stop(coldPg, warmPg);
          }
          if (want("f")) addStartRow("f2", "Start, Postgres, migrated database (spawn → listening)", await measureStart(pgEnv, dir, START_RUNS));
        } finally {
          await database.drop();
        }
      }
      if (want("e")) {
        console.log(`e. memory over Postgres: ${count(MEMORY_ROWS)} rows, ${count(MEMORY_USED)} keys used`);
        await measureMemory(dir);
      }
    }
    if (want("f")) addStartRow("f3", "Start, new PGlite data dir, initdb (reference)", newDir);
  } catch (error) {
    for (const server of servers) console.error(`--- server (port ${server.port}) log tail:\n${server.output()}`);
    throw error;
  } finally {
    await Promise.allSettled(servers.map((server) => server.stop()));
    await rm(dir, { recursive: true, force: true });
  }

  const order = [
    ...["a1", "a1c", "a2", "b1", "b1c", "b2", "b2c", "b3", "b3c", "c", "cc", "d1", "d1b", "d2", "d2b", "e", "e1", "e2", "e3", "e4", "e5", "f1", "f2", "f3"],
    ...["n", "na0", "na0c", "na1", "na1c", "na1p", "nb1", "nb1c", "nb2", "nb2c", "nb3", "nb3c", "nc", "ncc"],
  ];
  rows.sort((x, y) => order.indexOf(x.id) - order.indexOf(y.id));
  const mainRows = rows.filter((row) => row.group === undefined);
  const otherRows = rows.filter((row) => row.group === "node");
  const seconds = (performance.now() - started) / 1000;
  const loadAtEnd = loadAverage();
  const method =
    `${ROUNDS} alternating rounds of ${ROUND_MS} ms per figure; ratio = median / baseline median; result compares the median with the target` +
    `${QUICK ? " (--quick: not meaningful)" : ""}.`;
  const nodeMethod = `Same rounds, alternating with the rows above; the load generator and the baseline servers stay on Node ${process.version}; ratio = Node ${otherNode ? majorOf(otherNode.version) : COMPARE_NODE} ÷ Node ${majorOf(process.version)} for req/s, the inverse for costs (CPU, p99).`;
  console.log();
  console.log(mainTable(mainRows));
  for (const line of noteLines(mainRows)) console.log(line);
  if (otherRows.length > 0) {
    console.log();
    console.log(`keygate on Node ${otherNode?.version ?? COMPARE_NODE} beside Node ${process.version}:`);
    console.log();
    console.log(nodeTable(otherRows, otherNode?.version));
    for (const line of noteLines(otherRows)) console.log(line);
    console.log(nodeMethod);
  }
  console.log();
  console.log(`${method} Took ${seconds.toFixed(0)} s; load average ${env.load_average_at_start} at the start, ${loadAtEnd} at the end (the machine's other work shows in every figure).`);

  const nodes = [`${process.version} (bench, load generator, every server${otherNode ? " of the main table" : ""})`, ...(otherNode ? [`${otherNode.version} (the keygate servers of the Node table, from scripts/node.sh)`] : [])];
  const databases = [...(postgres ? [`Postgres ${postgres} (server)`] : []), ...(pglite ? [`PGlite ${packageVersion("@electric-sql/pglite") ?? "?"} (Postgres ${pglite})`] : [])];
  if (WRITE_DOCS) {
    const stamp = formatStamp({ command: "npm run bench", seconds, machine: env, loadAtEnd, nodes, databases });
    const notes = (list: readonly Row[]) => noteLines(list).map((line) => `- ${line}`).join("\n");
    await writeDocSection("hot-path", `${stamp}\n\n${mainTable(mainRows)}\n\n${notes(mainRows)}\n\n${method}`);
    const nodeBody = otherRows.length > 0 ? `${nodeTable(otherRows, otherNode?.version)}\n\n${notes(otherRows)}\n\n${nodeMethod}` : `Not measured in this run (--node ${COMPARE_NODE}).`;
    await writeDocSection("node", `${stamp}\n\n${nodeBody}`);
  }
  if (JSON_FILE) {
    const report = {
      bench: "hot-path",
      quick: QUICK,
      date: new Date().toISOString(),
      machine: { ...env, load_average_at_end: loadAtEnd, postgres: postgres ?? null, pglite: pglite ?? null, node_compared: otherNode?.version ?? null, ...(otherWhy && { node_compared_unavailable: otherWhy }) },
      settings: { rounds: ROUNDS, round_ms: ROUND_MS, warmup_ms: WARMUP_MS, shim_connections: SHIM_CONNECTIONS, rpc_concurrency: RPC_CONCURRENCY, stream_clients: STREAM_CLIENTS, stream_window: STREAM_WINDOW, cold_connections: COLD_CONNECTIONS, cold_rate: COLD_RATE, cold_keys: COLD_KEYS, memory_rows: MEMORY_ROWS, memory_used: MEMORY_USED, small_cache_size: SMALL_CACHE_SIZE, start_runs: START_RUNS, org: BENCH_ORG, compare_node: COMPARE_NODE },
      rows,
    };
    // Six significant digits are plenty for figures that vary by percents between runs.
    const rounded = (_: string, value: unknown) => (typeof value === "number" && !Number.isInteger(value) ? Number(value.toPrecision(6)) : value);
    await writeFile(JSON_FILE, JSON.stringify(report, rounded, 2) + "\n");
    console.log(`JSON written to ${JSON_FILE}`);
  }
}

await main();
