import { access, cp, mkdir, writeFile } from "node:fs/promises";
import net from "node:net";
import { join } from "node:path";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, TEST_DATABASE_URL, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { cliBudgetMs, createKey, POLICY_DIR, runCli, startServerProcess, type ServerProcess } from "../support/keygate-process.js";

/**
 * `keygate serve` from start to stop: every bad setting refused at start
 * with a message naming it, graceful shutdown on SIGTERM and SIGINT (exit 0,
 * "stopped", lock released), and data that outlives the process.
 */

let data: TestDataDir;
const onPglite = testDatabaseKind === "pglite";
const running: ServerProcess[] = [];

beforeAll(async () => {
  data = await createTestDataDir();
});

afterAll(async () => {
  await Promise.all(running.map((server) => server.stop()));
  await data?.dispose();
});

async function start(args: string[] = [], env: Record<string, string> = {}): Promise<ServerProcess> {
  const server = await startServerProcess(args, { cwd: data.dir, env: { ...data.env, ...env } });
  running.push(server);
  return server;
}

const exists = (path: string) => access(path).then(
  () => true,
  () => false,
);

describe("a bad setting is refused at start, naming it", () => {
  let policies: Record<"noCsv" | "brokenCsv" | "badRegexp", string>;
  let busyPort: net.Server;

  beforeAll(async () => {
    const dir = (name: string) => join(data.dir, "bad-policies", name);
    policies = { noCsv: dir("no-csv"), brokenCsv: dir("broken-csv"), badRegexp: dir("bad-regexp") };
    for (const path of Object.values(policies)) {
      await mkdir(path, { recursive: true });
      await cp(join(POLICY_DIR, "model.conf"), join(path, "model.conf"));
    }
    await writeFile(join(policies.brokenCsv, "policy.csv"), "# fine\np, reader, *, *, /sandboxes, ^GET$\n\np, writer, *, /sandboxes\n");
    await writeFile(join(policies.badRegexp, "policy.csv"), "p, reader, *, *, /sandboxes, ^(GET$\n");
    busyPort = net.createServer();
    await new Promise<void>((resolve) => busyPort.listen(0, "127.0.0.1", resolve));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => (busyPort ? busyPort.close(() => resolve()) : resolve()));
  });

  const port = () => String((busyPort.address() as net.AddressInfo).port);

  it.each<[string, () => string[], Record<string, string>, () => (string | RegExp)[]]>([
    ["PORT=abc", () => [], { PORT: "abc" }, () => ['PORT: "abc" is not a whole number from 0 to 65535']],
    ["PORT=70000", () => [], { PORT: "70000" }, () => ['PORT: "70000" is not a whole number from 0 to 65535']],
    ["--port=-1", () => ["--port=-1"], {}, () => ['--port: "-1" is not a whole number']],
    ["--credential-priority junk", () => ["--credential-priority", "junk"], {}, () => ['--credential-priority/KEYGATE_CREDENTIAL_PRIORITY: "junk" must name both headers']],
    ["KEYGATE_CREDENTIAL_PRIORITY with one header", () => [], { KEYGATE_CREDENTIAL_PRIORITY: "x-api-key" }, () => ['KEYGATE_CREDENTIAL_PRIORITY: "x-api-key"']],
    ["KEYGATE_DEV=maybe", () => [], { KEYGATE_DEV: "maybe" }, () => ['KEYGATE_DEV: "maybe" is not a boolean']],
    ["DATABASE_URL=mysql://x", () => [], { DATABASE_URL: "mysql://x" }, () => ["DATABASE_URL: not a postgres:// or postgresql:// URL"]],
    ["--host with a space", () => ["--host", "bad host"], {}, () => ['--host/KEYGATE_HOST: "bad host" is not a host name or IP address']],
    ["KEYGATE_LOG_LEVEL=loud", () => [], { KEYGATE_LOG_LEVEL: "loud" }, () => ['KEYGATE_LOG_LEVEL: "loud" must be one of debug, info, warn, error']],
    ["--shim-path without a slash", () => ["--shim-path", "verify"], {}, () => ['--shim-path/KEYGATE_SHIM_PATH: "verify" must be a plain absolute path']],
    ["--key-cache-ttl 5 parsecs", () => ["--key-cache-ttl", "5pc"], {}, () => ['--key-cache-ttl: invalid duration "5pc"']],
    ["KEYGATE_KEY_PREFIX with a space", () => [], { KEYGATE_KEY_PREFIX: "sk live" }, () => ['--key-prefix/KEYGATE_KEY_PREFIX: "sk live" must be 1-16 letters']],
    ["an unknown flag", () => ["--prot", "80"], {}, () => ["keygate serve: unknown flag --prot; did you mean --port?"]],
    ["several at once, each named", () => [], { PORT: "abc", KEYGATE_DEV: "maybe" }, () => ['PORT: "abc"', 'KEYGATE_DEV: "maybe"']],
    ["a missing policy dir", () => ["--policy-dir", "/nonexistent/keygate-policies"], {}, () => ["cannot load the policy (--policy-dir /nonexistent/keygate-policies): policy directory /nonexistent/keygate-policies does not exist"]],
    ["a policy dir with no CSV", () => ["--policy-dir", policies.noCsv], {}, () => [`cannot load the policy (--policy-dir ${policies.noCsv}): no .csv policy files in ${policies.noCsv}`]],
    ["a broken policy CSV, naming file:line", () => ["--policy-dir", policies.brokenCsv], {}, () => [`cannot load the policy (--policy-dir ${policies.brokenCsv}): policy.csv:4: a "p" line has 5 fields, this one has 3`]],
    ["a bad method pattern, naming file:line", () => ["--policy-dir", policies.badRegexp], {}, () => [/policy\.csv:1: cannot parse .*unmatched "\("/]],
    ["a port already in use", () => ["--port", port()], {}, () => [`cannot listen on 127.0.0.1:${port()}`]],
    ["an unreachable Postgres", () => [], { DATABASE_URL: "postgres://keygate:secret@127.0.0.1:1/keygate" }, () => ["cannot open the database (postgres://keygate:***@127.0.0.1:1/keygate)"]],
  ])("%s", async (_, args, env, messages) => {
    const result = await runCli(["serve", ...args()], { cwd: data.dir, env: { ...data.env, ...env }, timeoutMs: 20_000 });
    expect(result.code).not.toBe(0);
    for (const message of messages()) {
      if (typeof message === "string") expect(result.stderr).toContain(message);
      else expect(result.stderr).toMatch(message);
    }
    expect(result.stderr).not.toContain("keygate listening");
    expect(result.stderr).not.toMatch(/\n\s+at /); // a message, not a stack trace
    expect(result.stderr).not.toContain("secret"); // a database password is never echoed
  });

  it.runIf(onPglite)("a refused start leaves no lock behind", async () => {
    expect(await exists(join(data.dataDir, "keygate.lock"))).toBe(false);
  });
});

describe("shutdown and restart", () => {
  const cli = () => ({ cwd: data.dir, env: data.env });

  it.each(["SIGTERM", "SIGINT"] as const)("%s: graceful (exit 0, stopped), lock released, data kept", { timeout: cliBudgetMs(7) }, async (signal) => {
    // No forced close: open connections must not hold a graceful shutdown (the test times out if they do).
    const server = await start([], { KEYGATE_SHUTDOWN_TIMEOUT: "1h" });
    const made = await createKey(["--org", "acme", "--role", "reader", "--name", `before-${signal}`], cli());
    expect((await cubeRequest(server.url, bearer(made.key, "/sandboxes/abc", "GET"))).headers["x-auth-user"]).toBe(made.id);

    // Open connections do not hold the shutdown: an idle HTTP/1.1 keep-alive and an HTTP/2 session.
    const idle = net.connect(server.port, "127.0.0.1");
    await new Promise<void>((resolve) => idle.once("connect", () => resolve()));
    idle.write(`POST /verify HTTP/1.1\r\nHost: x\r\nX-Request-Path: /sandboxes\r\nX-Request-Method: GET\r\n\r\n`);
    await new Promise<void>((resolve) => idle.once("data", () => resolve()));
    const h2 = new Http2SessionManager(server.url);
    const client = createClient(AuthorizeService, createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }));
    expect((await client.authorize({ credential: made.key, path: "/sandboxes/abc", method: "GET" })).allowed).toBe(true);

    expect(await server.stop(signal)).toBe(0);
    idle.destroy();
    h2.abort();
    expect(server.output()).toContain(`"msg":"shutting down","signal":"${signal}"`);
    expect(server.output()).toMatch(/"msg":"stopped"/);
    if (onPglite) {
      expect(await exists(join(data.dataDir, "keygate.lock"))).toBe(false);
      expect(await exists(join(data.dataDir, "keygate.sock"))).toBe(false);
    }

    // With no server: the CLI takes the data (the lock is free) and makes a key.
    const offline = await createKey(["--org", "acme", "--role", "reader", "--name", `after-${signal}`], cli());
    const status = await runCli(["status"], cli());
    expect(status.stdout).toMatch(/^server:\s+not running$/m);

    // Another serve starts on the same data, and both keys work there.
    const again = await start();
    for (const key of [made, offline]) {
      const response = await cubeRequest(again.url, bearer(key.key, "/sandboxes/abc", "GET"));
      expect({ status: response.status, user: response.headers["x-auth-user"] }).toEqual({ status: 200, user: key.id });
    }
    expect(await again.stop()).toBe(0);
  });

  it("a revoke survives a restart", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader"], cli());
    const revoked = await runCli(["keys", "revoke", key.id], cli());
    expect(revoked.code).toBe(0);
    const server = await start();
    const response = await cubeRequest(server.url, bearer(key.key, "/sandboxes/abc", "GET"));
    expect(JSON.parse(response.body)).toEqual({ code: 401, message: "API key has been revoked" });
    expect(await server.stop()).toBe(0);
  });
});

describe.runIf(!onPglite)("when Postgres goes away", () => {
  let admin: pg.Client;
  let name: string;

  beforeAll(async () => {
    name = new URL(data.env.DATABASE_URL!).pathname.slice(1);
    admin = new pg.Client({ connectionString: TEST_DATABASE_URL, user: new URL(TEST_DATABASE_URL!).username || "postgres" });
    await admin.connect();
  });

  afterAll(async () => {
    await admin?.query(`alter database ${name} allow_connections true`).catch(() => {});
    await admin?.end();
  });

  it("decisions fail closed (503, UNAVAILABLE) and recover when it is back", async () => {
    const server = await start();
    const key = await createKey(["--org", "acme", "--role", "admin"], { cwd: data.dir, env: data.env });

    await admin.query(`alter database ${name} allow_connections false`);
    await admin.query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1", [name]);

    // The key was never used, so no cache can answer: the database must, and cannot.
    const response = await cubeRequest(server.url, bearer(key.key, "/sandboxes/abc", "DELETE"));
    expect(response.status).toBe(503);
    expect(JSON.parse(response.body)).toEqual({ code: 503, message: "authorization unavailable: the key store cannot be reached, request denied" });
    const client = createClient(AuthorizeService, createGrpcTransport({ baseUrl: server.url }));
    const error = await client.authorize({ credential: key.key, path: "/sandboxes/abc", method: "GET" }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.Unavailable);
    expect(server.output()).not.toContain(key.key);

    await admin.query(`alter database ${name} allow_connections true`);
    const back = await cubeRequest(server.url, bearer(key.key, "/sandboxes/abc", "DELETE"));
    expect({ status: back.status, user: back.headers["x-auth-user"] }).toEqual({ status: 200, user: key.id });
    expect(await server.stop()).toBe(0);
  });
});
