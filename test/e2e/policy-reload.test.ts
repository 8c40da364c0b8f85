import { cp, mkdtemp, readFile, rename, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { loadPolicy } from "../../src/core/policy/policy.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { createKey, POLICY_DIR, runCli, startServerProcess, type CliResult, type ServerProcess } from "../support/keygate-process.js";

/**
 * Hot reload against the real server. The policy directory is a copy of
 * policies/ in a temp dir (the shipped one is never touched). The promise
 * tested: once the server has logged "policy reloaded", no decision comes
 * from the old policy; a broken file never replaces a good policy, and says
 * where it is broken (log and `keygate status`); atomic renames and SIGHUP
 * reload too.
 */

const onPglite = testDatabaseKind === "pglite";
const READER_GET_SANDBOX = "p, reader, *, *, /sandboxes/:id, ^(GET|HEAD)$";
const AUDIT_RULE = "p, reader, *, *, /audit, ^GET$";

let data: TestDataDir;
let scratch: string;
let shipped: string;
let readerKey: string;

beforeAll(async () => {
  data = await createTestDataDir();
  scratch = await mkdtemp(join(tmpdir(), "keygate-policy-versions-"));
  shipped = await readFile(join(POLICY_DIR, "policy.csv"), "utf8");
  expect(shipped).toContain(READER_GET_SANDBOX);
  readerKey = (await createKey(["--role", "reader", "--name", "reload"], { cwd: data.dir, env: data.env })).key;
});

afterAll(async () => {
  await data?.dispose();
  await rm(scratch, { recursive: true, force: true });
});

/** A copy of the shipped policy dir for one server. */
async function policyDirCopy(name: string): Promise<string> {
  const dir = join(data.dir, name);
  await cp(POLICY_DIR, dir, { recursive: true });
  return dir;
}

/** Rules (p and g lines) in the shipped policy: policy B removes one and adds one. */
const shippedRules = () => shipped.split("\n").filter((line) => /^[pg],/.test(line.trim())).length;

/** The version keygate gives a policy.csv (with the shipped model and routes.yaml), computed as the server will. */
async function versionOf(csv: string): Promise<string> {
  const dir = await mkdtemp(join(scratch, "v-"));
  await cp(join(POLICY_DIR, "model.conf"), join(dir, "model.conf"));
  await cp(join(POLICY_DIR, "routes.yaml"), join(dir, "routes.yaml"));
  await writeFile(join(dir, "policy.csv"), csv);
  return (await loadPolicy(dir)).info.version;
}

/** Policy B: readers may no longer GET a sandbox, but may GET /audit. */
const policyB = () => shipped.replace(READER_GET_SANDBOX, "# (removed) " + READER_GET_SANDBOX) + `${AUDIT_RULE}\n`;

type LogLine = Record<string, unknown> & { msg: string };

function logLines(server: ServerProcess): LogLine[] {
  return server
    .output()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as LogLine);
}

/** Waits for a log line the server has not yet written when called (polls its output). */
async function nextLog(server: ServerProcess, match: (line: LogLine) => boolean, what: string, timeoutMs = 10_000): Promise<LogLine> {
  const seen = logLines(server).length;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = logLines(server).slice(seen).find(match);
    if (found) return found;
    if (Date.now() > deadline) throw new Error(`no ${what} log line in ${timeoutMs} ms:\n${server.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const shimStatus = async (server: ServerProcess, path: string, method = "GET") => (await cubeRequest(server.url, bearer(readerKey, path, method))).status;

const cli = (args: string[]): Promise<CliResult> => runCli(args, { cwd: data.dir, env: data.env });

describe("hot reload on file changes", () => {
  let server: ServerProcess;
  let dir: string;
  let versionB: string;

  beforeAll(async () => {
    dir = await policyDirCopy("policies-watch");
    server = await startServerProcess(["--policy-dir", dir], { cwd: data.dir, env: { ...data.env, KEYGATE_POLICY_RELOAD_DEBOUNCE: "100ms" } });
  });

  afterAll(async () => {
    expect(await server?.stop()).toBe(0);
  });

  it("once 'policy reloaded' is logged, the very next decision comes from the new policy", async () => {
    // Policy A (the shipped one) allows the reader to GET a sandbox.
    expect(await shimStatus(server, "/sandboxes/abc")).toBe(200);
    expect(await shimStatus(server, "/audit")).toBe(403);

    versionB = await versionOf(policyB());
    const reloaded = nextLog(server, (l) => l.msg === "policy reloaded" && l.version === versionB, "policy reloaded (B)");
    let reported = false;
    void reloaded.then(
      () => (reported = true),
      () => {},
    );
    await writeFile(join(dir, "policy.csv"), policyB());

    // Ask without pause while the reload happens: every answer to a request sent after the log line is from B.
    const answers: { afterReport: boolean; status: number }[] = [];
    let afterReport = 0;
    while (afterReport < 20) {
      const sentAfterReport = reported;
      answers.push({ afterReport: sentAfterReport, status: await shimStatus(server, "/sandboxes/abc") });
      if (sentAfterReport) afterReport++;
    }
    expect(answers.filter((a) => a.afterReport).map((a) => a.status)).toEqual(Array(20).fill(403));
    expect(await reloaded).toMatchObject({ level: "info", version: versionB, rules: shippedRules(), trigger: "file change" });

    // Authorize over Connect agrees, and B's new rule allows.
    const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const denied = await client.authorize({ credential: readerKey, path: "/sandboxes/abc", method: "GET" });
    expect({ allowed: denied.allowed, reason: denied.reason }).toEqual({ allowed: false, reason: Reason.FORBIDDEN });
    expect(await shimStatus(server, "/audit")).toBe(200);
  });

  it("a broken CSV keeps B serving, logs file:line and shows in keygate status", async () => {
    const broken = `${policyB()}p, writer, *, /broken\n`;
    const brokenLine = broken.split("\n").length - 1;
    const failed = nextLog(server, (l) => l.msg === "policy reload failed" && String(l.error).includes(`policy.csv:${brokenLine}:`), "policy reload failed");
    await writeFile(join(dir, "policy.csv"), broken);
    expect(await failed).toMatchObject({
      level: "error",
      error: `policy.csv:${brokenLine}: a "p" line has 5 fields, this one has 3`,
      serving_version: versionB,
    });

    expect(await shimStatus(server, "/sandboxes/abc")).toBe(403);
    expect(await shimStatus(server, "/audit")).toBe(200);

    // On Postgres `keygate status` reads the database itself and cannot see a server's reload state.
    if (!onPglite) return;
    const text = await cli(["status"]);
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^policy:\\s+\\S+ \\[policy\\.csv\\], ${shippedRules()} rules, version ${versionB}$`, "m"));
    expect(text.stdout).toMatch(/^loaded:\s+\S+ \(1 reload since start; watching for changes\)$/m);
    expect(text.stdout).toMatch(new RegExp(`^reload:\\s+FAILED at \\S+ \\(file change\\): policy\\.csv:${brokenLine}: a "p" line has 5 fields, this one has 3$`, "m"));
    expect(text.stdout).toContain(`still serving version ${versionB}`);
    const json = JSON.parse((await cli(["status", "--json"])).stdout) as { policy: { version: string; loadedAt: string; reload: Record<string, unknown> } };
    expect(json.policy).toMatchObject({
      version: versionB,
      reload: { watching: true, reloads: 1, lastError: { message: expect.stringContaining(`policy.csv:${brokenLine}:`), at: expect.any(String), trigger: "file change" } },
    });
    expect(Date.parse((json.policy.reload.lastError as { at: string }).at)).toBeGreaterThan(Date.parse(json.policy.loadedAt));
  });

  it("an atomic rename of a valid file is picked up, and clears the error", async () => {
    const policyC = `${policyB()}p, reader, *, *, /audit/:id, ^GET$\n`;
    const versionC = await versionOf(policyC);
    const reloaded = nextLog(server, (l) => l.msg === "policy reloaded" && l.version === versionC, "policy reloaded (C)");
    await writeFile(join(dir, ".policy.csv.tmp"), policyC);
    await rename(join(dir, ".policy.csv.tmp"), join(dir, "policy.csv"));
    expect(await reloaded).toMatchObject({ previous_version: versionB, rules: shippedRules() + 1 });
    expect(await shimStatus(server, "/audit/42")).toBe(200);
    expect(await shimStatus(server, "/sandboxes/abc")).toBe(403);

    if (!onPglite) return;
    const json = JSON.parse((await cli(["status", "--json"])).stdout) as { policy: Record<string, unknown> };
    expect(json.policy).toMatchObject({ version: versionC, rules: shippedRules() + 1, reload: { reloads: 2, lastError: null } });
    expect((await cli(["status"])).stdout).not.toMatch(/^reload:/m);
  });

  it("a change that leaves the version as it is logs no reload", async () => {
    const checked = nextLog(server, (l) => l.msg === "policy reloaded" || l.msg === "policy reload failed", "any reload", 1_500).catch(() => undefined);
    // A file that is not a policy file: the directory changed, the policy did not.
    await writeFile(join(dir, "README.txt"), "policy authors: edit policy.csv\n");
    expect(await checked).toBeUndefined();
  });
});

describe("SIGHUP", () => {
  let server: ServerProcess;
  let dir: string;

  beforeAll(async () => {
    dir = await policyDirCopy("policies-sighup");
    // A debounce of an hour: file changes alone reload nothing within this test.
    server = await startServerProcess(["--policy-dir", dir], { cwd: data.dir, env: { ...data.env, KEYGATE_POLICY_RELOAD_DEBOUNCE: "1h" } });
  });

  afterAll(async () => {
    expect(await server?.stop()).toBe(0);
  });

  it("reloads the policy at once, and says so when nothing changed", async () => {
    await writeFile(join(dir, "policy.csv"), policyB());
    const before = await cubeRequest(server.url, bearer(readerKey, "/sandboxes/abc", "GET"));
    expect(before.status, `${before.body}\n${server.output()}`).toBe(200); // not yet reloaded

    const versionB = await versionOf(policyB());
    const reloaded = nextLog(server, (l) => l.msg === "policy reloaded", "policy reloaded (SIGHUP)");
    server.child.kill("SIGHUP");
    expect(await reloaded).toMatchObject({ version: versionB, trigger: "SIGHUP" });
    expect(await shimStatus(server, "/sandboxes/abc")).toBe(403);

    const unchanged = nextLog(server, (l) => l.msg === "policy unchanged", "policy unchanged (SIGHUP)");
    server.child.kill("SIGHUP");
    expect(await unchanged).toMatchObject({ level: "info", version: versionB, trigger: "SIGHUP" });
    expect(server.child.exitCode).toBeNull();
  });
});
