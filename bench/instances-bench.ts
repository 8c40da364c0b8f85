/**
 * Multi-instance benchmark: several `keygate serve` processes over one
 * Postgres database and one private redis-server, as in production.
 *
 *   npm run bench                      this, then the policy bench
 *   npm run bench -- --quick           tiny counts, for CI to check the bench still runs
 *
 * Postgres: KEYGATE_BENCH_DATABASE_URL (default
 * postgres://postgres@127.0.0.1:5432/test) names a server where the bench
 * creates, and afterwards drops, its own database; with no server there it
 * says so and skips. redis-server must be on PATH.
 *
 * It measures, with a key cache TTL of 10 minutes (so only a notification
 * can make a change visible elsewhere):
 *
 *   - revocation propagation: REVOCATIONS keys, each allowed once by B (so B
 *     has it cached), revoked through A (ManageKey, an admin key), and B's
 *     Cube callback polled back to back on a keep-alive connection until it
 *     denies. Reported from the revoke request sent and from its answer
 *     received (a negative figure: B denied before A answered). Target: 100 ms.
 *   - Authorize throughput (the Cube callback on A, a fixed number of
 *     requests in flight over keep-alive connections) for a key with a rate
 *     limit that never trips (1000000/1s, counted in Redis) against a key
 *     with none, alternating rounds in the same run so machine noise hits
 *     both; and the same pair on a server without REDIS_URL (counters in
 *     memory). Median and spread (min–max) over the rounds, ratio to the
 *     no-limit key on the same server.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { KeyService, ManageKeyRequestSchema, type ManageKeyRequest, type ManageKeyResponse } from "../gen/keygate/v1/key_pb.js";

const args = new Set(process.argv.slice(2));
const QUICK = args.has("--quick");

const REVOCATIONS = QUICK ? 10 : 100;
const ROUNDS = QUICK ? 2 : 6;
const ROUND_MS = QUICK ? 300 : 2_000;
const CONCURRENCY = 32;
const TARGET_PROPAGATION_MS = 100;

const BIN = fileURLToPath(new URL("../../bin/keygate.js", import.meta.url));
const POLICY_DIR = fileURLToPath(new URL("../../policies/", import.meta.url));
const ADMIN_URL = process.env.KEYGATE_BENCH_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";

// ---------------------------------------------------------------- processes

interface Server {
  url: string;
  port: number;
  child: ChildProcess;
  /** The tail of what it logged, shown when the bench fails. */
  output(): string;
  stop(): Promise<void>;
}

function childEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, KEYGATE_POLICY_DIR: POLICY_DIR, ...extra };
  return env;
}

function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

/** `keygate serve --port 0`, ready once it logs its address. */
function startServer(env: Record<string, string>, cwd: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, "serve", "--port", "0"], { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    let started = false;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`keygate serve did not start in 20 s:\n${output}`));
    }, 20_000);
    const onData = (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-16_384);
      if (started) return;
      const match = /"msg":"keygate listening","address":"[^"]*:(\d+)"/.exec(output);
      if (!match) return;
      clearTimeout(timer);
      started = true;
      const port = Number(match[1]);
      resolve({
        url: `http://127.0.0.1:${port}`,
        port,
        child,
        output: () => output,
        async stop() {
          const exited = waitExit(child);
          child.kill("SIGTERM");
          await exited;
        },
      });
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`keygate serve exited with ${code} before listening:\n${output}`));
    });
  });
}

function runCli(cliArgs: string[], env: Record<string, string>, cwd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...cliArgs], { cwd, env: childEnv(env), stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    child.once("error", reject);
    child.once("close", (code) => (code === 0 ? resolve(stdout) : reject(new Error(`keygate ${cliArgs.join(" ")} exited ${code}:\n${stderr}`))));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** A private redis-server: free port, temp dir, no persistence (never the machine's Redis). */
async function startRedis(dir: string): Promise<{ url: string; stop(): Promise<void> }> {
  const port = await freePort();
  const child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: ["ignore", "pipe", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    let output = "";
    const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${output}`)), 10_000);
    child.stdout.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes("Ready to accept connections")) {
        clearTimeout(timer);
        child.stdout.resume();
        resolve();
      }
    });
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      const exited = waitExit(child);
      child.kill("SIGKILL");
      await exited;
    },
  };
}

// ---------------------------------------------------------------- http

/** POST /verify on a keep-alive connection; resolves with the status. */
function verify(agent: http.Agent, server: Server, key: string, path = "/sandboxes", method = "GET"): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { agent, host: "127.0.0.1", port: server.port, method: "POST", path: "/verify", headers: { Authorization: `Bearer ${key}`, "X-Request-Path": path, "X-Request-Method": method, "Content-Length": "0" } },
      (res) => {
        res.resume();
        res.once("end", () => resolve(res.statusCode ?? 0));
        res.once("error", reject);
      },
    );
    req.once("error", reject);
    req.end();
  });
}

function manage(client: Client<typeof KeyService>, action: ManageKeyRequest["action"]): Promise<ManageKeyResponse> {
  return client.manageKey(create(ManageKeyRequestSchema, { action }));
}

async function createReader(client: Client<typeof KeyService>, name: string, rateLimit = ""): Promise<{ id: string; key: string }> {
  const response = await manage(client, { case: "create", value: { $typeName: "keygate.v1.CreateKeyAction", name, org: "", namespace: "", roles: ["reader"], expiry: { case: undefined }, rateLimit } });
  if (response.result.case !== "created") throw new Error(`expected a created key, got ${response.result.case}`);
  return { id: response.result.value.key!.id, key: response.result.value.plaintext };
}

// ---------------------------------------------------------------- stats

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}
const median = (values: number[]) => quantile([...values].sort((x, y) => x - y), 0.5);
const ms = (value: number) => `${value.toFixed(1)} ms`;
const rps = (value: number) => `${Math.round(value).toLocaleString("en-US")}/s`;

// ---------------------------------------------------------------- measurements

interface Propagation {
  sinceSent: number[];
  sinceAnswered: number[];
  polls: number[];
}

async function measurePropagation(b: Server, manageViaA: Client<typeof KeyService>, agent: http.Agent): Promise<Propagation> {
  const result: Propagation = { sinceSent: [], sinceAnswered: [], polls: [] };
  const keys = [];
  for (let i = 0; i < REVOCATIONS; i++) keys.push(await createReader(manageViaA, `propagation-${i}`));
  for (const key of keys) {
    if ((await verify(agent, b, key.key)) !== 200) throw new Error(`B does not allow ${key.id} before the revoke`);
    const sent = performance.now();
    let answered: number | undefined;
    const revoke = manage(manageViaA, { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", id: key.id } }).then(() => (answered = performance.now()));
    let polls = 0;
    let seen: number;
    for (;;) {
      polls++;
      const status = await verify(agent, b, key.key);
      seen = performance.now();
      if (status === 401) break;
      if (status !== 200) throw new Error(`B answered ${status} for ${key.id}`);
      if (seen - sent > 10_000) throw new Error(`B still allows ${key.id} 10 s after the revoke`);
    }
    await revoke;
    result.sinceSent.push(seen - sent);
    result.sinceAnswered.push(seen - answered!);
    result.polls.push(polls);
  }
  return result;
}

/** Requests answered in ROUND_MS with CONCURRENCY in flight; every answer must be 200. */
async function throughputRound(agent: http.Agent, server: Server, key: string): Promise<number> {
  const end = performance.now() + ROUND_MS;
  let done = 0;
  const worker = async () => {
    while (performance.now() < end) {
      const status = await verify(agent, server, key);
      if (status !== 200) throw new Error(`throughput request answered ${status}`);
      done++;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return done / ((performance.now() - started) / 1000);
}

// ---------------------------------------------------------------- main

async function reachable(url: string): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: url, user: new URL(url).username || process.env.USER || "postgres", connectionTimeoutMillis: 3_000 });
  try {
    await client.connect();
    await client.query("select 1");
    return undefined;
  } catch (error) {
    return (error as Error).message;
  } finally {
    await client.end().catch(() => {});
  }
}

async function adminQuery(text: string): Promise<void> {
  const client = new pg.Client({ connectionString: ADMIN_URL, user: new URL(ADMIN_URL).username || process.env.USER || "postgres" });
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const unreachable = await reachable(ADMIN_URL);
  if (unreachable) {
    console.log(`instances bench skipped: no Postgres at ${ADMIN_URL} (${unreachable}); set KEYGATE_BENCH_DATABASE_URL.`);
    return;
  }
  const name = `keygate_bench_${randomBytes(6).toString("hex")}`;
  const dbUrl = new URL(ADMIN_URL);
  dbUrl.pathname = `/${name}`;
  if (!dbUrl.username) dbUrl.username = process.env.USER || "postgres";
  const dir = await mkdtemp(join(tmpdir(), "keygate-bench-"));
  const servers: Server[] = [];
  let redis: { url: string; stop(): Promise<void> } | undefined;
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  await adminQuery(`create database ${name}`);
  try {
    redis = await startRedis(dir);
    const env = { DATABASE_URL: dbUrl.toString(), KEYGATE_KEY_CACHE_TTL: "10m" };
    // Migrations run on the first start; the others find the schema in place.
    for (let i = 0; i < 2; i++) servers.push(await startServer({ ...env, REDIS_URL: redis.url }, dir));
    servers.push(await startServer(env, dir));
    const [a, b, memory] = servers as [Server, Server, Server];
    const admin = JSON.parse(await runCli(["keygen", "--json", "--org", "bench", "--role", "admin", "--name", "bench-admin"], env, dir)) as { key: string };
    const manageViaA = createClient(
      KeyService,
      createConnectTransport({ baseUrl: a.url, httpVersion: "1.1", interceptors: [(next) => (req) => (req.header.set("Authorization", `Bearer ${admin.key}`), next(req))] }),
    );

    console.log(`instances bench${QUICK ? " (--quick)" : ""}: 3 servers (A, B with Redis; one without), Postgres database ${name}, key cache TTL 10m`);
    const propagation = await measurePropagation(b, manageViaA, agent);

    const limited = await createReader(manageViaA, "throughput-limited", "1000000/1s");
    const unlimited = await createReader(manageViaA, "throughput-unlimited");
    const cases = [
      { label: "no rate limit, server with Redis (A)", server: a, key: unlimited.key, baseline: "redis" },
      { label: "1000000/1s, counted in Redis (A)", server: a, key: limited.key, baseline: "redis" },
      { label: "no rate limit, server without Redis", server: memory, key: unlimited.key, baseline: "memory" },
      { label: "1000000/1s, counted in memory", server: memory, key: limited.key, baseline: "memory" },
    ];
    // Warm-up: JIT, connections, key caches.
    for (const c of cases) await throughputRound(agent, c.server, c.key);
    const figures = cases.map(() => [] as number[]);
    for (let round = 0; round < ROUNDS; round++) {
      // Alternate the order too, so neither case always runs right after the other.
      const order = round % 2 === 0 ? cases.map((_, i) => i) : cases.map((_, i) => cases.length - 1 - i);
      for (const i of order) figures[i]!.push(await throughputRound(agent, cases[i]!.server, cases[i]!.key));
    }

    const p = (values: number[], q: number) => quantile([...values].sort((x, y) => x - y), q);
    const rows: string[][] = [
      ["measure", "figure", "spread / detail", "ratio"],
      [`revocation A → B, since revoke sent (n=${REVOCATIONS})`, `p50 ${ms(p(propagation.sinceSent, 0.5))}`, `p99 ${ms(p(propagation.sinceSent, 0.99))}, max ${ms(p(propagation.sinceSent, 1))}`, ""],
      ["revocation A → B, since revoke answered", `p50 ${ms(p(propagation.sinceAnswered, 0.5))}`, `p99 ${ms(p(propagation.sinceAnswered, 0.99))}; B polls per revoke p50 ${p(propagation.polls, 0.5)}`, ""],
    ];
    const baselines = new Map<string, number>();
    cases.forEach((c, i) => {
      if (!baselines.has(c.baseline)) baselines.set(c.baseline, median(figures[i]!));
    });
    cases.forEach((c, i) => {
      const values = figures[i]!;
      const med = median(values);
      rows.push([
        `Authorize (Cube callback), ${c.label}`,
        rps(med),
        `${rps(Math.min(...values))} – ${rps(Math.max(...values))}`,
        `${(med / baselines.get(c.baseline)!).toFixed(2)}×`,
      ]);
    });
    const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => row[col]!.length)));
    console.log();
    for (const [i, row] of rows.entries()) {
      console.log(row.map((cell, col) => cell.padEnd(widths[col]!)).join("  ").trimEnd());
      if (i === 0) console.log(widths.map((w) => "-".repeat(w)).join("  "));
    }
    console.log();
    console.log(`throughput: ${CONCURRENCY} requests in flight over keep-alive connections, ${ROUNDS} alternating rounds of ${ROUND_MS} ms; ratio = median / the no-limit key on the same server`);
    const p99 = p(propagation.sinceSent, 0.99);
    console.log(`target: revocation seen by another instance within ${TARGET_PROPAGATION_MS} ms — p99 ${ms(p99)}: ${p99 <= TARGET_PROPAGATION_MS ? "met" : "NOT met"}`);
  } catch (error) {
    for (const [i, server] of servers.entries()) console.error(`--- server ${i} (port ${server.port}) log tail:\n${server.output()}`);
    throw error;
  } finally {
    agent.destroy();
    await Promise.allSettled(servers.map((server) => server.stop()));
    await redis?.stop();
    await adminQuery(`drop database if exists ${name} with (force)`).catch((error: unknown) => console.error(`could not drop ${name}: ${(error as Error).message}`));
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
