import { create } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService, ManageKeyRequestSchema, type ManageKeyRequest, type ManageKeyResponse } from "../../gen/keygate/v1/key_pb.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, TEST_DATABASE_URL, type TestDataDir } from "../support/database.js";
import { createKey, runCli, startServerProcess, stopAll, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { startTestRedis, type TestRedis } from "../support/redis-server.js";

/**
 * Several servers over one Postgres database: a key change made through one
 * server (or by the CLI, in-process) reaches every other server's key cache
 * through LISTEN/NOTIFY (src/core/keys/key-changes.ts, src/server/key-change-listener.ts). The cache TTL is ten
 * minutes here, so only a notification can explain a change seen within the
 * two seconds each check polls for. Rate limits are shared through Redis.
 *
 * On PGlite there is nothing to test: the embedded database is
 * single-instance, and a second `serve` on the same data dir is refused
 * (test/e2e/server-lifecycle.test.ts).
 */

const PATH = "/sandboxes";
const SLOW_CACHE = { KEYGATE_KEY_CACHE_TTL: "10m" };
/** Long before the 10-minute TTL; not a latency assertion. */
const PROPAGATION_MS = 2_000;

async function status(server: ServerProcess, key: string, method = "GET", path = PATH): Promise<number> {
  return (await cubeRequest(server.url, bearer(key, path, method))).status;
}

/** Polls the server until the key gets `expected`; fails with the last status after PROPAGATION_MS. */
async function eventually(server: ServerProcess, key: string, expected: number, method = "GET", path = PATH): Promise<void> {
  const deadline = Date.now() + PROPAGATION_MS;
  let last = await status(server, key, method, path);
  while (last !== expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    last = await status(server, key, method, path);
  }
  expect(last, `${method} ${path} on ${server.url} within ${PROPAGATION_MS} ms`).toBe(expected);
}

function keyClient(server: ServerProcess, admin: CreatedKeyJson): Client<typeof KeyService> {
  return createClient(
    KeyService,
    createConnectTransport({
      baseUrl: server.url,
      httpVersion: "1.1",
      interceptors: [(next) => (req) => (req.header.set("Authorization", `Bearer ${admin.key}`), next(req))],
    }),
  );
}

function manage(client: Client<typeof KeyService>, action: ManageKeyRequest["action"]): Promise<ManageKeyResponse> {
  return client.manageKey(create(ManageKeyRequestSchema, { action }));
}

describe.skipIf(!TEST_DATABASE_URL)("three servers, one Postgres database, one Redis", () => {
  let data: TestDataDir;
  let redis: TestRedis;
  let cli: { cwd: string; env: Record<string, string> };
  const servers: ServerProcess[] = [];
  let a: ServerProcess;
  let b: ServerProcess;
  let c: ServerProcess;
  let admin: CreatedKeyJson;
  let manageViaA: Client<typeof KeyService>;

  beforeAll(async () => {
    redis = await startTestRedis();
    data = await createTestDataDir();
    cli = { cwd: data.dir, env: data.env };
    for (let i = 0; i < 3; i++) {
      servers.push(await startServerProcess([], { cwd: data.dir, env: { ...data.env, ...SLOW_CACHE, REDIS_URL: redis.url } }));
    }
    [a, b, c] = servers as [ServerProcess, ServerProcess, ServerProcess];
    admin = await createKey(["--org", "acme", "--role", "admin", "--name", "admin"], cli);
    manageViaA = keyClient(a, admin);
  });

  afterAll(async () => {
    await stopAll(...servers);
    await redis?.dispose();
    await data?.dispose();
  });

  /** A reader key that each of the three servers has allowed (so each has it cached). */
  async function warmKey(args: string[] = ["--org", "acme", "--role", "reader"]): Promise<CreatedKeyJson> {
    const key = await createKey(args, cli);
    for (const server of [a, b, c]) expect(await status(server, key.key)).toBe(200);
    return key;
  }

  it("revoke through A: B and C deny the key", async () => {
    const key = await warmKey();
    // One of the warm-ups over Authorize too, so both doors are shown to share the cache.
    const authorize = createClient(AuthorizeService, createConnectTransport({ baseUrl: b.url, httpVersion: "1.1" }));
    expect(await authorize.authorize({ credential: key.key, path: PATH, method: "GET", namespace: "", org: "" })).toMatchObject({ allowed: true });
    await manage(manageViaA, { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", id: key.id } });
    await eventually(b, key.key, 401);
    await eventually(c, key.key, 401);
    expect(await authorize.authorize({ credential: key.key, path: PATH, method: "GET", namespace: "", org: "" })).toMatchObject({ allowed: false });
  });

  it("disable (enabled=false) through A: B and C deny the key", async () => {
    const key = await warmKey();
    await manage(manageViaA, { case: "update", value: { $typeName: "keygate.v1.UpdateKeyAction", id: key.id, enabled: false, expiry: { case: undefined }, rateLimitChange: { case: undefined }, maxSandboxesChange: { case: undefined } } });
    await eventually(b, key.key, 401);
    await eventually(c, key.key, 401);
  });

  it("delete through A: B and C deny the key", async () => {
    const key = await warmKey();
    await manage(manageViaA, { case: "delete", value: { $typeName: "keygate.v1.DeleteKeyAction", id: key.id } });
    await eventually(b, key.key, 401);
    await eventually(c, key.key, 401);
  });

  it('rotate with grace "0s" through A: B and C deny the old key and allow the new one', async () => {
    const key = await warmKey();
    const response = await manage(manageViaA, { case: "rotate", value: { $typeName: "keygate.v1.RotateKeyAction", id: key.id, grace: "0s" } });
    if (response.result.case !== "created") throw new Error(`expected a created key, got ${response.result.case}`);
    const fresh = response.result.value.plaintext;
    for (const server of [b, c]) {
      await eventually(server, key.key, 401);
      expect(await status(server, fresh)).toBe(200);
    }
  });

  it("reset-all through A (an admin of another org): B and C deny every key of that org, and only those", async () => {
    const orgAdmin = await createKey(["--org", "resetorg", "--role", "admin"], cli);
    const doomed = [await warmKey(["--org", "resetorg", "--role", "reader"]), await warmKey(["--org", "resetorg", "--role", "reader"])];
    const bystander = await warmKey();
    const response = await manage(keyClient(a, orgAdmin), { case: "resetAll", value: { $typeName: "keygate.v1.ResetAllAction", org: "" } });
    expect(response.result).toMatchObject({ case: "resetAll" });
    for (const server of [b, c]) {
      for (const key of doomed) await eventually(server, key.key, 401);
      expect(await status(server, bystander.key)).toBe(200);
    }
  });

  it("role change reader → writer through A: DELETE becomes allowed on B and C", async () => {
    const key = await warmKey();
    for (const server of [b, c]) expect(await status(server, key.key, "DELETE", "/sandboxes/abc")).toBe(403);
    await manage(manageViaA, {
      case: "update",
      value: { $typeName: "keygate.v1.UpdateKeyAction", id: key.id, roles: { $typeName: "keygate.v1.RoleList", roles: ["writer"] }, expiry: { case: undefined }, rateLimitChange: { case: undefined }, maxSandboxesChange: { case: undefined } },
    });
    await eventually(b, key.key, 200, "DELETE", "/sandboxes/abc");
    await eventually(c, key.key, 200, "DELETE", "/sandboxes/abc");
  });

  it("a revoke by the CLI, in-process on the same DATABASE_URL, is seen by all three", async () => {
    const key = await warmKey();
    const revoked = await runCli(["keys", "revoke", key.id], cli);
    expect(revoked.code, revoked.stderr).toBe(0);
    for (const server of [a, b, c]) await eventually(server, key.key, 401);
  });

  it("rate limits are shared through Redis: 3/1m spread over A, B, C, then 429 on any", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "3/1m"], cli);
    for (const server of [a, b, c]) expect(await status(server, key.key)).toBe(200);
    for (const server of [a, b, c]) expect(await status(server, key.key)).toBe(429);
  });

  it("the listener's connection killed: decisions go on; once it reconnects, a revoke through A is seen by B and C", async () => {
    const key = await warmKey();
    const db = new pg.Client({ connectionString: data.env.DATABASE_URL });
    await db.connect();
    try {
      const pids = servers.map((server) => server.child.pid!);
      const listening = async () => {
        const { rows } = await db.query<{ application_name: string }>(
          "select application_name from pg_stat_activity where datname = current_database() and application_name like 'keygate serve;%'",
        );
        return pids.filter((pid) => rows.some((row) => row.application_name.includes(`pid=${pid};`))).length;
      };
      expect(await listening()).toBe(3);
      const killed = await db.query("select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name like 'keygate serve;%'");
      expect(killed.rowCount).toBe(3);

      // Listener down (it retries after 500 ms): the servers still decide, from the database.
      for (const server of [a, b, c]) expect(await status(server, key.key)).toBe(200);

      const deadline = Date.now() + 15_000;
      while ((await listening()) < 3 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
      expect(await listening(), "every listener reconnected (and cleared its cache)").toBe(3);
      for (const server of [a, b, c]) expect(await status(server, key.key)).toBe(200);

      await manage(manageViaA, { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", id: key.id } });
      await eventually(b, key.key, 401);
      await eventually(c, key.key, 401);
    } finally {
      await db.end();
    }
  });
});

describe.skipIf(!TEST_DATABASE_URL)("two servers on one database without REDIS_URL", () => {
  let data: TestDataDir;
  const servers: ServerProcess[] = [];

  beforeAll(async () => {
    data = await createTestDataDir();
    for (let i = 0; i < 2; i++) servers.push(await startServerProcess([], { cwd: data.dir, env: { ...data.env, ...SLOW_CACHE } }));
  });

  afterAll(async () => {
    await stopAll(...servers);
    await data?.dispose();
  });

  it("each keeps its own rate-limit counters", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "1/1m"], { cwd: data.dir, env: data.env });
    for (const server of servers) expect(await status(server, key.key)).toBe(200);
    for (const server of servers) expect(await status(server, key.key)).toBe(429);
  });
});
