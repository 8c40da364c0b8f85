import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKey } from "../../src/core/keys/key-format.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, POLICY_DIR, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * The decision log and the failed-auth guard through the real server and
 * its Cube callback: a client guessing keys is slowed, then refused with
 * 429, while a valid key the cache knows (decided before, KEYGATE_KEY_CACHE_TTL
 * an hour here) from the same client is still allowed; every
 * decision is in the log, no key is, and `policy diff` replays the log.
 */

let data: TestDataDir;
let server: ServerProcess | undefined;
let reader: CreatedKeyJson;
let logPath: string;
const garbage: string[] = [];

beforeAll(async () => {
  data = await createTestDataDir();
  logPath = join(data.dir, "decisions.jsonl");
  // 5 invalid keys per minute answered normally, the next 5 slowed, the rest refused.
  const env = { ...data.env, KEYGATE_AUTH_FAIL_LIMIT: "5/1m", KEYGATE_AUTH_GUARD_EXEMPT: "none", KEYGATE_DECISION_LOG_MODE: "all", KEYGATE_KEY_CACHE_TTL: "1h" };
  server = await startServerProcess(["--decision-log", logPath], { cwd: data.dir, env });
  reader = await createKey(["--org", "acme", "--role", "reader"], { cwd: data.dir, env });
});

afterAll(async () => {
  const code = await server?.stop();
  await data?.dispose();
  expect(code ?? 0).toBe(0);
});

describe("failed-auth guard and decision log, end to end", () => {
  it("30 garbage keys from one client: 401s, then 429 with Retry-After; a valid key the cache knows from that client still gets 200", async () => {
    expect((await cubeRequest(server!.url, bearer(reader.key, "/sandboxes/abc", "GET"))).status).toBe(200);
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) {
      // Alternate made-up well-formed keys (a database lookup) and malformed ones (none).
      const key = i % 2 === 0 ? generateKey() : `sk-sb-guess${i}`;
      garbage.push(key);
      const res = await cubeRequest(server!.url, bearer(key, "/sandboxes/abc", "GET"));
      statuses.push(res.status);
      if (res.status === 429) {
        expect(JSON.parse(res.body)).toEqual({ code: 429, message: "too many invalid API keys from this address" });
        expect(Number(res.headers["retry-after"])).toBeGreaterThanOrEqual(1);
      }
    }
    expect(statuses.slice(0, 10)).toEqual(Array(10).fill(401));
    expect(statuses.slice(10)).toEqual(Array(20).fill(429));

    const ok = await cubeRequest(server!.url, bearer(reader.key, "/sandboxes/abc", "GET"));
    expect(ok.status).toBe(200);
    expect(ok.headers["x-auth-user"]).toBe(reader.id);
    const forbidden = await cubeRequest(server!.url, bearer(reader.key, "/sandboxes/abc", "DELETE"));
    expect(forbidden.status).toBe(403);
  });

  it("the decision log holds every decision, never a key, and `policy diff --requests` reads it", async () => {
    // Stop the server so the log is flushed and closed.
    expect(await server!.stop()).toBe(0);
    server = undefined;
    const text = await readFile(logPath, "utf8");
    for (const key of [reader.key, ...garbage]) expect(text).not.toContain(key);
    const lines = text.trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
    const verify = lines.filter((line) => line.entry === "shim");
    expect(verify.map((line) => line.reason)).toEqual(["allowed", ...Array(10).fill("invalid_key"), ...Array(20).fill("rate_limited"), "allowed", "forbidden"]);
    expect(verify.every((line) => line.source === "127.0.0.1" && line.path === "/sandboxes/abc")).toBe(true);
    expect(verify.at(-2)).toMatchObject({ allowed: true, key_id: reader.id, key_roles: ["reader"], key_org: "acme", method: "GET", matched_rule: expect.stringMatching(/\.csv:\d+$/) });

    const diff = await runCli(["policy", "diff", "--against", POLICY_DIR, "--requests", logPath], { cwd: data.dir });
    expect(diff.code, diff.stderr).toBe(0);
    // Only the decisions about a key are replayed (the warm-up allow, the allow and the forbidden one).
    expect(diff.stdout).toMatch(/\b3 requests\b/);
  });
});
