/**
 * Proxy-mode benchmark: keygate in front of an E2B-compatible upstream,
 * against a bare node:http pass-through proxy to the same upstream, in the
 * same run.
 *
 *   npm run bench:proxy                 this bench alone (≈ 1 min)
 *   npm run bench:proxy -- --quick      short rounds, to check the bench works (CI)
 *   npm run bench:proxy -- --no-docs    a full run that leaves docs/performance.md alone
 *
 * A full run writes its table, dated, with the machine and the versions,
 * between the bench:proxy markers of docs/performance.md.
 *
 * Every server is a child process: the upstream (bench/servers/e2b-upstream-server.ts),
 * `keygate serve --upstream` on a new PGlite data dir, the bare proxy
 * (bench/servers/bare-proxy-server.ts) and, when `nginx` is on PATH, nginx
 * with one `proxy_pass` location (keep-alive to the upstream). The load
 * comes from this process (autocannon, CONNECTIONS keep-alive connections).
 * Each measure and its baseline run in alternating rounds after a warm-up;
 * the table gives the median and min–max over the rounds and the ratio of
 * the medians.
 *
 *   p1. GET /sandboxes/:id of a sandbox the key's org owns (decision,
 *       ownership check on a warm entry, the answer streamed), keygate
 *       against the bare proxy. Target ≥ 0.8×.
 *   p2. GET /sandboxes (a 20-sandbox list, read whole, filtered by the
 *       ledger, re-serialized), keygate against the bare proxy. Reported.
 *   p3. nginx proxy_pass against the bare proxy, for scale (no decision at
 *       all). Skipped, saying why, when nginx is not installed.
 *   The upstream alone is given for reference.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeDocSection, writesDocs } from "./support/docs.js";
import { freePort } from "./support/free-port.js";
import { httpLoad, type LoadResult } from "./support/http-load.js";
import { describeMachine, formatStamp, loadAverage, packageVersion } from "./support/machine.js";
import { runCli, startBenchServer, startKeygate, track, waitExit, type ServerProcess } from "./support/process.js";
import { median, ms, rps } from "./support/stats.js";
import { formatColumns, formatMarkdown } from "./support/table.js";

const argv = process.argv.slice(2);
const QUICK = argv.includes("--quick");
const WRITE_DOCS = writesDocs(argv);

const ROUNDS = QUICK ? 2 : 5;
const ROUND_MS = QUICK ? 300 : 3_000;
const CONNECTIONS = 50;
const TARGET = 0.8;
const SANDBOX = "sbx-bench";

interface Target {
  name: string;
  url: string;
}

/** nginx with one proxy_pass location to the upstream, or why there is none. */
async function startNginx(dir: string, upstreamPort: number): Promise<{ url: string; stop(): Promise<void> } | { why: string }> {
  let version: string;
  try {
    version = execFileSync("nginx", ["-v"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }) || "nginx";
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr;
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return { why: "nginx is not installed (not on PATH)" };
    version = stderr?.trim() ?? "nginx";
  }
  const port = await freePort();
  const conf = join(dir, "nginx.conf");
  await writeFile(
    conf,
    `daemon off;\nworker_processes 1;\npid ${join(dir, "nginx.pid")};\nerror_log ${join(dir, "nginx-error.log")} warn;\nevents { worker_connections 1024; }\n` +
      `http {\n  access_log off;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n  client_body_temp_path ${dir};\n  proxy_temp_path ${dir};\n  fastcgi_temp_path ${dir};\n  uwsgi_temp_path ${dir};\n  scgi_temp_path ${dir};\n` +
      `  upstream cube { server 127.0.0.1:${upstreamPort}; keepalive 64; }\n` +
      `  server {\n    listen 127.0.0.1:${port};\n    location / { proxy_pass http://cube; proxy_http_version 1.1; proxy_set_header Connection ""; }\n  }\n}\n`,
  );
  const child: ChildProcess = track(spawn("nginx", ["-c", conf, "-p", dir], { stdio: "ignore" }));
  // Up when it answers.
  const deadline = performance.now() + 10_000;
  for (;;) {
    try {
      await fetch(`http://127.0.0.1:${port}/sandboxes/${SANDBOX}`);
      break;
    } catch {
      if (performance.now() > deadline) {
        child.kill("SIGKILL");
        return { why: `nginx (${version}) did not start` };
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  return {
    url: `http://127.0.0.1:${port}`,
    async stop() {
      const exited = waitExit(child);
      child.kill("SIGQUIT");
      await exited;
    },
  };
}

async function main(): Promise<void> {
  const started = performance.now();
  const machine = describeMachine();
  const dir = await mkdtemp(join(tmpdir(), "keygate-proxy-bench-"));
  const servers: ServerProcess[] = [];
  let nginx: { url: string; stop(): Promise<void> } | { why: string } | undefined;
  try {
    const upstream = await startBenchServer("e2b-upstream-server.js", {}, dir);
    servers.push(upstream);
    const env = { KEYGATE_DATA_DIR: join(dir, "data") };
    const key = (JSON.parse(await runCli(["keygen", "--json", "--org", "bench", "--role", "writer", "--name", "proxy-bench"], env, dir)) as { key: string }).key;
    const proxied = await startKeygateProxy(env, dir, upstream.url);
    servers.push(proxied.server);
    const bare = await startBenchServer("bare-proxy-server.js", { UPSTREAM_URL: upstream.url }, dir);
    servers.push(bare);
    nginx = await startNginx(dir, upstream.port);

    // The bench's sandbox, created through keygate: owned by the key's org.
    const created = await fetch(`${proxied.url}/sandboxes`, { method: "POST", headers: { "x-api-key": key, "content-type": "application/json" }, body: JSON.stringify({ templateID: SANDBOX }) });
    if (created.status !== 201) throw new Error(`create through keygate answered ${created.status}: ${await created.text()}`);

    const headers = { "x-api-key": key };
    const targets = {
      keygate: { name: "keygate proxy", url: proxied.url },
      bare: { name: "bare node:http proxy", url: bare.url },
      upstream: { name: "upstream alone", url: upstream.url },
    } satisfies Record<string, Target>;
    const nginxTarget: Target | undefined = "url" in nginx ? { name: "nginx proxy_pass", url: nginx.url } : undefined;
    const load = (target: Target, path: string): Promise<LoadResult> =>
      httpLoad({ url: `${target.url}${path}`, connections: CONNECTIONS, durationMs: ROUND_MS, method: "GET", headers });

    /** Alternating rounds of each target on one path (order flipped every round), after a warm-up of each. */
    async function compare(path: string, list: Target[]): Promise<LoadResult[][]> {
      for (const target of list) await load(target, path);
      const results = list.map(() => [] as LoadResult[]);
      for (let round = 0; round < ROUNDS; round++) {
        const order = round % 2 === 0 ? list.map((_, i) => i) : list.map((_, i) => list.length - 1 - i);
        for (const i of order) results[i]!.push(await load(list[i]!, path));
      }
      return results;
    }

    console.log(`proxy bench${QUICK ? " (--quick)" : ""}: Node ${process.version}, ${CONNECTIONS} connections, ${ROUNDS} rounds of ${ROUND_MS} ms`);
    const detailPath = `/sandboxes/${SANDBOX}`;
    const detailTargets: Target[] = [targets.keygate, targets.bare, targets.upstream, ...(nginxTarget ? [nginxTarget] : [])];
    const detail = await compare(detailPath, detailTargets);
    const list = await compare("/sandboxes", [targets.keygate, targets.bare]);

    const figure = (results: LoadResult[]) => {
      const values = results.map((r) => r.rps);
      return { median: median(values), min: Math.min(...values), max: Math.max(...values), p99: median(results.map((r) => r.p99)) };
    };
    const d = detailTargets.map((_, i) => figure(detail[i]!));
    const l = [figure(list[0]!), figure(list[1]!)];
    const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;
    const met = (value: number) => (value >= TARGET ? "met" : "NOT met");
    const rows: string[][] = [
      ["row", "measure", "req/s (median)", "spread", "p99", "ratio", "target"],
      ["p1", `keygate proxy, GET ${detailPath} (owned, streamed)`, rps(d[0]!.median), `${rps(d[0]!.min)} – ${rps(d[0]!.max)}`, ms(d[0]!.p99, 2), ratio(d[0]!.median, d[1]!.median), `≥ ${TARGET}× bare: ${met(d[0]!.median / d[1]!.median)}`],
      ["", `bare node:http proxy, GET ${detailPath}`, rps(d[1]!.median), `${rps(d[1]!.min)} – ${rps(d[1]!.max)}`, ms(d[1]!.p99, 2), "1.00×", "baseline"],
      ["p2", "keygate proxy, GET /sandboxes (20 listed, filtered by the ledger)", rps(l[0]!.median), `${rps(l[0]!.min)} – ${rps(l[0]!.max)}`, ms(l[0]!.p99, 2), ratio(l[0]!.median, l[1]!.median), "reported"],
      ["", "bare node:http proxy, GET /sandboxes", rps(l[1]!.median), `${rps(l[1]!.min)} – ${rps(l[1]!.max)}`, ms(l[1]!.p99, 2), "1.00×", "baseline"],
      nginxTarget
        ? ["p3", `nginx proxy_pass, GET ${detailPath}`, rps(d[3]!.median), `${rps(d[3]!.min)} – ${rps(d[3]!.max)}`, ms(d[3]!.p99, 2), ratio(d[3]!.median, d[1]!.median), "reported (keygate ÷ nginx " + ratio(d[0]!.median, d[3]!.median) + ")"]
        : ["p3", "nginx proxy_pass", "skipped", (nginx as { why: string }).why, "", "", ""],
      ["", `upstream alone, GET ${detailPath}`, rps(d[2]!.median), `${rps(d[2]!.min)} – ${rps(d[2]!.max)}`, ms(d[2]!.p99, 2), ratio(d[2]!.median, d[1]!.median), "reference"],
    ];
    console.log();
    console.log(formatColumns(rows));
    console.log();
    const method = `${CONNECTIONS} keep-alive connections (autocannon, in the bench process), ${ROUNDS} alternating rounds of ${ROUND_MS} ms after a warm-up; ratio = median ÷ the bare proxy's median in the same run. Client, proxies and upstream share the machine's cores`;
    console.log(method);
    if (WRITE_DOCS) {
      const stamp = formatStamp({
        command: "npm run bench",
        seconds: (performance.now() - started) / 1000,
        machine,
        loadAtEnd: loadAverage(),
        nodes: [`${process.version} (bench, load generator, proxies, upstream)`],
        databases: [`PGlite ${packageVersion("@electric-sql/pglite") ?? "?"}`],
      });
      await writeDocSection("proxy", `${stamp}\n\n${formatMarkdown(rows, [false, false, true, false, true, true, false])}\n\n${method}.`);
    }
  } catch (error) {
    for (const server of servers) console.error(`--- ${server.url} log tail:\n${server.output()}`);
    throw error;
  } finally {
    await Promise.allSettled(servers.map((server) => server.stop()));
    if (nginx && "stop" in nginx) await nginx.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

/** `keygate serve --upstream URL --proxy-port 0`, with the proxy's address from its listening line. */
async function startKeygateProxy(env: Record<string, string>, dir: string, upstream: string): Promise<{ server: ServerProcess; url: string }> {
  const server = await startKeygate({ ...env, KEYGATE_UPSTREAM: upstream, KEYGATE_PROXY_PORT: "0" }, dir);
  const match = /"proxy":"[^"]*:(\d+)"/.exec(server.output());
  if (!match) throw new Error(`no proxy address in keygate's listening line:\n${server.output()}`);
  return { server, url: `http://127.0.0.1:${match[1]}` };
}

await main();
