import { createHmac } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createKeygateClient, type KeygateClient } from "../../src/client/index.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { createKey, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * Cube's webhooks against a real `keygate serve` (KEYGATE_CUBE_WEBHOOK_SECRET
 * set), posted with a real HTTP client as Cube's dispatcher posts them
 * (CubeAPI/src/webhook/mod.rs: JSON body, Content-Type, User-Agent,
 * X-Cube-Webhook-Signature = hex HMAC-SHA256 of the body); ownership read
 * back through ResourceService. A second server without the secret has no
 * endpoint.
 */

const SECRET = "e2e-cube-webhook-shared-secret";
let data: TestDataDir;
let offData: TestDataDir;
let server: ServerProcess;
let off: ServerProcess;
let admin: CreatedKeyJson;
let client: KeygateClient;

beforeAll(async () => {
  data = await createTestDataDir();
  offData = await createTestDataDir();
  server = await startServerProcess([], { cwd: data.dir, env: { ...data.env, KEYGATE_CUBE_WEBHOOK_SECRET: SECRET } });
  off = await startServerProcess([], { cwd: offData.dir, env: offData.env });
  admin = await createKey(["--org", "acme", "--role", "admin"], { cwd: data.dir, env: data.env });
  client = createKeygateClient({ baseUrl: server.url, apiKey: admin.key });
}, 60_000);

afterAll(async () => {
  client?.close();
  const codes = await Promise.all([server?.stop(), off?.stop()]);
  await data?.dispose();
  await offData?.dispose();
  expect(codes.filter((code) => code !== undefined && code !== 0)).toEqual([]);
});

const body = (event: string, sandboxId: string) => JSON.stringify({ event, timestamp: new Date().toISOString(), sandbox_id: sandboxId });
const sign = (text: string, secret = SECRET) => createHmac("sha256", secret).update(text).digest("hex");

async function post(url: string, text: string | Uint8Array, headers: Record<string, string>) {
  const response = await fetch(`${url}/webhooks/cube`, { method: "POST", body: text, headers: { "content-type": "application/json", "user-agent": "CubeSandbox-Webhook/1.0", ...headers } });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

const liveIds = async () => (await client.resources.list({ pageSize: 1000 })).resources.map((r) => r.id);

describe(`POST /webhooks/cube on keygate serve, on ${testDatabaseKind}`, () => {
  it("a signed sandbox.deleted releases the sandbox: one fewer live sandbox for the org", async () => {
    await client.resources.claim({ id: "sb-e2e-1" });
    await client.resources.claim({ id: "sb-e2e-2" });
    const before = await liveIds();
    const text = body("sandbox.deleted", "sb-e2e-1");
    expect(await post(server.url, text, { "x-cube-webhook-signature": sign(text) })).toEqual({ status: 200, json: { ok: true, outcome: "released" } });
    const after = await liveIds();
    expect(after).toHaveLength(before.length - 1);
    expect(after).not.toContain("sb-e2e-1");
    expect((await client.resources.get({ id: "sb-e2e-1" })).resource?.releasedAt).toBeDefined();
    expect(server.output()).toContain('"msg":"sandbox released by cube webhook"');
    expect(server.output()).toContain('"cube_webhook":"/webhooks/cube"');
    expect(off.output()).toContain('"cube_webhook":"off"');
  });

  it("unsigned or wrongly signed: 401 JSON, and the sandbox stays owned", async () => {
    const text = body("sandbox.deleted", "sb-e2e-2");
    expect(await post(server.url, text, {})).toEqual({ status: 401, json: { code: 401, message: "missing X-Cube-Webhook-Signature" } });
    expect(await post(server.url, text, { "x-cube-webhook-signature": sign(text, "a-different-secret-entirely") })).toEqual({
      status: 401,
      json: { code: 401, message: "invalid X-Cube-Webhook-Signature" },
    });
    expect(await liveIds()).toContain("sb-e2e-2");
  });

  it("a duplicate delivery is 200 and changes nothing; an unknown id is 200 and logged", async () => {
    const text = body("sandbox.deleted", "sb-e2e-2");
    const headers = { "x-cube-webhook-signature": sign(text) };
    expect((await post(server.url, text, headers)).json.outcome).toBe("released");
    expect(await post(server.url, text, headers)).toEqual({ status: 200, json: { ok: true, outcome: "already_released" } });
    const unknown = body("sandbox.deleted", "sb-e2e-never");
    expect(await post(server.url, unknown, { "x-cube-webhook-signature": sign(unknown) })).toEqual({ status: 200, json: { ok: true, outcome: "unknown" } });
    expect(server.output()).toMatch(/"msg":"cube webhook for a sandbox with no ownership entry".*"sandbox_id":"sb-e2e-never"/);
  });

  it("a body over 1 MiB is 413", async () => {
    const big = new Uint8Array(1024 * 1024 + 1).fill(32);
    expect((await post(server.url, big, { "x-cube-webhook-signature": sign("x") })).status).toBe(413);
  });

  it("without KEYGATE_CUBE_WEBHOOK_SECRET there is no endpoint: 404", async () => {
    const text = body("sandbox.deleted", "sb-e2e-2");
    expect((await post(off.url, text, { "x-cube-webhook-signature": sign(text) })).status).toBe(404);
  });
});
