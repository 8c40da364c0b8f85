import { appendFile, cp, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { loadPolicy } from "../../src/core/policy/policy.js";
import { bearer, cubeRequest, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, TEST_DATABASE_URL, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { createKey, POLICY_DIR, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { startTestRedis, type TestRedis } from "../support/redis-server.js";

/**
 * Probes and metrics of a real `keygate serve`: /healthz and /readyz, then
 * traffic through the Cube callback, Connect (HTTP/1.1, h2c) and gRPC —
 * allowed, forbidden, invalid, revoked, malformed, rate limited — and policy
 * reloads (failed, reloaded, unchanged); then /metrics must show every
 * series with exactly those counts, and none of the keys or paths sent.
 * Also: the Redis backend going down and up, the failed-auth guard, and (on
 * Postgres) /readyz through a real database outage.
 */

const onPostgres = testDatabaseKind === "postgres";

async function get(url: string, init: RequestInit = {}) {
  const response = await fetch(url, init);
  return { status: response.status, headers: response.headers, text: await response.text() };
}

/** The value of one sample line, `series value`; undefined when absent. */
function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

function mustSample(text: string, series: string): number {
  const value = sample(text, series);
  if (value === undefined) throw new Error(`no sample ${series} in /metrics:\n${text}`);
  return value;
}

interface LogLine {
  msg?: string;
  [field: string]: unknown;
}

function logLines(server: ServerProcess): LogLine[] {
  return server
    .output()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => {
      try {
        return JSON.parse(line) as LogLine;
      } catch {
        return {};
      }
    });
}

/** Runs `action`, then waits for a log line it caused. */
async function causeLog(server: ServerProcess, msg: string, action: () => Promise<void> | void, timeoutMs = 10_000): Promise<void> {
  const seen = logLines(server).length;
  await action();
  const deadline = Date.now() + timeoutMs;
  while (!logLines(server).slice(seen).some((line) => line.msg === msg)) {
    if (Date.now() > deadline) throw new Error(`no "${msg}" log line in ${timeoutMs} ms:\n${server.output()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** Scrapes until `check` passes (state read at scrape time may take a moment to change). */
async function scrapeUntil(url: string, check: (text: string) => boolean, timeoutMs = 10_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = (await get(`${url}/metrics`)).text;
    if (check(text)) return text;
    if (Date.now() > deadline) throw new Error(`/metrics never matched in ${timeoutMs} ms:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe("one server: probes, traffic on every entry point, then /metrics", () => {
  let data: TestDataDir;
  let server: ServerProcess;
  let policyDir: string;
  let h2: Http2SessionManager;
  const keys = {} as Record<"reader" | "limited" | "revoked", CreatedKeyJson>;
  const unknownKey = generateKey();
  const malformedKey = "sk-sb-not-a-real-key";
  const secretPaths = ["/sandboxes/sbx-secret-42", "/templates/tpl-secret-77", "/sandboxes/%2e%2e/admin-secret"];

  beforeAll(async () => {
    data = await createTestDataDir();
    policyDir = join(data.dir, "policies");
    await cp(POLICY_DIR, policyDir, { recursive: true });
    const cli = { cwd: data.dir, env: data.env };
    server = await startServerProcess(["--policy-dir", policyDir], { cwd: data.dir, env: { ...data.env, KEYGATE_POLICY_RELOAD_DEBOUNCE: "50ms" } });
    keys.reader = await createKey(["--org", "acme", "--role", "reader", "--name", "metrics-reader"], cli);
    keys.limited = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "1/1h", "--name", "metrics-limited"], cli);
    keys.revoked = await createKey(["--org", "acme", "--role", "reader", "--name", "metrics-revoked"], cli);
    expect((await runCli(["keys", "revoke", keys.revoked.id], cli)).code).toBe(0);
    h2 = new Http2SessionManager(server.url);
  });

  afterAll(async () => {
    h2?.abort();
    expect(await server?.stop()).toBe(0);
    await data?.dispose();
  });

  it("/healthz and /readyz answer 200 before any traffic", async () => {
    const health = await get(`${server.url}/healthz`);
    expect(health.status).toBe(200);
    expect(JSON.parse(health.text)).toEqual({ status: "ok" });
    const ready = await get(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.headers.get("cache-control")).toBe("no-store");
    expect(JSON.parse(ready.text)).toMatchObject({ ready: true, checks: { database: { ok: true }, policy: { ok: true } } });
  });

  it("after traffic and reloads, /metrics shows every series with the counts of what happened", async () => {
    // --- the Cube callback (entry "shim")
    const shimCases: [RawHeaders, number][] = [
      [bearer(keys.reader.key, "/sandboxes", "GET"), 200],
      [bearer(keys.reader.key, secretPaths[1]!, "GET"), 200],
      [bearer(keys.reader.key, secretPaths[0]!, "DELETE"), 403],
      [[["X-Request-Path", "/sandboxes"], ["X-Request-Method", "GET"]], 401],
      [bearer(unknownKey, "/sandboxes", "GET"), 401],
      [bearer(unknownKey, "/sandboxes", "GET"), 401],
      [bearer(malformedKey, "/sandboxes", "GET"), 401],
      [bearer(keys.revoked.key, "/sandboxes", "GET"), 401],
      [bearer(keys.reader.key, secretPaths[2]!, "GET"), 403],
      [bearer(keys.limited.key, "/sandboxes", "GET"), 200],
      [bearer(keys.limited.key, "/sandboxes", "GET"), 429],
    ];
    for (const [headers, status] of shimCases) expect((await cubeRequest(server.url, headers)).status).toBe(status);

    // --- Authorize (entry "rpc"): Connect over HTTP/1.1 and h2c, gRPC
    const http1: Client<typeof AuthorizeService> = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const h2c: Client<typeof AuthorizeService> = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 }));
    const grpc: Client<typeof AuthorizeService> = createClient(AuthorizeService, createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }));
    const ask = (client: Client<typeof AuthorizeService>, credential: string, path: string, method: string) => client.authorize({ credential, path, method });
    expect((await ask(http1, keys.reader.key, "/sandboxes", "GET")).reason).toBe(Reason.ALLOWED);
    expect((await ask(http1, keys.reader.key, secretPaths[0]!, "DELETE")).reason).toBe(Reason.FORBIDDEN);
    expect((await ask(http1, malformedKey, "/sandboxes", "GET")).reason).toBe(Reason.INVALID_KEY);
    expect((await ask(h2c, keys.reader.key, secretPaths[1]!, "GET")).reason).toBe(Reason.ALLOWED);
    expect((await ask(grpc, keys.reader.key, "/sandboxes", "GET")).reason).toBe(Reason.ALLOWED);
    expect((await ask(grpc, keys.limited.key, "/sandboxes", "GET")).reason).toBe(Reason.RATE_LIMITED);

    // --- policy reloads: a broken file (failed), a new rule (reloaded), SIGHUP with nothing new (unchanged)
    const csv = join(policyDir, "policy.csv");
    const shipped = await readFile(csv, "utf8");
    await causeLog(server, "policy reload failed", () => appendFile(csv, "\np, reader, acme\n"));
    // Written aside and renamed over it, so no reload can read a half-written file.
    await causeLog(server, "policy reloaded", async () => {
      await writeFile(join(policyDir, ".policy.csv.tmp"), `${shipped}\np, reader, *, *, /metrics-test, ^GET$\n`);
      await rename(join(policyDir, ".policy.csv.tmp"), csv);
    });
    await causeLog(server, "policy unchanged", () => void server.child.kill("SIGHUP"));
    const policy = await loadPolicy(policyDir);

    const scraped = await get(`${server.url}/metrics`);
    expect(scraped.status).toBe(200);
    expect(scraped.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const text = scraped.text;

    const decisions: Record<string, Record<string, number>> = {
      shim: { allowed: 3, forbidden: 1, missing_credential: 1, invalid_key: 3, revoked: 1, expired: 0, bad_request: 1, rate_limited: 1, unavailable: 0 },
      rpc: { allowed: 3, forbidden: 1, missing_credential: 0, invalid_key: 1, revoked: 0, expired: 0, bad_request: 0, rate_limited: 1, unavailable: 0 },
      ext_authz: {},
      forward_auth: {},
      proxy: {},
    };
    for (const [entry, reasons] of Object.entries(decisions)) {
      let total = 0;
      for (const reason of ["allowed", "missing_credential", "invalid_key", "revoked", "expired", "forbidden", "rate_limited", "bad_request", "unavailable"]) {
        const expected = reasons[reason] ?? 0;
        total += expected;
        expect(mustSample(text, `keygate_decisions_total{entry="${entry}",reason="${reason}"}`), `${entry} ${reason}`).toBe(expected);
      }
      expect(mustSample(text, `keygate_decision_duration_seconds_count{entry="${entry}"}`), entry).toBe(total);
      expect(mustSample(text, `keygate_decision_duration_seconds_bucket{le="+Inf",entry="${entry}"}`), entry).toBe(total);
    }
    expect(mustSample(text, 'keygate_decision_duration_seconds_sum{entry="shim"}')).toBeGreaterThan(0);
    expect(mustSample(text, 'keygate_decision_duration_seconds_sum{entry="shim"}')).toBeLessThan(5);

    // Cache: each key's first use is a miss (a database lookup), later ones hits; the unknown key is remembered.
    const misses = mustSample(text, 'keygate_key_cache_requests_total{result="miss"}');
    expect(misses).toBeGreaterThanOrEqual(4);
    expect(mustSample(text, 'keygate_key_cache_requests_total{result="hit"}')).toBeGreaterThanOrEqual(1);
    expect(mustSample(text, 'keygate_key_cache_requests_total{result="negative_hit"}')).toBeGreaterThanOrEqual(1);
    expect(mustSample(text, "keygate_key_lookup_duration_seconds_count")).toBe(misses);
    expect(mustSample(text, "keygate_key_cache_entries")).toBeGreaterThanOrEqual(1);

    expect(mustSample(text, 'keygate_policy_reloads_total{outcome="failed"}')).toBe(1);
    expect(mustSample(text, 'keygate_policy_reloads_total{outcome="reloaded"}')).toBe(1);
    expect(mustSample(text, 'keygate_policy_reloads_total{outcome="unchanged"}')).toBeGreaterThanOrEqual(1);
    expect(mustSample(text, `keygate_policy_info{version="${policy.info.version}"}`)).toBe(1);
    expect(text.match(/^keygate_policy_info\{/gm)).toHaveLength(1);
    expect(mustSample(text, "keygate_policy_rules")).toBe(policy.info.rules);

    expect(mustSample(text, "keygate_rate_limit_rejections_total")).toBe(2);
    // Loopback is exempt from the failed-auth guard by default.
    expect(mustSample(text, "keygate_auth_guard_refusals_total")).toBe(0);
    expect(mustSample(text, 'keygate_rate_limit_backend_up{backend="memory"}')).toBe(1);

    if (onPostgres) {
      expect(mustSample(text, 'keygate_db_pool_connections{state="total"}')).toBeGreaterThanOrEqual(1);
      expect(sample(text, 'keygate_db_pool_connections{state="idle"}')).toBeDefined();
      expect(mustSample(text, 'keygate_db_pool_connections{state="waiting"}')).toBe(0);
    } else expect(text).not.toContain("keygate_db_pool_connections");

    // prom-client's process and Node.js metrics.
    expect(sample(text, "process_cpu_seconds_total")).toBeGreaterThan(0);
    expect(sample(text, "nodejs_eventloop_lag_seconds")).toBeDefined();

    // Never a key, a key id or a path, in any form.
    for (const secret of [...Object.values(keys).flatMap((k) => [k.key, k.id, k.display_prefix]), unknownKey, malformedKey, ...secretPaths, "sbx-secret", "tpl-secret", "/sandboxes", "/templates"]) {
      expect(text, secret).not.toContain(secret);
    }
    for (const [, name, labels] of text.matchAll(/^(keygate_\w+)\{([^}]*)\}/gm)) {
      for (const [, label] of labels!.matchAll(/(\w+)="/g)) expect(["entry", "reason", "le", "result", "outcome", "version", "backend", "state"], `${name} ${label}`).toContain(label);
    }
  });

  it("GET only; metrics are never cached", async () => {
    expect((await get(`${server.url}/metrics`, { method: "POST", body: "x" })).status).toBe(405);
    expect((await get(`${server.url}/metrics`)).headers.get("cache-control")).toBe("no-store");
  });
});

describe("Redis backend and the failed-auth guard", () => {
  let data: TestDataDir;
  let redis: TestRedis;
  let server: ServerProcess;

  beforeAll(async () => {
    data = await createTestDataDir();
    redis = await startTestRedis();
    server = await startServerProcess([], {
      cwd: data.dir,
      env: { ...data.env, REDIS_URL: redis.url, KEYGATE_AUTH_GUARD_EXEMPT: "none", KEYGATE_AUTH_FAIL_LIMIT: "1/1h" },
    });
  });

  afterAll(async () => {
    expect(await server?.stop()).toBe(0);
    await redis?.dispose();
    await data?.dispose();
  });

  it("guard refusals are counted apart from key budgets; keygate_rate_limit_backend_up follows Redis", async () => {
    // Limit 1: the first invalid key is answered, the second slowed, the third refused.
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) statuses.push((await cubeRequest(server.url, bearer(`sk-sb-guess-${i}`, "/sandboxes", "GET"))).status);
    expect(statuses).toEqual([401, 401, 429]);
    let text = (await get(`${server.url}/metrics`)).text;
    expect(mustSample(text, "keygate_auth_guard_refusals_total")).toBe(1);
    expect(mustSample(text, "keygate_rate_limit_rejections_total")).toBe(0);
    expect(mustSample(text, 'keygate_decisions_total{entry="shim",reason="rate_limited"}')).toBe(1);
    expect(mustSample(text, 'keygate_decisions_total{entry="shim",reason="invalid_key"}')).toBe(2);
    // On a busy machine the first connection attempt may time out; the client retries by itself.
    text = await scrapeUntil(server.url, (t) => sample(t, 'keygate_rate_limit_backend_up{backend="redis"}') === 1);
    expect(text).not.toContain(String(redis.port));

    await redis.stop();
    text = await scrapeUntil(server.url, (t) => sample(t, 'keygate_rate_limit_backend_up{backend="redis"}') === 0);
    // Readiness does not depend on Redis: decisions go on with per-instance limits.
    expect((await get(`${server.url}/readyz`)).status).toBe(200);
    await redis.restart();
    await scrapeUntil(server.url, (t) => sample(t, 'keygate_rate_limit_backend_up{backend="redis"}') === 1, 15_000);
  });
});

describe.runIf(onPostgres)("Postgres: /readyz through a real database outage", () => {
  let data: TestDataDir;
  let server: ServerProcess;
  let admin: pg.Client;
  let database: string;

  beforeAll(async () => {
    data = await createTestDataDir();
    database = new URL(data.env.DATABASE_URL!).pathname.slice(1);
    server = await startServerProcess([], { cwd: data.dir, env: data.env });
    admin = new pg.Client({ connectionString: TEST_DATABASE_URL, user: new URL(TEST_DATABASE_URL!).username || "postgres" });
    await admin.connect();
  });

  afterAll(async () => {
    await admin?.query(`alter database ${database} with allow_connections true`).catch(() => {});
    await admin?.end();
    expect(await server?.stop()).toBe(0);
    await data?.dispose();
  });

  it("503 while no connection can be had, 200 again once it can; /healthz 200 throughout", async () => {
    expect((await get(`${server.url}/readyz`)).status).toBe(200);
    await admin.query(`alter database ${database} with allow_connections false`);
    await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()`, [database]);
    const down = await get(`${server.url}/readyz`);
    expect(down.status).toBe(503);
    expect(JSON.parse(down.text)).toMatchObject({ ready: false, checks: { database: { ok: false }, policy: { ok: true } } });
    expect((await get(`${server.url}/healthz`)).status).toBe(200);
    expect((await get(`${server.url}/metrics`)).status).toBe(200);
    await admin.query(`alter database ${database} with allow_connections true`);
    const deadline = Date.now() + 10_000;
    while ((await get(`${server.url}/readyz`)).status !== 200) {
      if (Date.now() > deadline) throw new Error("/readyz did not recover");
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });
});
