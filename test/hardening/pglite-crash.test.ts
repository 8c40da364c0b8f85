import { createHash } from "node:crypto";
import { cp, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { PGDATA_DIR } from "../../src/core/db/connect.js";
import { LOCK_FILE } from "../../src/core/db/data-dir-lock.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { findLeaks, readDataDir, startLeakWatch, type LeakWatch } from "../support/leak-watch.js";

/**
 * The embedded database under SIGKILL: `keygate serve` on a PGlite data dir
 * takes concurrent ManageKey creates and revokes (over Connect, and revokes
 * through the CLI, which reaches the server by its control socket), and is
 * killed with SIGKILL the instant the last acknowledgement arrives (or, in
 * one round, while requests are still in flight). On restart on the same
 * dir: it starts (the dead pid's lock and socket are taken over, PGlite
 * recovers from its WAL), every acknowledged creation works, every
 * acknowledged revocation is denied as revoked, and `keygate keys list`
 * shows them. Always PGlite, whatever KEYGATE_TEST_DATABASE_URL says.
 *
 * Why it holds: PGlite's Node data dir is Emscripten's NODEFS, whose writes
 * are plain fs.writeSync calls (no in-memory copy to flush), and Postgres
 * writes a commit's WAL before it answers (synchronous_commit is on). PGlite
 * runs with fsync off ("-F", and NODEFS has no fsync), so a commit is in the
 * kernel's page cache when acknowledged: safe against a killed process, not
 * against power loss or a kernel crash.
 */

const READER_PATH = "/sandboxes/abc";

let watch: LeakWatch;
let dir: string;
let dataDir: string;
let admin: CreatedKeyJson;
/** Every key whose creation was acknowledged: id → plaintext. */
const created = new Map<string, string>();
/** Every key whose revocation was acknowledged. */
const revoked = new Set<string>();
/** Creations sent but not acknowledged (killed in flight): their ids are unknown. */
let unacknowledgedCreates = 0;
const figures = { rounds: 0, acknowledged_creates: 0, acknowledged_revokes: 0, cli_revokes: 0, in_flight_at_kill: 0, unacknowledged_committed: 0, lost: 0, restart_ms: [] as number[], create_ms_sequential: 0 };
const outputs: string[] = [];

beforeAll(async () => {
  watch = await startLeakWatch();
  dir = await mkdtemp(join(tmpdir(), "keygate-crash-"));
  dataDir = join(dir, ".keygate");
  // A migrated PGlite template, copied: the same as createTestDataDir on PGlite, whatever the suite targets.
  await cp(join(inject("pgliteTemplateDir"), PGDATA_DIR), join(dataDir, PGDATA_DIR), { recursive: true });
  admin = await createKey(["--org", "acme", "--role", "admin", "--name", "crash-admin"], { cwd: dir, env: watch.env });
  watch.key(admin.key);
});

afterAll(async () => {
  for (const [i, text] of outputs.entries()) watch.text(`server run ${i + 1}`, text);
  await rm(dir, { recursive: true, force: true });
  await watch?.close();
  console.log("[hardening] pglite-crash:", JSON.stringify(figures));
});

async function startServer(): Promise<{ server: ServerProcess; ms: number }> {
  const started = performance.now();
  // Never DATABASE_URL: childEnv drops the outer one, and nothing here sets it.
  const server = await startServerProcess([], { cwd: dir, env: watch.env });
  const ms = Math.round(performance.now() - started);
  void server.exited.then(() => outputs.push(server.output()));
  return { server, ms };
}

function keyClient(server: ServerProcess): Client<typeof KeyService> {
  const auth: Interceptor = (next) => (req) => {
    req.header.set("Authorization", `Bearer ${admin.key}`);
    return next(req);
  };
  return createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", interceptors: [auth] }));
}

async function createOne(client: Client<typeof KeyService>, name: string): Promise<{ id: string; plaintext: string }> {
  const response = await client.manageKey({
    action: { case: "create", value: { name, org: "", namespace: "", roles: ["reader"], expiry: { case: undefined }, rateLimit: "" } },
  });
  if (response.result.case !== "created") throw new Error(`expected a created key, got ${response.result.case}`);
  const { key, plaintext } = response.result.value;
  watch.key(plaintext);
  return { id: key!.id, plaintext };
}

async function revokeOne(client: Client<typeof KeyService>, id: string): Promise<void> {
  const response = await client.manageKey({ action: { case: "revoke", value: { id } } });
  if (response.result.case !== "key" || response.result.value.enabled) throw new Error(`revoke ${id} did not disable the key`);
}

/**
 * One round: `creates` creations and revocations of `revokeIds` at once over
 * Connect, plus `cliRevokeIds` revoked through the CLI; SIGKILL the moment
 * the last of them is acknowledged.
 */
async function crashRound(server: ServerProcess, round: number, work: { creates: number; revokeIds: string[]; cliRevokeIds?: string[] }) {
  const client = keyClient(server);
  const total = work.creates + work.revokeIds.length + (work.cliRevokeIds?.length ?? 0);
  let acknowledged = 0;
  const acknowledge = () => {
    acknowledged++;
    // Synchronously, in the same tick as the last acknowledgement.
    if (acknowledged === total) server.child.kill("SIGKILL");
  };
  const errors: string[] = [];
  const failed = (error: unknown) => {
    errors.push((error as Error).message);
    watch.text(`round ${round} request error`, (error as Error).message);
  };
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < work.creates; i++) {
    jobs.push(
      createOne(client, `crash-r${round}-${i}`).then(({ id, plaintext }) => {
        // An answer that got out before the kill is an acknowledgement like any other.
        created.set(id, plaintext);
        acknowledge();
      }, (error: unknown) => {
        unacknowledgedCreates++;
        failed(error);
      }),
    );
  }
  for (const id of work.revokeIds) {
    jobs.push(
      revokeOne(client, id).then(() => {
        revoked.add(id);
        acknowledge();
      }, failed),
    );
  }
  for (const id of work.cliRevokeIds ?? []) {
    jobs.push(
      runCli(["keys", "revoke", id], { cwd: dir, env: watch.env }).then((result) => {
        watch.text(`round ${round} cli revoke`, result.stdout + result.stderr);
        if (result.code !== 0) return failed(new Error(`keys revoke ${id} exited ${result.code}: ${result.stderr}`));
        revoked.add(id);
        figures.cli_revokes++;
        acknowledge();
      }, failed),
    );
  }
  await Promise.all(jobs);
  const code = await server.exited;
  return { acknowledged, errors, code };
}

/**
 * Requests kept in flight: `workers` loops, each sending the next create (or
 * revoke, while `revokeIds` last) as soon as its previous one is answered;
 * SIGKILL once `killAfter` are acknowledged, with a request outstanding on
 * every loop. Answers that still arrive count as acknowledged.
 */
async function inFlightRound(server: ServerProcess, round: number, { workers, killAfter, revokeIds }: { workers: number; killAfter: number; revokeIds: string[] }) {
  const client = keyClient(server);
  const queue = [...revokeIds];
  let acknowledged = 0;
  let killed = false;
  let lateAcknowledged = 0;
  let unanswered = 0;
  let sent = 0;
  const acknowledge = () => {
    acknowledged++;
    if (killed) lateAcknowledged++;
    else if (acknowledged === killAfter) {
      killed = true;
      server.child.kill("SIGKILL");
    }
  };
  const loop = async (worker: number) => {
    for (let i = 0; !killed; i++) {
      const revokeId = worker % 2 === 0 ? queue.shift() : undefined;
      sent++;
      try {
        if (revokeId) {
          await revokeOne(client, revokeId);
          revoked.add(revokeId);
        } else {
          const { id, plaintext } = await createOne(client, `crash-r${round}-w${worker}-${i}`);
          created.set(id, plaintext);
        }
        acknowledge();
      } catch (error) {
        unanswered++;
        if (!revokeId) unacknowledgedCreates++;
        watch.text(`round ${round} request error`, (error as Error).message);
        return;
      }
    }
  };
  await Promise.all(Array.from({ length: workers }, (_, w) => loop(w)));
  return { acknowledged, lateAcknowledged, unanswered, sent, code: await server.exited };
}

/** Every acknowledged change is there: creations allow, revocations deny as revoked, keys list shows both. */
async function verify(server: ServerProcess): Promise<number> {
  const authorize = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
  let lost = 0;
  const problems: string[] = [];
  await Promise.all(
    [...created].map(async ([id, plaintext]) => {
      const decision = await authorize.authorize({ credential: plaintext, path: READER_PATH, method: "GET", namespace: "", org: "" });
      const want = revoked.has(id) ? { allowed: false, reason: Reason.REVOKED } : { allowed: true, reason: Reason.ALLOWED };
      if (decision.allowed !== want.allowed || decision.reason !== want.reason || (want.allowed && decision.key?.id !== id)) {
        lost++;
        problems.push(`${id}: ${Reason[decision.reason]} ${decision.message}, want ${Reason[want.reason]}`);
      }
    }),
  );
  expect(problems).toEqual([]);
  // The Cube callback agrees on a sample.
  const sample = [...created].slice(0, 4);
  for (const [id, plaintext] of sample) {
    const response = await cubeRequest(server.url, bearer(plaintext, READER_PATH, "GET"));
    expect(response.status, response.body).toBe(revoked.has(id) ? 401 : 200);
  }
  // keygate keys list, through the running server's control socket.
  const list = await runCli(["keys", "list", "--json", "--all", "--page-size", "1000"], { cwd: dir, env: watch.env });
  watch.text("keys list", list.stdout + list.stderr);
  expect(list.code, list.stderr).toBe(0);
  const listed = new Map((JSON.parse(list.stdout) as { keys: { id: string; enabled: boolean }[] }).keys.map((k) => [k.id, k.enabled]));
  for (const id of created.keys()) expect(listed.get(id), id).toBe(!revoked.has(id));
  // Keys that committed although their answer never arrived (killed in flight): allowed, and counted.
  figures.unacknowledged_committed = [...listed.keys()].filter((id) => id !== admin.id && !created.has(id)).length;
  return lost;
}

describe("SIGKILL right after acknowledging key changes (PGlite)", () => {
  it("measures a ManageKey create on PGlite (sequential)", async () => {
    const { server, ms } = await startServer();
    figures.restart_ms.push(ms);
    const client = keyClient(server);
    await createOne(client, "warm-up").then(({ id, plaintext }) => created.set(id, plaintext));
    const n = 20;
    const started = performance.now();
    for (let i = 0; i < n; i++) {
      const { id, plaintext } = await createOne(client, `timed-${i}`);
      created.set(id, plaintext);
    }
    figures.create_ms_sequential = Math.round(((performance.now() - started) / n) * 10) / 10;
    // No clean stop: this run ends like the others.
    server.child.kill("SIGKILL");
    await server.exited;
  });

  const rounds: { label: string; creates: number; revokes: number; cliRevokes?: number; inFlight?: boolean }[] = [
    { label: "creates only, killed at the last acknowledgement", creates: 30, revokes: 0 },
    { label: "creates and revokes, killed at the last acknowledgement", creates: 25, revokes: 15 },
    { label: "creates and revokes (some through the CLI), killed at the last acknowledgement", creates: 15, revokes: 10, cliRevokes: 3 },
    { label: "killed with requests still in flight", creates: 40, revokes: 12, inFlight: true },
    { label: "creates and revokes, killed at the last acknowledgement, again", creates: 20, revokes: 10 },
  ];

  it.each(rounds.map((r, i) => [i + 1, r] as const))("round %i: %s", async (round, { creates, revokes, cliRevokes = 0, inFlight }) => {
    const { server, ms } = await startServer();
    figures.restart_ms.push(ms);
    // The start after a SIGKILL: the dead server's lock is taken over, PGlite recovers, and everything acknowledged so far is there.
    expect(await verify(server)).toBe(0);

    const live = [...created.keys()].filter((id) => !revoked.has(id));
    const revokeIds = live.slice(0, revokes);
    const cliRevokeIds = live.slice(revokes, revokes + cliRevokes);
    if (inFlight) {
      const result = await inFlightRound(server, round, { workers: 12, killAfter: creates + revokes, revokeIds });
      expect(result.code).toBe(128);
      // Every loop had a request out when the kill landed; some answers may still have got out first.
      expect(result.unanswered).toBeGreaterThan(0);
      figures.in_flight_at_kill += result.unanswered + result.lateAcknowledged;
    } else {
      const result = await crashRound(server, round, { creates, revokeIds, cliRevokeIds });
      expect(result.code).toBe(128); // killed by the signal
      expect(result.errors).toEqual([]);
    }
    figures.rounds++;
    // The dead server left its lock behind (the next start must take it over).
    expect(JSON.parse(await readFile(join(dataDir, LOCK_FILE), "utf8"))).toMatchObject({ pid: server.child.pid, role: "server" });
  });

  it("the last restart has everything, logs no corruption, and stops cleanly", async () => {
    const { server, ms } = await startServer();
    figures.restart_ms.push(ms);
    figures.lost = await verify(server);
    expect(figures.lost).toBe(0);
    figures.acknowledged_creates = created.size;
    figures.acknowledged_revokes = revoked.size;
    expect(await server.stop()).toBe(0);
    // Nothing but keygate's own JSON log lines in any run: PGlite printed no recovery or corruption message.
    for (const text of outputs) {
      const foreign = text.split("\n").filter((line) => line.trim() !== "" && !line.startsWith("{"));
      expect(foreign).toEqual([]);
      expect(text).not.toMatch(/corrupt|invalid (page|record|checkpoint)|PANIC|could not (read|open)/i);
    }
    expect(unacknowledgedCreates).toBeGreaterThan(0); // the in-flight round did cut requests off
  });

  it("the data dir holds key hashes, never a plaintext key", async () => {
    const files = await readDataDir(dataDir);
    const [someId, somePlaintext] = [...created][0]!;
    const hash = createHash("sha256").update(somePlaintext, "utf8").digest("hex");
    // The scan looked where the keys are: the hash of a known key (and its id) is in there.
    expect(files.some(([, text]) => text.includes(hash))).toBe(true);
    expect(files.some(([, text]) => text.includes(someId))).toBe(true);
    expect(findLeaks(files, [admin.key, ...created.values()])).toEqual([]);
  });

  it("no key appears in any output, error message or trace", () => {
    for (const [i, text] of outputs.entries()) watch.text(`server run ${i + 1} (checked)`, text);
    expect(watch.counts().keys).toBeGreaterThan(100);
    expect(watch.leaks()).toEqual([]);
  });
});
