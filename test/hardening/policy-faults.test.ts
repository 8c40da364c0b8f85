import { readFileSync } from "node:fs";
import { appendFile, cp, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { loadPolicy } from "../../src/core/policy/policy.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { createKey, POLICY_DIR, runCli, startServerProcess, type ServerProcess } from "../support/keygate-process.js";
import { startLeakWatch, type LeakWatch } from "../support/leak-watch.js";

/**
 * Broken policy files written while keygate decides under sustained load
 * (Cube callbacks and Authorize over Connect, a fixed set of requests whose
 * answers are known). Each fault is written in place in the watched copy of
 * policies/: a syntax error, an unknown column (in the CSV and in the
 * model's matcher), a truncated file, an empty file, a NUL byte, a file
 * written in two chunks with a pause (cut mid-line, and cut on a line
 * boundary so the first chunk alone is a valid, shorter policy), the file
 * deleted, the directory swapped for a broken one. Not one decision may
 * change: each fault is logged naming file:line and shows in readiness (and
 * `keygate status` on PGlite), and the good policy is put back. Then a valid
 * new policy renamed into place is picked up: from its "policy reloaded" log
 * line on, every answer is the new policy's, with no error in between.
 *
 * A file written in place passes through partial states. keygate reloads
 * only after the directory has been quiet for the debounce, waits until no
 * policy file was modified in the last 100 ms, and keeps a read only if
 * nothing changed while it read (policy-source.ts). A writer that pauses for
 * less than that mid-file is never seen half-way; a longer pause that leaves
 * a broken prefix is refused; a longer pause on a line boundary would serve
 * the shorter policy until the rest arrives, which is why policies should be
 * replaced atomically (temp file + rename).
 */

const DEBOUNCE_MS = 100;
const onPglite = testDatabaseKind === "pglite";

type Role = "reader" | "writer" | "admin";
interface Probe {
  role: Role;
  method: string;
  path: string;
  /** Allowed under the shipped policy (A) and under the renamed-in policy (C). */
  a: boolean;
  c: boolean;
}

/** C: readers may no longer GET a sandbox (nor writers, who inherit it), but may GET /audit. */
const READER_GET_SANDBOX = "p, reader, *, *, /sandboxes/:id, ^(GET|HEAD)$";
const PROBES: Probe[] = [
  { role: "reader", method: "GET", path: "/sandboxes/abc", a: true, c: false },
  { role: "reader", method: "GET", path: "/audit", a: false, c: true },
  { role: "reader", method: "DELETE", path: "/sandboxes/abc", a: false, c: false },
  { role: "reader", method: "GET", path: "/templates/t1", a: true, c: true },
  { role: "writer", method: "GET", path: "/sandboxes/abc", a: true, c: false },
  { role: "writer", method: "POST", path: "/sandboxes", a: true, c: true },
  { role: "writer", method: "POST", path: "/sandboxes/abc/pause", a: true, c: true },
  { role: "writer", method: "PUT", path: "/sandboxes/abc/network", a: true, c: true },
  { role: "writer", method: "DELETE", path: "/sandboxes/abc", a: true, c: true },
  // Shared things are platform's, and admin has no catch-all.
  { role: "writer", method: "PATCH", path: "/templates/t1", a: false, c: false },
  { role: "admin", method: "DELETE", path: "/volumes/v1", a: false, c: false },
  { role: "admin", method: "OPTIONS", path: "/anything/at/all", a: false, c: false },
  { role: "admin", method: "PUT", path: "/sandboxes/abc/network", a: true, c: true },
];

let watch: LeakWatch;
let data: TestDataDir;
let server: ServerProcess;
let dir: string;
// Read at once: the faults below are built from them.
const shipped = readFileSync(join(POLICY_DIR, "policy.csv"), "utf8");
const shippedModel = readFileSync(join(POLICY_DIR, "model.conf"), "utf8");
let versionA: string;
const keys = {} as Record<Role, string>;
const figures = { database: testDatabaseKind, decisions: 0, changed: 0, errors: 0, broken_writes: 0, faults: [] as string[], rename_to_log_ms: 0, rename_to_first_new_decision_ms: 0 };

/** Every answer: which probe, when it was sent and answered (performance.now()), and what it said. */
interface Answer {
  probe: number;
  via: "shim" | "authorize";
  sentAt: number;
  doneAt: number;
  allowed?: boolean;
  error?: string;
}
const answers: Answer[] = [];
let loadRunning = false;
let loadDone: Promise<void> = Promise.resolve();

// --- the server's log, read incrementally ----------------------------------

type LogLine = Record<string, unknown> & { msg: string; at: number };
const logs: LogLine[] = [];
let logOffset = 0;

function readLogs(): void {
  const text = server.output();
  const end = text.lastIndexOf("\n") + 1;
  if (end <= logOffset) return;
  const at = performance.now();
  for (const line of text.slice(logOffset, end).split("\n")) {
    if (line.startsWith("{")) logs.push({ ...(JSON.parse(line) as LogLine), at });
  }
  logOffset = end;
}

async function nextLog(from: number, match: (line: LogLine) => boolean, what: string, timeoutMs = 10_000): Promise<LogLine> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    readLogs();
    const found = logs.slice(from).find(match);
    if (found) return found;
    if (performance.now() > deadline) throw new Error(`no ${what} log line in ${timeoutMs} ms; last lines:\n${logs.slice(-10).map((l) => JSON.stringify(l)).join("\n")}`);
    await sleep(5);
  }
}

const reloadLines = (from: number) => {
  readLogs();
  return logs.slice(from).filter((l) => l.msg === "policy reloaded" || l.msg === "policy reload failed");
};

// --- load ---------------------------------------------------------------------

function startLoad(): void {
  loadRunning = true;
  const authorize = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
  const shimLoop = async (offset: number) => {
    for (let n = offset; loadRunning; n++) {
      const i = n % PROBES.length;
      const probe = PROBES[i]!;
      const sentAt = performance.now();
      try {
        const response = await cubeRequest(server.url, bearer(keys[probe.role], probe.path, probe.method));
        const doneAt = performance.now();
        if (response.status === 200 || response.status === 403) answers.push({ probe: i, via: "shim", sentAt, doneAt, allowed: response.status === 200 });
        else answers.push({ probe: i, via: "shim", sentAt, doneAt, error: `${response.status} ${response.body}` });
      } catch (error) {
        answers.push({ probe: i, via: "shim", sentAt, doneAt: performance.now(), error: (error as Error).message });
      }
    }
  };
  const authorizeLoop = async (offset: number) => {
    for (let n = offset; loadRunning; n++) {
      const i = n % PROBES.length;
      const probe = PROBES[i]!;
      const sentAt = performance.now();
      try {
        const r = await authorize.authorize({ credential: keys[probe.role], path: probe.path, method: probe.method, namespace: "", org: "" });
        const doneAt = performance.now();
        if (r.allowed || r.reason === Reason.FORBIDDEN) answers.push({ probe: i, via: "authorize", sentAt, doneAt, allowed: r.allowed });
        else answers.push({ probe: i, via: "authorize", sentAt, doneAt, error: `${Reason[r.reason]} ${r.message}` });
      } catch (error) {
        answers.push({ probe: i, via: "authorize", sentAt, doneAt: performance.now(), error: (error as Error).message });
      }
    }
  };
  loadDone = Promise.all([0, 3, 6, 9].flatMap((o) => [shimLoop(o), authorizeLoop(o + 1)])).then(() => {});
}

async function stopLoad(): Promise<void> {
  loadRunning = false;
  await loadDone;
}

// --- setup --------------------------------------------------------------------

beforeAll(async () => {
  watch = await startLeakWatch();
  data = await createTestDataDir();
  expect(shipped).toContain(READER_GET_SANDBOX);
  for (const role of ["reader", "writer", "admin"] as const) {
    keys[role] = (await createKey(["--org", "acme", "--role", role, "--name", `faults-${role}`], { cwd: data.dir, env: { ...data.env, ...watch.env } })).key;
    watch.key(keys[role]);
  }
  dir = join(data.dir, "policies");
  await cp(POLICY_DIR, dir, { recursive: true });
  versionA = (await loadPolicy(dir)).info.version;
  server = await startServerProcess(["--policy-dir", dir], { cwd: data.dir, env: { ...data.env, ...watch.env, KEYGATE_POLICY_RELOAD_DEBOUNCE: `${DEBOUNCE_MS}ms` } });
});

afterAll(async () => {
  loadRunning = false;
  await loadDone;
  if (server) {
    watch.text("server output", server.output());
    await server.stop();
    watch.text("server output (after stop)", server.output());
  }
  await data?.dispose();
  await watch?.close();
  console.log("[hardening] policy-faults:", JSON.stringify(figures));
});

async function readiness(): Promise<{ ready: boolean; checks: { policy: { ok: boolean; version?: string; error?: string } } }> {
  const response = await fetch(`${server.url}/readyz`);
  const text = await response.text();
  watch.text("readyz", text);
  return JSON.parse(text) as Awaited<ReturnType<typeof readiness>>;
}

/** Waits until readiness says the policy in force is `version` and no reload error is pending. */
async function settledOn(version: string, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const { checks } = await readiness();
    if (checks.policy.version === version && checks.policy.error === undefined) return;
    if (performance.now() > deadline) throw new Error(`readiness never settled on ${version}: ${JSON.stringify(checks.policy)}`);
    await sleep(20);
  }
}

const path = (name: string) => join(dir, name);
/** The shipped policy with `cut` characters of line `line` (1-based) left and nothing after. */
function cutInLine(line: number, keep: number): string {
  const lines = shipped.split("\n");
  return `${lines.slice(0, line - 1).join("\n")}\n${lines[line - 1]!.slice(0, keep)}`;
}
const lineOf = (text: string) => shipped.split("\n").findIndex((l) => l === text) + 1;
const restoreCsv = () => writeFile(path("policy.csv"), shipped);

interface Fault {
  name: string;
  /** Writes the fault; returns when it is on disk. */
  write: () => Promise<void>;
  /** The error logged (and shown by readiness and status); undefined: no reload may happen at all. */
  error: RegExp | undefined;
  /** Puts the good policy back (default: policy.csv rewritten in place). */
  restore?: () => Promise<void>;
}

const writerTimeout = "p, writer, *, *, /sandboxes/:id/timeout, ^POST$";
const FAULTS: Fault[] = [
  { name: "syntax error", write: () => writeFile(path("policy.csv"), `${shipped}\np, reader, *, *, /x, ^(GET$\n`), error: /^policy\.csv:\d+: cannot parse .*unmatched/ },
  { name: "unknown column (a sixth CSV field)", write: () => writeFile(path("policy.csv"), `${shipped}\np, reader, *, *, /x, ^GET$, deny\n`), error: /^policy\.csv:\d+: a "p" line has 5 fields, this one has 6$/ },
  {
    name: "unknown column (the model's matcher names p.route)",
    write: () => writeFile(path("model.conf"), shippedModel.replace("keyMatch2(r.path, p.path)", "keyMatch2(r.path, p.route)")),
    error: /^model\.conf:23: the matcher uses p\.route, but "p" has no field "route"/,
    restore: () => writeFile(path("model.conf"), shippedModel),
  },
  { name: "truncated file (cut inside a rule)", write: () => writeFile(path("policy.csv"), cutInLine(lineOf(writerTimeout), 20)), error: new RegExp(`^policy\\.csv:${lineOf(writerTimeout)}: a "p" line has 5 fields, this one has 4$`) },
  { name: "empty file", write: () => writeFile(path("policy.csv"), ""), error: /^policy\.csv: is empty \(0 bytes\)/ },
  { name: "NUL byte", write: () => writeFile(path("policy.csv"), shipped.replace(writerTimeout, writerTimeout.replace("/timeout", "/time\0out"))), error: new RegExp(`^policy\\.csv:${lineOf(writerTimeout)}: contains a NUL byte`) },
  {
    name: "two chunks, cut inside a rule, long pause",
    write: () => writeFile(path("policy.csv"), cutInLine(lineOf(writerTimeout), 30)),
    error: new RegExp(`^policy\\.csv:${lineOf(writerTimeout)}: a "p" line has 5 fields`),
    // The second chunk, after the failure was logged: the file is whole again.
    restore: () => appendFile(path("policy.csv"), shipped.slice(cutInLine(lineOf(writerTimeout), 30).length)),
  },
  {
    name: "two chunks, the first a valid prefix (no writer or admin rules), short pause",
    write: async () => {
      const prefix = `${shipped.split("\n").slice(0, lineOf("# --- writer ---------------------------------------------------------------")).join("\n")}\n`;
      await writeFile(path("policy.csv"), prefix);
      await sleep(DEBOUNCE_MS / 2);
      await appendFile(path("policy.csv"), shipped.slice(prefix.length));
    },
    error: undefined,
    restore: async () => {},
  },
  { name: "file deleted", write: () => rm(path("policy.csv")), error: /^no \.csv policy files in / },
  {
    name: "directory swapped for a broken one",
    write: async () => {
      const broken = `${dir}.broken`;
      await cp(dir, broken, { recursive: true });
      await writeFile(join(broken, "policy.csv"), `${shipped}\np, reader, *, *\n`);
      await rename(dir, `${dir}.good`);
      await rename(broken, dir);
    },
    error: /^policy\.csv:\d+: a "p" line has 5 fields, this one has 3$/,
    restore: async () => {
      await rename(dir, `${dir}.broken`);
      await rename(`${dir}.good`, dir);
      await rm(`${dir}.broken`, { recursive: true, force: true });
    },
  },
];

describe("broken policy files under load", () => {
  it("the load answers as the shipped policy says before any fault", async () => {
    startLoad();
    await sleep(500);
    const seen = answers.filter((a) => a.doneAt > 0);
    expect(seen.length).toBeGreaterThan(50);
    expect(seen.filter((a) => a.error !== undefined)).toEqual([]);
    expect(seen.filter((a) => a.allowed !== PROBES[a.probe]!.a)).toEqual([]);
  });

  it.each(FAULTS.map((f) => [f.name, f] as const))("%s: no decision changes, the error is reported, the good policy goes back", async (_name, fault) => {
    const from = logs.length;
    readLogs();
    const mark = logs.length;
    await fault.write();
    figures.broken_writes++;
    figures.faults.push(fault.name);
    if (fault.error) {
      const failed = await nextLog(mark, (l) => l.msg === "policy reload failed" && fault.error!.test(String(l.error)), `policy reload failed (${fault.name})`);
      expect(failed).toMatchObject({ level: "error", serving_version: versionA });
      const { ready, checks } = await readiness();
      expect(ready).toBe(true); // the last good policy still decides
      // The public /readyz says a reload failed, never the rule text or file:line (those are in the log and status, below).
      expect(checks.policy).toEqual({ ok: true, version: versionA, error: "last reload failed: still serving this version (details in the log and keygate status)" });
      if (onPglite) {
        const status = await runCli(["status", "--json"], { cwd: data.dir, env: { ...data.env, ...watch.env } });
        watch.text(`status (${fault.name})`, status.stdout + status.stderr);
        expect(status.code, status.stderr).toBe(0);
        const json = JSON.parse(status.stdout) as { policy: { version: string; reload: { lastError: { message: string } | null } } };
        expect(json.policy.version).toBe(versionA);
        expect(json.policy.reload.lastError?.message).toMatch(fault.error);
      }
    } else {
      // Nothing for the watcher to act on but the whole file: no reload, failed or not.
      await sleep(DEBOUNCE_MS * 3 + 300);
      expect(reloadLines(mark)).toEqual([]);
    }
    await (fault.restore ?? restoreCsv)();
    await settledOn(versionA);
    // Whatever happened in between, nothing was ever swapped in.
    expect(reloadLines(from).filter((l) => l.msg === "policy reloaded")).toEqual([]);
  });

  it("no decision changed, and none failed, while the faults were written", () => {
    const during = answers.slice();
    figures.decisions = during.length;
    figures.errors = during.filter((a) => a.error !== undefined).length;
    figures.changed = during.filter((a) => a.error === undefined && a.allowed !== PROBES[a.probe]!.a).length;
    expect(during.filter((a) => a.error !== undefined).slice(0, 5)).toEqual([]);
    expect(figures.changed).toBe(0);
    // Every probe was asked many times, over both paths.
    for (const i of PROBES.keys()) for (const via of ["shim", "authorize"]) expect(during.filter((a) => a.probe === i && a.via === via).length).toBeGreaterThan(5);
  });

  it("an atomic rename of a valid new policy is picked up: then every decision is the new policy's, with no error in between", async () => {
    const policyC = `${shipped.replace(READER_GET_SANDBOX, `# (removed) ${READER_GET_SANDBOX}`)}\np, reader, *, *, /audit, ^GET$\n`;
    readLogs();
    const mark = logs.length;
    const before = answers.length;
    await writeFile(path(".policy.csv.tmp"), policyC);
    const renamedAt = performance.now();
    await rename(path(".policy.csv.tmp"), path("policy.csv"));
    const versionC = (await loadPolicy(dir)).info.version;
    const reloaded = await nextLog(mark, (l) => l.msg === "policy reloaded", "policy reloaded (C)");
    expect(reloaded).toMatchObject({ version: versionC, previous_version: versionA, trigger: "file change" });
    figures.rename_to_log_ms = Math.round(reloaded.at - renamedAt);
    await sleep(500);
    await stopLoad();

    const after = answers.slice(before);
    expect(after.filter((a) => a.error !== undefined)).toEqual([]);
    expect(reloadLines(mark).map((l) => l.msg)).toEqual(["policy reloaded"]);
    // Sent once the log line was read: the new policy's answer, every time.
    const settled = after.filter((a) => a.sentAt > reloaded.at);
    expect(settled.length).toBeGreaterThan(50);
    expect(settled.filter((a) => a.allowed !== PROBES[a.probe]!.c)).toEqual([]);
    // In between: each answer is one policy's or the other's, never anything else.
    expect(after.filter((a) => a.allowed !== PROBES[a.probe]!.a && a.allowed !== PROBES[a.probe]!.c)).toEqual([]);
    const firstNew = after.find((a) => PROBES[a.probe]!.a !== PROBES[a.probe]!.c && a.allowed === PROBES[a.probe]!.c);
    figures.rename_to_first_new_decision_ms = Math.round(firstNew!.doneAt - renamedAt);
    figures.decisions = answers.length;
    expect(await readiness()).toMatchObject({ ready: true, checks: { policy: { version: versionC } } });
  });

  it("no key appears in any output, error message or trace", async () => {
    for (const a of answers) if (a.error) watch.text("load error", a.error);
    watch.text("server output", server.output());
    await watch.fetchText("metrics", `${server.url}/metrics`);
    expect(watch.leaks()).toEqual([]);
  });
});
