import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { bearer, cubeRequest, type CubeResponse } from "../support/cube-request.js";
import { createTestDataDir, TEST_DATABASE_URL, type TestDataDir } from "../support/database.js";
import { createKey, runCli, startServerProcess, startShimProcess, stopAll, type ServerProcess, type ShimProcess } from "../support/keygate-process.js";
import { startTestRedis, type TestRedis } from "../support/redis-server.js";

/**
 * Per-key rate limits end to end: the Cube callback's 429 with Retry-After
 * and RateLimit-* headers, Authorize's rate_limit, the CLI, and Redis shared
 * by several servers (and lost while they run). Windows are an hour long:
 * the tests count what remains instead of waiting.
 */

const PATH = "/sandboxes";

function rateHeaders(response: CubeResponse) {
  return {
    limit: response.headers["ratelimit-limit"],
    remaining: response.headers["ratelimit-remaining"],
    reset: response.headers["ratelimit-reset"],
  };
}

function authorizeClient(url: string) {
  return createClient(AuthorizeService, createConnectTransport({ baseUrl: url, httpVersion: "1.1" }));
}

describe("one server, limits in memory", () => {
  let data: TestDataDir;
  let server: ServerProcess | undefined;
  let shim: ShimProcess | undefined;
  let cli: { cwd: string; env: Record<string, string> };

  beforeAll(async () => {
    data = await createTestDataDir();
    cli = { cwd: data.dir, env: data.env };
    server = await startServerProcess([], cli);
    shim = await startShimProcess(server.url, [], cli);
  });

  afterAll(async () => {
    await stopAll(shim, server);
    await data?.dispose();
  });

  it("the callback sends RateLimit-* on allows, then 429 with Retry-After and the same JSON body shape", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "3/1h"], cli);
    for (const remaining of ["2", "1", "0"]) {
      const response = await cubeRequest(server!.url, bearer(key.key, PATH, "GET"));
      expect(response.status).toBe(200);
      expect(response.headers["x-auth-user"]).toBe(key.id);
      expect(rateHeaders(response)).toMatchObject({ limit: "3", remaining });
      expect(Number(response.headers["ratelimit-reset"])).toBeGreaterThan(3590);
    }
    const limited = await cubeRequest(server!.url, bearer(key.key, PATH, "GET"));
    expect(limited.status).toBe(429);
    expect(JSON.parse(limited.body)).toEqual({ code: 429, message: "rate limit exceeded" });
    expect(limited.headers["content-type"]).toBe("application/json");
    expect(limited.headers["x-auth-user"]).toBeUndefined();
    expect(rateHeaders(limited)).toMatchObject({ limit: "3", remaining: "0" });
    const retryAfter = Number(limited.headers["retry-after"]);
    expect(retryAfter).toBeGreaterThan(3590);
    expect(retryAfter).toBeLessThanOrEqual(3600);
    expect(limited.headers["ratelimit-reset"]).toBe(limited.headers["retry-after"]);
    // `keygate shim` asks the server over gRPC: the status travels in AuthorizeResponse.rate_limit.
    const viaShim = await cubeRequest(shim!.url, bearer(key.key, PATH, "GET"));
    expect(viaShim.status).toBe(429);
    expect(Number(viaShim.headers["retry-after"])).toBeGreaterThan(3590);
    expect(rateHeaders(viaShim)).toMatchObject({ limit: "3", remaining: "0" });
  });

  it("a key without a limit gets no RateLimit headers and is never limited", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader"], cli);
    for (let i = 0; i < 20; i++) {
      const response = await cubeRequest(server!.url, bearer(key.key, PATH, "GET"));
      expect(response.status).toBe(200);
      expect(response.headers["ratelimit-limit"]).toBeUndefined();
    }
  });

  it("Authorize fills rate_limit (limit, remaining, reset_seconds), on allow and on deny", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "2/1h"], cli);
    const client = authorizeClient(server!.url);
    const ask = () => client.authorize({ credential: key.key, path: PATH, method: "GET", namespace: "", org: "" });
    const first = await ask();
    expect(first).toMatchObject({ allowed: true, reason: Reason.ALLOWED, rateLimit: { limit: 2, remaining: 1 } });
    expect(first.rateLimit!.resetSeconds).toBeGreaterThan(3590);
    await ask();
    const denied = await ask();
    expect(denied).toMatchObject({ allowed: false, reason: Reason.RATE_LIMITED, message: "rate limit exceeded", rateLimit: { limit: 2, remaining: 0 }, key: { id: key.id } });
    expect(denied.rateLimit!.resetSeconds).toBeGreaterThan(3590);
  });

  it("keys get/list show the limit; keys update changes it at once; --no-rate-limit removes it", async () => {
    const key = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "100/1s", "--name", "limited"], cli);
    expect(key).toMatchObject({ rate_limit: "100/1s" });
    const got = await runCli(["keys", "get", key.id], cli);
    expect(got.stdout).toMatch(/rate limit\s+100\/1s/);
    const listed = await runCli(["keys", "list"], cli);
    expect(listed.stdout).toMatch(/RATE LIMIT/);
    expect(listed.stdout).toMatch(new RegExp(`${key.id}.*100/1s`));

    const updated = await runCli(["keys", "update", key.id, "--rate-limit", "1/1m", "--json"], cli);
    expect(updated.code, updated.stderr).toBe(0);
    expect(JSON.parse(updated.stdout)).toMatchObject({ rate_limit: "1/1m" });
    expect((await cubeRequest(server!.url, bearer(key.key, PATH, "GET"))).status).toBe(200);
    const limited = await cubeRequest(server!.url, bearer(key.key, PATH, "GET"));
    expect(limited.status).toBe(429);
    expect(Number(limited.headers["retry-after"])).toBeGreaterThan(50);
    expect(Number(limited.headers["retry-after"])).toBeLessThanOrEqual(60);

    const removed = await runCli(["keys", "update", key.id, "--no-rate-limit", "--json"], cli);
    expect(JSON.parse(removed.stdout)).toMatchObject({ rate_limit: null });
    expect((await cubeRequest(server!.url, bearer(key.key, PATH, "GET"))).status).toBe(200);
  });

  it("bad limits are refused, naming the value", async () => {
    const keygen = await runCli(["keygen", "--rate-limit", "lots"], cli);
    expect(keygen.code).not.toBe(0);
    expect(keygen.stderr).toContain('--rate-limit: invalid rate limit "lots"');
    const update = await runCli(["keys", "update", "key_00000000000000000000", "--rate-limit", "5/0s"], cli);
    expect(update.code).not.toBe(0);
    expect(update.stderr).toContain('invalid rate limit "5/0s"');
    const both = await runCli(["keys", "update", "key_00000000000000000000", "--rate-limit", "5/1s", "--no-rate-limit"], cli);
    expect(both.stderr).toContain("use either --rate-limit or --no-rate-limit");
  });
});

describe("configuration", () => {
  it.each([
    [{ REDIS_URL: "http://127.0.0.1:6379" }, "REDIS_URL: not a redis:// or rediss:// URL"],
    [{ REDIS_URL: "not a url" }, "REDIS_URL: not a redis:// or rediss:// URL"],
    [{ KEYGATE_DEFAULT_RATE_LIMIT: "fast" }, 'KEYGATE_DEFAULT_RATE_LIMIT: invalid rate limit "fast"'],
    [{ KEYGATE_DEFAULT_RATE_LIMIT: "0/1s" }, 'KEYGATE_DEFAULT_RATE_LIMIT: invalid rate limit "0/1s"'],
  ])("serve refuses %j", async (extra, message) => {
    const result = await runCli(["serve", "--port", "0"], { cwd: "/tmp", env: { KEYGATE_DATA_DIR: "/nonexistent/keygate-never", ...extra } });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain(message);
  });

  it("serve refuses a bad --default-rate-limit flag, naming it", async () => {
    const result = await runCli(["serve", "--port", "0", "--default-rate-limit", "10/1fortnight"], { cwd: "/tmp", env: { KEYGATE_DATA_DIR: "/nonexistent/keygate-never" } });
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('--default-rate-limit: invalid rate limit "10/1fortnight"');
  });
});

describe("with Redis", () => {
  let redis: TestRedis;
  let data: TestDataDir;
  let cli: { cwd: string; env: Record<string, string> };
  const servers: ServerProcess[] = [];

  beforeAll(async () => {
    redis = await startTestRedis();
    data = await createTestDataDir();
    cli = { cwd: data.dir, env: data.env };
  });

  afterAll(async () => {
    await stopAll(...servers);
    await redis?.dispose();
    await data?.dispose();
  });

  async function serve(extra: Record<string, string>, args: string[] = []): Promise<ServerProcess> {
    const server = await startServerProcess(args, { cwd: data.dir, env: { ...data.env, ...extra } });
    servers.push(server);
    return server;
  }

  it.skipIf(!TEST_DATABASE_URL)("two servers on one database and one Redis share a key's budget; without Redis they do not", async () => {
    const one = await serve({ REDIS_URL: redis.url });
    const two = await serve({ REDIS_URL: redis.url });
    const key = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "4/1h"], cli);
    const remaining = [];
    for (const server of [one, two, one, two]) {
      const response = await cubeRequest(server.url, bearer(key.key, PATH, "GET"));
      expect(response.status).toBe(200);
      remaining.push(response.headers["ratelimit-remaining"]);
    }
    expect(remaining).toEqual(["3", "2", "1", "0"]);
    expect((await cubeRequest(one.url, bearer(key.key, PATH, "GET"))).status).toBe(429);
    expect((await cubeRequest(two.url, bearer(key.key, PATH, "GET"))).status).toBe(429);

    const three = await serve({});
    const four = await serve({});
    const other = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "2/1h"], cli);
    for (const server of [three, four]) {
      const response = await cubeRequest(server.url, bearer(other.key, PATH, "GET"));
      expect(response.headers["ratelimit-remaining"]).toBe("1");
    }
    await stopAll(three, four);
  });

  it("Redis stopped mid-run: decisions go on with per-instance limits; the log says so once; status shows it; it recovers", async () => {
    await stopAll(...servers.splice(0));
    // The server's environment; over Postgres `status` runs in the CLI's own process, which reads the same.
    const serverEnv = { REDIS_URL: redis.url, KEYGATE_DEFAULT_RATE_LIMIT: "5/1h" };
    const server = await serve(serverEnv);
    const status = await runCli(["status"], { cwd: data.dir, env: { ...data.env, ...serverEnv } });
    expect(status.stdout).toMatch(/rate limits: redis redis:\/\/127\.0\.0\.1:\d+\/?, shared by every instance using it; default 5\/1h/);
    const key = await createKey(["--org", "acme", "--role", "reader"], cli);
    expect(rateHeaders(await cubeRequest(server.url, bearer(key.key, PATH, "GET")))).toMatchObject({ limit: "5", remaining: "4" });

    await redis.stop();
    const codes = [];
    const started = performance.now();
    for (let i = 0; i < 6; i++) codes.push((await cubeRequest(server.url, bearer(key.key, PATH, "GET"))).status);
    // Per instance from the outage on: a fresh count of 5 in this server's memory.
    expect(codes).toEqual([200, 200, 200, 200, 200, 429]);
    expect((performance.now() - started) / 6).toBeLessThan(200);
    for (let i = 0; i < 10; i++) await cubeRequest(server.url, bearer(key.key, PATH, "GET"));

    const down = await runCli(["status"], { cwd: data.dir, env: { ...data.env, ...serverEnv } });
    expect(down.code, down.stderr).toBe(0);
    expect(down.stdout).toMatch(/rate limits: redis redis:\/\/127\.0\.0\.1:\d+\/? unreachable since \d{4}-\d\d-\d\dT[\d:.]+Z, using per-instance limits/);
    const warnings = server.output().split("\n").filter((line) => line.includes("rate limits: redis unreachable"));
    expect(warnings).toHaveLength(1);
    expect(JSON.parse(warnings[0]!)).toMatchObject({ level: "warn" });

    await redis.restart();
    const until = Date.now() + 15_000;
    while (!server.output().includes("rate limits: redis reachable again")) {
      if (Date.now() > until) throw new Error(`no recovery logged:\n${server.output()}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    // Redis came back empty: a fresh shared budget.
    expect(rateHeaders(await cubeRequest(server.url, bearer(key.key, PATH, "GET")))).toMatchObject({ limit: "5", remaining: "4" });
    const up = await runCli(["status"], { cwd: data.dir, env: { ...data.env, ...serverEnv } });
    expect(up.stdout).toMatch(/rate limits: redis .*, shared by every instance using it/);
  });
});
