import { BlockList } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LISTENER_LIMITS, readServeConfig, type ServeConfig } from "../../src/config/config.js";
import type { StoreTarget } from "../../src/core/db/connect.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { createListener, type Listener } from "../../src/http/listener.js";
import { createRequestHandler } from "../../src/server/serve.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestStoreTarget, testDatabaseKind } from "../support/database.js";
import { createOutage, HOUR, LOCAL, POLICY_DIR, unwrap } from "./test-core.js";

/**
 * /healthz, /readyz and /metrics in process, where the database can be
 * taken away at will (the outage plugin) and shutdown begun without ending
 * the process. On PGlite or Postgres, as the suite runs.
 */

const SERVE = { credentialPriority: ["authorization", "x-api-key"] as ServeConfig["credentialPriority"], clientIp: { header: undefined, trusted: new BlockList() }, shimPath: "/verify", directAuthorize: true };
const silent = createLogger("error", () => {});

let runtime: Runtime;
let unmetered: Runtime;
let drops: (() => Promise<void>)[] = [];
const listeners: Listener[] = [];

async function target(): Promise<StoreTarget> {
  const { target, drop } = await createTestStoreTarget();
  drops.push(drop);
  return target;
}

async function serve(core: Runtime, shutdown?: AbortSignal): Promise<string> {
  const listener = createListener(createRequestHandler(SERVE, core, silent, shutdown), DEFAULT_LISTENER_LIMITS);
  listeners.push(listener);
  const { port } = await listener.listen(0, "127.0.0.1");
  return `http://127.0.0.1:${port}`;
}

async function get(url: string, init: RequestInit = {}) {
  const response = await fetch(url, init);
  return { status: response.status, headers: response.headers, text: await response.text() };
}

beforeAll(async () => {
  const read = readServeConfig({ "policy-dir": POLICY_DIR }, {}, process.cwd());
  if (!read.ok) throw new Error(read.errors.join("; "));
  const config: ServeConfig = { ...read.config, usageFlushMs: HOUR };
  expect(config.metrics).toBe(true);
  runtime = await openRuntime(config, { storeTarget: await target() });
  unmetered = await openRuntime({ ...config, metrics: false }, { storeTarget: await target() });
});

afterAll(async () => {
  await Promise.all(listeners.map((listener) => listener.close(1_000)));
  await runtime?.close();
  await unmetered?.close();
  for (const drop of drops) await drop();
  drops = [];
});

describe("probes", () => {
  it("/healthz: 200 {status: ok}, never cached; HEAD too; POST is 405", async () => {
    const base = await serve(runtime);
    const health = await get(`${base}/healthz`);
    expect(health.status).toBe(200);
    expect(JSON.parse(health.text)).toEqual({ status: "ok" });
    expect(health.headers.get("content-type")).toBe("application/json");
    expect(health.headers.get("cache-control")).toBe("no-store");
    expect((await get(`${base}/healthz?probe=1`)).status).toBe(200);
    expect((await get(`${base}/healthz`, { method: "HEAD" })).status).toBe(200);
    const post = await get(`${base}/healthz`, { method: "POST" });
    expect(post.status).toBe(405);
    expect(post.headers.get("allow")).toBe("GET, HEAD");
  });

  it("/readyz: 200 with the checks while the database answers; 503 naming the failure when it does not", async () => {
    const base = await serve(runtime);
    const ready = await get(`${base}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.headers.get("cache-control")).toBe("no-store");
    expect(JSON.parse(ready.text)).toEqual({
      ready: true,
      checks: { database: { ok: true }, policy: { ok: true, version: runtime.policy().info.version } },
    });

    const outage = createOutage();
    const downBase = await serve({ ...runtime, store: { ...runtime.store, db: runtime.store.db.withPlugin(outage.plugin) } });
    const down = await get(`${downBase}/readyz`);
    expect(down.status).toBe(503);
    expect(down.headers.get("cache-control")).toBe("no-store");
    // The public port says what is wrong, never the error's own text (addresses, SQL, rule text).
    expect(JSON.parse(down.text)).toMatchObject({ ready: false, checks: { database: { ok: false, error: "the database does not answer (details in the server log)" }, policy: { ok: true } } });
    expect(down.text).not.toContain("the database is down");
    // Liveness does not depend on the database.
    expect((await get(`${downBase}/healthz`)).status).toBe(200);
    outage.down = false;
    expect((await get(`${downBase}/readyz`)).status).toBe(200);
  });

  it("/readyz: 503 once shutdown has begun", async () => {
    const shutdown = new AbortController();
    const base = await serve(runtime, shutdown.signal);
    expect((await get(`${base}/readyz`)).status).toBe(200);
    shutdown.abort();
    const stopping = await get(`${base}/readyz`);
    expect(stopping.status).toBe(503);
    expect(JSON.parse(stopping.text)).toEqual({ ready: false, shuttingDown: true });
  });
});

describe("/metrics", () => {
  it("counts what the server decides, with the registry of its own runtime", async () => {
    const key = unwrap(await runtime.keys.create(LOCAL, { org: "acme", roles: ["reader"], name: "ops-reader" })).plaintext;
    const base = await serve(runtime);
    expect((await cubeRequest(base, bearer(key, "/sandboxes", "GET"))).status).toBe(200);
    expect((await cubeRequest(base, bearer(key, "/sandboxes/sbx-1", "DELETE"))).status).toBe(403);
    await runtime.policyHolder.reload("test");

    const scraped = await get(`${base}/metrics`);
    expect(scraped.status).toBe(200);
    expect(scraped.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    expect(scraped.headers.get("cache-control")).toBe("no-store");
    expect(scraped.text).toContain('keygate_decisions_total{entry="shim",reason="allowed"} 1\n');
    expect(scraped.text).toContain('keygate_decisions_total{entry="shim",reason="forbidden"} 1\n');
    expect(scraped.text).toContain('keygate_decision_duration_seconds_count{entry="shim"} 2\n');
    expect(scraped.text).toContain('keygate_key_cache_requests_total{result="miss"} 1\n');
    expect(scraped.text).toContain('keygate_key_cache_requests_total{result="hit"} 1\n');
    expect(scraped.text).toContain("keygate_key_lookup_duration_seconds_count 1\n");
    expect(scraped.text).toContain('keygate_policy_reloads_total{outcome="unchanged"} 1\n');
    expect(scraped.text).toContain(`keygate_policy_info{version="${runtime.policy().info.version}"} 1\n`);
    expect(scraped.text).toContain('keygate_rate_limit_backend_up{backend="memory"} 1\n');
    expect(scraped.text).toMatch(/^process_resident_memory_bytes \d+/m);
    if (testDatabaseKind === "postgres") expect(scraped.text).toMatch(/^keygate_db_pool_connections\{state="total"\} [1-3]$/m);
    else expect(scraped.text).not.toContain("keygate_db_pool_connections");
    expect(scraped.text).not.toContain(key);
    expect(scraped.text).not.toContain("sbx-1");
    expect((await get(`${base}/metrics`, { method: "DELETE" })).status).toBe(405);
  });

  it("KEYGATE_METRICS=false: no /metrics (the path is an RPC path like any other), probes still there", async () => {
    const base = await serve(unmetered);
    expect(unmetered.metrics).toBeUndefined();
    const scraped = await get(`${base}/metrics`);
    expect(scraped.status).toBe(404);
    expect(scraped.text).not.toContain("keygate_");
    expect((await get(`${base}/healthz`)).status).toBe(200);
    expect((await get(`${base}/readyz`)).status).toBe(200);
  });
});
