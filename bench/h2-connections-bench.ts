/**
 * Idle HTTP/2 connections against one keygate process with few file
 * descriptors: how many it survives before valid keys are affected.
 *
 *   npm run bench:h2                  this bench alone (under 1 min)
 *   npm run bench:h2 -- --quick       fewer steps and calls, to check the bench works (CI)
 *   npm run bench:h2 -- --no-docs     a full run that leaves docs/performance.md alone
 *
 * `keygate serve` (PGlite in a temp dir) runs under `ulimit -n 512`, with its
 * connection cap derived from that limit (KEYGATE_MAX_CONNECTIONS unset). The
 * attacker is this process: connections that send the HTTP/2 preface and an
 * empty SETTINGS frame, then nothing (issue 14: before the fix each stayed
 * open for ever, and 1,100 of them against 1,024 descriptors turned valid keys
 * into 503s). At each step the flood grows (0 = the same-run baseline, then
 * 100, 200, 400, 800, 1,600) and CALLS Authorize calls for uncached-then-warm
 * valid keys go over a fresh Connect h2 connection: allowed or not, p50/p99.
 * A valid key is "affected" when any call is not allowed or fails, or its p99
 * exceeds 2× the baseline's and 10 ms.
 */
import net from "node:net";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthorizeService } from "../gen/keygate/v1/authorize_pb.js";
import { writeDocSection, writesDocs } from "./support/docs.js";
import { describeMachine, formatStamp, loadAverage, packageVersion } from "./support/machine.js";
import { BIN, runCli, spawnListening, type ServerProcess } from "./support/process.js";
import { count, ms, quantile, sortedCopy } from "./support/stats.js";
import { formatColumns, formatMarkdown } from "./support/table.js";

const argv = process.argv.slice(2);
const QUICK = argv.includes("--quick");
const WRITE_DOCS = writesDocs(argv);

const FD_LIMIT = 512;
const STEPS = QUICK ? [0, 100, 800] : [0, 100, 200, 400, 800, 1_600];
const CALLS = QUICK ? 50 : 300;
const KEYS = 5;

const PREFACE = Buffer.concat([Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]);

/** An attacker's connection: the preface and an empty SETTINGS frame, then nothing; `open` until the server closes it. */
function idleConnection(port: number): Promise<{ socket: net.Socket; open: () => boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    let open = true;
    socket.on("error", () => {});
    socket.on("close", () => (open = false));
    // Read (and drop) what the server sends: a paused socket never sees the server's FIN, so it would never close.
    socket.resume();
    socket.once("connect", () => {
      socket.write(PREFACE);
      resolve({ socket, open: () => open });
    });
  });
}

interface StepResult {
  flood: number;
  stillOpen: number;
  allowed: number;
  failed: number;
  p50: number;
  p99: number;
  firstCallMs: number;
}

async function measure(server: ServerProcess, keys: string[]): Promise<Omit<StepResult, "flood" | "stillOpen">> {
  const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
  const samples: number[] = [];
  let allowed = 0;
  let failed = 0;
  for (let i = 0; i < CALLS; i++) {
    const started = performance.now();
    try {
      const answer = await client.authorize({ credential: keys[i % keys.length]!, path: "/sandboxes/abc", method: "GET" }, { timeoutMs: 10_000 });
      if (answer.allowed) allowed++;
      else failed++;
    } catch {
      failed++;
    }
    samples.push(performance.now() - started);
  }
  // The first call opens the connection: reported on its own, kept out of the quantiles.
  const sorted = sortedCopy(samples.slice(1));
  return { allowed, failed, p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), firstCallMs: samples[0]! };
}

async function main(): Promise<void> {
  const started = performance.now();
  const machine = describeMachine();
  const dir = await mkdtemp(join(tmpdir(), "keygate-h2-bench-"));
  const env = { KEYGATE_DATA_DIR: join(dir, "data") };
  let server: ServerProcess | undefined;
  const flood: Awaited<ReturnType<typeof idleConnection>>[] = [];
  try {
    const keys: string[] = [];
    for (let i = 0; i < KEYS; i++) {
      keys.push((JSON.parse(await runCli(["keygen", "--json", "--org", "bench", "--role", "reader", "--name", `h2-bench-${i}`], env, dir)) as { key: string }).key);
    }
    server = await spawnListening(["-c", `ulimit -n ${FD_LIMIT} && exec "$0" "$@"`, process.execPath, BIN, "serve", "--port", "0", "--auth-fail-limit", "off"], {
      env,
      cwd: dir,
      node: "sh",
    });
    const cap = Number(/"max_connections":(\d+)/.exec(server.output())?.[1]);
    console.log(`h2 connections bench${QUICK ? " (--quick)" : ""}: Node ${process.version}, ulimit -n ${FD_LIMIT}, connection cap ${cap}, ${CALLS} calls a step`);

    const results: StepResult[] = [];
    for (const target of STEPS) {
      // Opened in batches of 100, so the whole flood is up well within the first-bytes timeout (10 s).
      while (flood.length < target) {
        const batch = Math.min(100, target - flood.length);
        flood.push(...(await Promise.all(Array.from({ length: batch }, () => idleConnection(server!.port)))));
      }
      const result = { flood: target, stillOpen: 0, ...(await measure(server, keys)) };
      result.stillOpen = flood.filter((c) => c.open()).length;
      results.push(result);
      console.log(`  ${count(target)} idle: ${result.allowed}/${CALLS} allowed, p50 ${ms(result.p50, 2)}, p99 ${ms(result.p99, 2)}, ${count(result.stillOpen)} still open`);
    }

    const base = results[0]!;
    const affected = results.find((r) => r.failed > 0 || r.allowed < CALLS || (r.p99 > 2 * base.p99 && r.p99 > 10));
    const verdict = affected
      ? `valid keys first affected at ${count(affected.flood)} idle connections`
      : `never, up to ${count(STEPS.at(-1)!)} idle connections: past the cap of ${count(cap)} each new connection closed the longest-idle one`;
    const rows = [
      ["idle HTTP/2 connections opened", "still open", "allowed", "p50", "p99", "first call (fresh connection)"],
      ...results.map((r) => [
        r.flood === 0 ? "0 (baseline)" : count(r.flood),
        count(r.stillOpen),
        `${r.allowed}/${CALLS}`,
        ms(r.p50, 2),
        ms(r.p99, 2),
        ms(r.firstCallMs, 1),
      ]),
    ];
    console.log();
    console.log(formatColumns(rows));
    console.log();
    console.log(`Valid keys affected: ${verdict}.`);
    if (WRITE_DOCS) {
      const stamp = formatStamp({
        command: "npm run bench:h2",
        seconds: (performance.now() - started) / 1000,
        machine,
        loadAtEnd: loadAverage(),
        nodes: [`${process.version} (bench, server)`],
        databases: [`PGlite ${packageVersion("@electric-sql/pglite") ?? ""}`.trim()],
      });
      await writeDocSection(
        "h2-connections",
        `${stamp}\n\n${formatMarkdown(rows, [false, true, true, true, true, true])}\n\nValid keys affected: ${verdict}. One \`keygate serve\` (PGlite) under \`ulimit -n ${FD_LIMIT}\`, cap derived (${count(cap)}); each step opens more connections that send the preface and an empty SETTINGS frame, then nothing, and makes ${CALLS} Authorize calls with ${KEYS} valid keys over a fresh Connect h2 connection.`,
      );
    }
    // A missed target is a figure, not a failure; a baseline that does not allow is a broken measurement.
    if (base.allowed < CALLS) throw new Error(`the baseline allowed ${base.allowed} of ${CALLS} calls: the bench is broken`);
  } finally {
    for (const connection of flood) connection.socket.destroy();
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
