import { createHash } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { grpcClient, unary, type GrpcClient } from "../support/grpc-js.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { dumpPostgres, startLeakWatch, type LeakWatch } from "../support/leak-watch.js";
import { startPgCluster, type PgCluster } from "../support/pg-cluster.js";

/**
 * Issue 7, database faults. keygate serves on its own throwaway Postgres
 * cluster under sustained concurrent load (the Cube shim, Connect and gRPC).
 * The cluster is stopped (fast, then immediate): from the moment pg_ctl
 * returns, every decision is the "unavailable" deny (503 / UNAVAILABLE),
 * never an allow, and the process lives on. Restarted, decisions are right
 * again within 2 s, with no keygate restart. Every keygate connection killed
 * (pg_terminate_backend, the LISTEN one included): nothing that should be
 * denied is allowed, and a key revoked right after is denied within 2 s.
 */

const UNAVAILABLE = "authorization unavailable: the key store cannot be reached, request denied";
const RECOVERY_LIMIT_MS = 2_000;
/** Loops per protocol (shim, Connect, gRPC). */
const LOOPS = 8;
const LOAD_BEFORE_MS = 1_200;
const DOWN_MS = 2_500;
/** Load kept up after the cluster is back (or the revoke is done): the recovery limit plus a margin of correct answers. */
const LOAD_AFTER_MS = RECOVERY_LIMIT_MS + 1_500;

type Protocol = "shim" | "connect" | "grpc";
type Case = "allowed" | "forbidden" | "revoked" | "victim";
/** What one decision came to: a decision kind, or what else happened. */
type Answer = "allowed" | "forbidden" | "revoked" | "unavailable" | `other: ${string}`;

interface Sample {
  protocol: Protocol;
  case: Case;
  /** performance.now() when sent and when answered. */
  sent: number;
  done: number;
  answer: Answer;
}

let watch: LeakWatch;
let cluster: PgCluster;
let server: ServerProcess;
let workDir: string;
let env: Record<string, string>;
/** All readers in org acme; "revoked" is revoked at the start, "victim" in the pg_terminate_backend scenario. */
const keys = {} as Record<Case, CreatedKeyJson>;
const summaries: string[] = [];
let stopping = false;
/** Set when keygate exits before afterAll stops it: what it said last. */
let exitedEarly: string | undefined;

const cli = (args: string[]) => runCli(args, { cwd: workDir, env, timeoutMs: 30_000 });

beforeAll(async () => {
  watch = await startLeakWatch();
  cluster = await startPgCluster();
  workDir = await mkdtemp(join(tmpdir(), "keygate-dbfaults-"));
  // Never the suite's KEYGATE_TEST_DATABASE_URL: this file brings its own cluster.
  env = { ...watch.env, DATABASE_URL: cluster.url };
  server = await startServerProcess([], { cwd: workDir, env });
  void server.exited.then((code) => {
    if (!stopping) exitedEarly = `keygate exited with ${code}; its last output:\n${server.output().slice(-4_000)}`;
  });
  const make = (name: string) => createKey(["--org", "acme", "--role", "reader", "--name", name], { cwd: workDir, env });
  [keys.allowed, keys.forbidden, keys.revoked, keys.victim] = await Promise.all([make("db-allowed"), make("db-forbidden"), make("db-revoked"), make("db-victim")]);
  for (const key of Object.values(keys)) watch.key(key.key);
  const revoked = await cli(["keys", "revoke", keys.revoked.id]);
  watch.text("keys revoke output", revoked.stdout + revoked.stderr);
  expect(revoked.code, revoked.stderr).toBe(0);
}, 120_000);

afterAll(async () => {
  if (server) {
    stopping = true;
    await server.stop();
  }
  await cluster?.destroy();
  if (workDir) await rm(workDir, { recursive: true, force: true });
  await watch?.close();
  for (const line of summaries) console.log("[hardening] database-faults:", line);
}, 60_000);

/** Each case's request: the reader keys may GET /sandboxes and may not DELETE a sandbox. */
const REQUEST: Record<Case, { path: string; method: string }> = {
  allowed: { path: "/sandboxes", method: "GET" },
  forbidden: { path: "/sandboxes/abc", method: "DELETE" },
  revoked: { path: "/sandboxes", method: "GET" },
  victim: { path: "/sandboxes", method: "GET" },
};

/** Every text a client was shown goes to the leak watch, once (thousands of answers repeat a handful of texts). */
const seen = new Set<string>();
function show(where: string, text: string): void {
  if (seen.has(text)) return;
  seen.add(text);
  watch.text(where, text);
}

function errorText(where: string, error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  show(where, text);
  return text;
}

async function askShim(key: string, c: Case): Promise<Answer> {
  const { path, method } = REQUEST[c];
  const response = await cubeRequest(server.url, bearer(key, path, method));
  show("shim response", response.body);
  if (response.status === 200) return "allowed";
  if (response.status === 403 && response.body.includes("is not allowed to")) return "forbidden";
  if (response.status === 401 && JSON.parse(response.body).message === "API key has been revoked") return "revoked";
  if (response.status === 503 && response.body === JSON.stringify({ code: 503, message: UNAVAILABLE })) return "unavailable";
  return `other: ${response.status} ${response.body}`;
}

const REASONS: Partial<Record<Reason, Answer>> = { [Reason.ALLOWED]: "allowed", [Reason.FORBIDDEN]: "forbidden", [Reason.REVOKED]: "revoked" };

async function askConnect(client: Client<typeof AuthorizeService>, key: string, c: Case): Promise<Answer> {
  try {
    const response = await client.authorize({ credential: key, ...REQUEST[c] }, { timeoutMs: 15_000 });
    const answer = REASONS[response.reason];
    if (answer && response.allowed === (answer === "allowed")) return answer;
    return `other: ${Reason[response.reason]} allowed=${response.allowed}`;
  } catch (error) {
    const text = errorText("connect error", error);
    if (error instanceof ConnectError && error.code === Code.Unavailable && error.rawMessage === UNAVAILABLE) return "unavailable";
    return `other: ${text}`;
  }
}

const GRPC_REASONS: Record<string, Answer> = { REASON_ALLOWED: "allowed", REASON_FORBIDDEN: "forbidden", REASON_REVOKED: "revoked" };

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

async function askGrpc(client: GrpcClient, key: string, c: Case): Promise<Answer> {
  try {
    const response = await unary<{ allowed: boolean; reason: string }>(client, "Authorize", { credential: key, ...REQUEST[c] }, 15_000);
    const answer = GRPC_REASONS[response.reason];
    if (answer && response.allowed === (answer === "allowed")) return answer;
    return `other: ${response.reason} allowed=${response.allowed}`;
  } catch (error) {
    const text = errorText("grpc error", error);
    const status = error as grpc.ServiceError;
    // grpc-js reads grpc-message with decodeURI, which leaves the server's %3A and %2C encoded.
    if (status.code === 14 && safeDecode(status.details) === UNAVAILABLE) return "unavailable";
    return `other: ${text}`;
  }
}

interface Load {
  samples: Sample[];
  stop(): Promise<void>;
}

/** LOOPS loops per protocol, each going round the cases, until stopped. */
function startLoad(cases: readonly Case[]): Load {
  const samples: Sample[] = [];
  let running = true;
  const session = new Http2SessionManager(server.url);
  const connect = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: session }));
  const grpcJs = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
  const ask: Record<Protocol, (key: string, c: Case) => Promise<Answer>> = {
    shim: askShim,
    connect: (key, c) => askConnect(connect, key, c),
    grpc: (key, c) => askGrpc(grpcJs, key, c),
  };
  const loop = async (protocol: Protocol, offset: number) => {
    for (let i = offset; running; i++) {
      const c = cases[i % cases.length]!;
      const sent = performance.now();
      const answer = await ask[protocol](keys[c].key, c).catch((error: unknown) => `other: ${errorText(`${protocol} failure`, error)}` as const);
      samples.push({ protocol, case: c, sent, done: performance.now(), answer });
    }
  };
  const loops = (["shim", "connect", "grpc"] as const).flatMap((protocol) => Array.from({ length: LOOPS }, (_, n) => loop(protocol, n)));
  return {
    samples,
    async stop() {
      running = false;
      await Promise.all(loops);
      grpcJs.close();
      session.abort();
    },
  };
}

/** What a case must answer when the database is up. */
function expected(c: Case, victimRevokedAt = Infinity, sent = 0): Answer {
  if (c === "victim") return sent >= victimRevokedAt ? "revoked" : "allowed";
  return c;
}

/** May this answer be given to this case at all? Never an allow for what should be denied. */
function permissible(sample: Sample, victimRevokedAt = Infinity): boolean {
  if (sample.answer === "unavailable") return true;
  if (sample.case === "victim" && sample.answer === "revoked") return true;
  if (sample.case === "victim" && sample.answer === "allowed") return sample.sent < victimRevokedAt + RECOVERY_LIMIT_MS;
  return sample.answer === sample.case;
}

function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const round = (n: number) => Math.round(n);

const LISTENER_BACK = "key change listener reconnected; key cache back on";

/** The wall-clock time of the first keygate log line with this msg at or after `since` (Date.now()), if any. */
function loggedAt(msg: string, since: number): number | undefined {
  for (const line of server.output().split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const entry = JSON.parse(line) as { msg?: string; time?: string };
      const at = entry.time === undefined ? NaN : Date.parse(entry.time);
      if (entry.msg === msg && at >= since) return at;
    } catch {
      // Not a log line (a stack trace's continuation).
    }
  }
  return undefined;
}

/** Polls until `check` holds or `timeoutMs` passes. */
async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** From `from`, when the answers became and stayed right: the latest answer (sent at or after `from`) that was not right, measured to its completion. */
function recoveryMs(samples: Sample[], from: number, victimRevokedAt = Infinity): number {
  let last = from;
  for (const s of samples) if (s.sent >= from && s.answer !== expected(s.case, victimRevokedAt, s.sent)) last = Math.max(last, s.done);
  return last - from;
}

function tally(samples: Sample[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const s of samples) counts[s.answer.startsWith("other") ? "other" : s.answer] = (counts[s.answer.startsWith("other") ? "other" : s.answer] ?? 0) + 1;
  return counts;
}

const ALL_CASES: readonly Case[] = ["allowed", "forbidden", "revoked"];

describe("database faults under load (own Postgres cluster)", () => {
  it.each(["fast", "immediate"] as const)(
    "pg_ctl stop -m %s: every decision while down is the unavailable deny; right again within 2 s of the restart",
    async (mode) => {
      const load = startLoad(ALL_CASES);
      let stopIssued = 0;
      let stopReturned = 0;
      let startIssued = 0;
      let startReturned = 0;
      let stopWall = 0;
      let startWall = 0;
      try {
        await sleep(LOAD_BEFORE_MS);
        stopIssued = performance.now();
        await cluster.stop(mode);
        stopReturned = performance.now();
        stopWall = Date.now();
        await sleep(DOWN_MS);
        startIssued = performance.now();
        await cluster.start();
        startReturned = performance.now();
        startWall = Date.now();
        await until(() => performance.now() - startReturned >= LOAD_AFTER_MS, LOAD_AFTER_MS + 10_000, "load after restart");
      } finally {
        await load.stop();
        if (!cluster.running) await cluster.start();
      }
      expect(exitedEarly).toBeUndefined();
      const { samples } = load;
      const before = samples.filter((s) => s.done < stopIssued);
      const stopping = samples.filter((s) => s.done >= stopIssued && s.sent < stopReturned);
      const down = samples.filter((s) => s.sent >= stopReturned && s.done <= startIssued);
      const after = samples.filter((s) => s.sent >= startReturned);
      const recovery = recoveryMs(samples, startReturned);
      const downLatency = down.map((s) => s.done - s.sent);
      const listenerBack = loggedAt(LISTENER_BACK, stopWall);
      const summary = {
        scenario: `pg_ctl stop -m ${mode}`,
        decisions: samples.length,
        before: before.length,
        stop_ms: round(stopReturned - stopIssued),
        while_stopping_answers: tally(stopping),
        while_down: down.length,
        while_down_answers: tally(down),
        allows_while_down: down.filter((s) => s.answer === "allowed").length,
        down_latency_p99_ms: round(percentile(downLatency, 99)),
        down_latency_max_ms: round(Math.max(0, ...downLatency)),
        start_ms: round(startReturned - startIssued),
        after: after.length,
        after_answers: tally(after),
        recovery_ms: round(recovery),
        listener_back_ms: listenerBack === undefined ? null : listenerBack - startWall,
        by_protocol_while_down: Object.fromEntries((["shim", "connect", "grpc"] as const).map((p) => [p, down.filter((s) => s.protocol === p).length])),
      };
      summaries.push(JSON.stringify(summary));

      // Before: the database answered and every answer was right.
      expect(before.length).toBeGreaterThan(50);
      expect(before.filter((s) => s.answer !== expected(s.case)).map((s) => `${s.protocol} ${s.case}: ${s.answer}`)).toEqual([]);
      // Throughout: never an answer a case may not get (an allow for a denied key above all).
      expect(samples.filter((s) => !permissible(s)).map((s) => `${s.protocol} ${s.case}: ${s.answer}`)).toEqual([]);
      // Down: every decision, on every protocol, is the unavailable deny.
      for (const protocol of ["shim", "connect", "grpc"] as const) expect(down.filter((s) => s.protocol === protocol).length).toBeGreaterThan(10);
      expect(down.filter((s) => s.answer !== "unavailable").map((s) => `${s.protocol} ${s.case}: ${s.answer}`)).toEqual([]);
      // Back: right again within 2 s of the cluster accepting connections, with the same keygate process.
      expect(recovery).toBeLessThan(RECOVERY_LIMIT_MS);
      // The change feed (and with it the key cache) is back soon too: retries are at most 2 s apart.
      expect(listenerBack).toBeDefined();
      expect(listenerBack! - startWall).toBeLessThan(RECOVERY_LIMIT_MS + 1_000);
      expect(after.filter((s) => s.sent >= startReturned + RECOVERY_LIMIT_MS).length).toBeGreaterThan(50);
      expect(exitedEarly).toBeUndefined();
    },
    60_000,
  );

  it(
    "pg_terminate_backend of every keygate connection: nothing denied is allowed, right again within 2 s, a key revoked just after is denied within 2 s",
    async () => {
      const load = startLoad([...ALL_CASES, "victim"]);
      let terminated = 0;
      let terminateIssued = 0;
      let terminateReturned = 0;
      let revokeReturned = Infinity;
      let terminateWall = 0;
      try {
        await sleep(LOAD_BEFORE_MS);
        terminateIssued = performance.now();
        terminated = await cluster.terminateBackends();
        terminateReturned = performance.now();
        terminateWall = Date.now();
        const revoke = await cli(["keys", "revoke", keys.victim.id]);
        revokeReturned = performance.now();
        watch.text("keys revoke output", revoke.stdout + revoke.stderr);
        expect(revoke.code, revoke.stderr).toBe(0);
        await until(() => performance.now() - revokeReturned >= LOAD_AFTER_MS, LOAD_AFTER_MS + 10_000, "load after the revoke");
      } finally {
        await load.stop();
      }
      expect(exitedEarly).toBeUndefined();
      const { samples } = load;
      const before = samples.filter((s) => s.done < terminateIssued);
      const after = samples.filter((s) => s.sent >= terminateReturned);
      const victimAfterRevoke = samples.filter((s) => s.case === "victim" && s.sent >= revokeReturned);
      const lastVictimAllow = Math.max(revokeReturned, ...victimAfterRevoke.filter((s) => s.answer === "allowed").map((s) => s.done));
      const others = samples.filter((s) => s.case !== "victim");
      const recovery = recoveryMs(others, terminateReturned);
      const listenerBack = loggedAt(LISTENER_BACK, terminateWall);
      const summary = {
        scenario: "pg_terminate_backend",
        decisions: samples.length,
        before: before.length,
        backends_terminated: terminated,
        after_terminate: after.length,
        after_terminate_answers: tally(after),
        unavailable_after_terminate: after.filter((s) => s.answer === "unavailable").length,
        recovery_ms: round(recovery),
        listener_back_ms: listenerBack === undefined ? null : listenerBack - terminateWall,
        revoke_cli_ms: round(revokeReturned - terminateReturned),
        victim_after_revoke: victimAfterRevoke.length,
        victim_allows_after_revoke: victimAfterRevoke.filter((s) => s.answer === "allowed").length,
        victim_revoked_within_ms: round(lastVictimAllow - revokeReturned),
      };
      summaries.push(JSON.stringify(summary));

      expect(before.length).toBeGreaterThan(50);
      expect(before.filter((s) => s.answer !== expected(s.case)).map((s) => `${s.protocol} ${s.case}: ${s.answer}`)).toEqual([]);
      // The pool's connections and the LISTEN one (at least two) were killed.
      expect(terminated).toBeGreaterThanOrEqual(2);
      expect(samples.filter((s) => !permissible(s, revokeReturned)).map((s) => `${s.protocol} ${s.case}: ${s.answer}`)).toEqual([]);
      expect(recovery).toBeLessThan(RECOVERY_LIMIT_MS);
      expect(listenerBack).toBeDefined();
      expect(listenerBack! - terminateWall).toBeLessThan(RECOVERY_LIMIT_MS + 1_000);
      // The revoke reached this server although its listener had just lost its connection.
      expect(lastVictimAllow - revokeReturned).toBeLessThan(RECOVERY_LIMIT_MS);
      expect(victimAfterRevoke.filter((s) => s.sent >= revokeReturned + RECOVERY_LIMIT_MS && s.answer !== "revoked")).toEqual([]);
      expect(victimAfterRevoke.filter((s) => s.sent >= revokeReturned + RECOVERY_LIMIT_MS).length).toBeGreaterThan(10);
      expect(exitedEarly).toBeUndefined();
    },
    60_000,
  );

  it("no key in any output, error, trace or /metrics; the cluster holds hashes, never a key", async () => {
    expect(exitedEarly).toBeUndefined();
    await watch.fetchText("metrics", `${server.url}/metrics`);
    watch.text("keygate output", server.output());
    watch.text("postgres log", await cluster.log());

    const dump = await dumpPostgres(cluster.url);
    for (const key of Object.values(keys)) {
      expect(dump).not.toContain(key.key);
      expect(dump).toContain(createHash("sha256").update(key.key).digest("hex"));
    }
    expect(watch.counts().texts).toBeGreaterThan(10);
    expect(watch.leaks()).toEqual([]);
  });
});
