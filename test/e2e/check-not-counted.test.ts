import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { cliBudgetMs, createKey, runCli, startServerProcess, type CliResult, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * Issue 15, item 6. `keygate check` counted as the key's traffic: each check
 * went into the key's usage (`DENIED 7D` went up) and took a point from its
 * rate limit, so an operator checking a key limited to 1/1h used up the
 * hour's one request. A check is decided exactly as traffic is, but is not
 * counted: no usage counts, and the rate limit is read, not drawn from. Only
 * the local operator (control socket, in-process CLI) can ask for that: on
 * the public port the same request is ordinary traffic. Windows are an hour
 * long: the tests count what remains instead of waiting.
 */

const PATH = "/sandboxes";
const NOT_COUNTED = "not counted: checks do not count toward usage or rate limits";

let data: TestDataDir;
let limited: CreatedKeyJson;
let other: CreatedKeyJson;
let server: ServerProcess | undefined;

const cli = (args: string[]): Promise<CliResult> => runCli(args, { cwd: data.dir, env: data.env });

async function usage(id: string): Promise<{ allowed: number; denied: number }> {
  const result = await cli(["keys", "get", id, "--json"]);
  expect(result.code, result.stderr).toBe(0);
  const json = JSON.parse(result.stdout) as { requests_allowed_7d: number; requests_denied_7d: number };
  return { allowed: json.requests_allowed_7d, denied: json.requests_denied_7d };
}

/**
 * The usage the server has counted once it is written: over Postgres the CLI reads the database
 * directly, and the server writes its counts every KEYGATE_USAGE_FLUSH_INTERVAL (1 s here), so
 * this waits for them (a check counted by mistake would show in the same write, before the traffic's).
 */
async function usageReaches(id: string, expected: { allowed: number; denied: number }): Promise<void> {
  await vi.waitFor(async () => expect(await usage(id)).toEqual(expected), { timeout: 30_000, interval: 100 });
}

async function check(key: string, method: string): Promise<CliResult> {
  return cli(["check", "--key", key, "--path", PATH, "--method", method]);
}

beforeAll(async () => {
  data = await createTestDataDir();
  limited = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "1/1h", "--name", "limited"], { cwd: data.dir, env: data.env });
  other = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "1/1h", "--name", "other"], { cwd: data.dir, env: data.env });
}, cliBudgetMs(2));

afterAll(async () => {
  if (server) expect(await server.stop()).toBe(0);
  await data?.dispose();
});

describe(`keygate check is not traffic (${testDatabaseKind})`, () => {
  it("with no server running: allowed and denied checks leave the key's usage at zero", async () => {
    const results: CliResult[] = [];
    for (let i = 0; i < 2; i++) results.push(await check(limited.key, "GET"), await check(limited.key, "DELETE"));
    expect(await usage(limited.id)).toEqual({ allowed: 0, denied: 0 });
    for (const [i, result] of results.entries()) {
      expect(result.code, result.stderr).toBe(i % 2);
      expect(result.stdout).toContain(i % 2 === 0 ? "decision:  ALLOW" : "decision:  DENY");
      expect(result.stdout).toContain(NOT_COUNTED);
    }
  }, cliBudgetMs(10));

  it("while the server runs: three checks of a 1/1h key, then a real /verify is still allowed", async () => {
    server = await startServerProcess([], { cwd: data.dir, env: { ...data.env, KEYGATE_USAGE_FLUSH_INTERVAL: "1s" } });
    for (let i = 0; i < 3; i++) {
      const result = await check(limited.key, "GET");
      expect(result.code, result.stdout + result.stderr).toBe(0);
      // What the budget holds now, nothing taken.
      expect(result.stdout).toContain("rate:      1 of 1 left");
      expect(result.stdout).toContain(NOT_COUNTED);
    }
    const json = await cli(["check", "--json", "--key", limited.key, "--path", PATH, "--method", "GET"]);
    expect(JSON.parse(json.stdout)).toMatchObject({ allowed: true, counted: false, rate_limit: { limit: 1, remaining: 1 } });
    expect(await usage(limited.id)).toEqual({ allowed: 0, denied: 0 });

    // The hour's one request is still there for real traffic.
    const first = await cubeRequest(server.url, bearer(limited.key, PATH, "GET"));
    expect(first.status).toBe(200);
    expect(first.headers["ratelimit-remaining"]).toBe("0");
    const second = await cubeRequest(server.url, bearer(limited.key, PATH, "GET"));
    expect(second.status).toBe(429);
    await usageReaches(limited.id, { allowed: 1, denied: 1 });

    // Over Postgres the CLI decides in its own process, with its own in-memory budgets; on
    // PGlite it asks the server, whose budget the traffic has spent.
    if (testDatabaseKind === "pglite") {
      // A check now says what traffic would get (rate limited), and still counts nothing.
      const spent = await check(limited.key, "GET");
      expect(spent.code).toBe(1);
      expect(spent.stdout).toContain("reason:    rate_limited");
      expect(spent.stdout).toContain("rate:      0 of 1 left");
      expect(spent.stdout).toContain(NOT_COUNTED);
      expect(await usage(limited.id)).toEqual({ allowed: 1, denied: 1 });
    }
  }, cliBudgetMs(14));

  // Only the local operator can ask for explain: on the public port it is ignored, so traffic
  // cannot make itself uncounted by setting it.
  it("Authorize on the public port with explain = true is ordinary traffic: counted and rate limited", async () => {
    expect(server).toBeDefined();
    const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server!.url, httpVersion: "1.1" }));
    const ask = { credential: other.key, path: PATH, method: "GET", explain: true };
    const first = await client.authorize(ask);
    expect({ allowed: first.allowed, remaining: first.rateLimit?.remaining }).toEqual({ allowed: true, remaining: 0 });
    const second = await client.authorize(ask);
    expect({ allowed: second.allowed, reason: second.reason }).toEqual({ allowed: false, reason: Reason.RATE_LIMITED });
    await usageReaches(other.id, { allowed: 1, denied: 1 });
  }, cliBudgetMs(8));
});
