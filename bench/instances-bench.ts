/**
 * Multi-instance benchmark: several `keygate serve` processes over one
 * Postgres database and one private redis-server, as in production.
 *
 *   npm run bench                      this, then the policy bench
 *   npm run bench -- --quick           tiny counts, for CI to check the bench still runs
 *   npm run bench -- --no-docs         a full run that leaves docs/performance.md alone
 *
 * A full run writes its table, dated, with the machine and the versions,
 * between the bench:instances markers of docs/performance.md.
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
import { mkdtemp, rm } from "node:fs/promises";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { KeyService, ManageKeyRequestSchema, type ManageKeyRequest, type ManageKeyResponse } from "../gen/keygate/v1/key_pb.js";
import { writeDocSection, writesDocs } from "./support/docs.js";
import { describeMachine, formatStamp, loadAverage, redisVersion } from "./support/machine.js";
import { ADMIN_URL, createScratchDatabase, query, unreachable } from "./support/postgres.js";
import { runCli, startKeygate, type ServerProcess as Server } from "./support/process.js";
import { startRedis, type RedisServer } from "./support/redis.js";
import { median, ms, quantile, rps } from "./support/stats.js";
import { formatColumns, formatMarkdown } from "./support/table.js";

const args = new Set(process.argv.slice(2));
const QUICK = args.has("--quick");
const WRITE_DOCS = writesDocs(process.argv.slice(2));

const REVOCATIONS = QUICK ? 10 : 100;
const ROUNDS = QUICK ? 2 : 6;
const ROUND_MS = QUICK ? 300 : 2_000;
const CONCURRENCY = 32;
const TARGET_PROPAGATION_MS = 100;

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

async function main(): Promise<void> {
  const why = await unreachable(ADMIN_URL);
  if (why) {
    console.log(`instances bench skipped: no Postgres at ${ADMIN_URL} (${why}); set KEYGATE_BENCH_DATABASE_URL.`);
    return;
  }
  const started = performance.now();
  const machine = describeMachine();
  const postgres = (await query<{ server_version: string }>(ADMIN_URL, "show server_version"))[0]?.server_version;
  const database = await createScratchDatabase(ADMIN_URL);
  const name = database.name;
  const dir = await mkdtemp(join(tmpdir(), "keygate-bench-"));
  const servers: Server[] = [];
  let redis: RedisServer | undefined;
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
  try {
    redis = await startRedis(dir);
    const env = { DATABASE_URL: database.url, KEYGATE_KEY_CACHE_TTL: "10m" };
    // Migrations run on the first start; the others find the schema in place.
    for (let i = 0; i < 2; i++) servers.push(await startKeygate({ ...env, REDIS_URL: redis.url }, dir));
    servers.push(await startKeygate(env, dir));
    const [a, b, memory] = servers as [Server, Server, Server];
    const admin = JSON.parse(await runCli(["keygen", "--json", "--org", "bench", "--role", "admin", "--name", "bench-admin"], env, dir)) as { key: string };
    const manageViaA = createClient(
      KeyService,
      createConnectTransport({ baseUrl: a.url, httpVersion: "1.1", interceptors: [(next) => (req) => (req.header.set("Authorization", `Bearer ${admin.key}`), next(req))] }),
    );

    console.log(`instances bench${QUICK ? " (--quick)" : ""}: Node ${process.version}, 3 servers (A, B with Redis; one without), Postgres ${postgres} database ${name}, key cache TTL 10m`);
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
    console.log();
    console.log(formatColumns(rows));
    console.log();
    const method = `throughput: ${CONCURRENCY} requests in flight over keep-alive connections, ${ROUNDS} alternating rounds of ${ROUND_MS} ms; ratio = median / the no-limit key on the same server`;
    console.log(method);
    const p99 = p(propagation.sinceSent, 0.99);
    const target = `target: revocation seen by another instance within ${TARGET_PROPAGATION_MS} ms — p99 ${ms(p99)}: ${p99 <= TARGET_PROPAGATION_MS ? "met" : "NOT met"}`;
    console.log(target);
    if (WRITE_DOCS) {
      const stamp = formatStamp({
        command: "npm run bench",
        seconds: (performance.now() - started) / 1000,
        machine,
        loadAtEnd: loadAverage(),
        nodes: [`${process.version} (bench and servers)`],
        databases: [`Postgres ${postgres} (server)`, `Redis ${redisVersion() ?? "?"} (a private redis-server)`],
      });
      await writeDocSection("instances", `${stamp}\n\n${formatMarkdown(rows, [false, true, false, true])}\n\n${method}.\n\n${target.replace(/^target/, "Target")}.`);
    }
  } catch (error) {
    for (const [i, server] of servers.entries()) console.error(`--- server ${i} (port ${server.port}) log tail:\n${server.output()}`);
    throw error;
  } finally {
    agent.destroy();
    await Promise.allSettled(servers.map((server) => server.stop()));
    await redis?.stop();
    await database.drop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
