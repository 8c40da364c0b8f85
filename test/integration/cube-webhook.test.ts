import { createHmac } from "node:crypto";
import { BlockList } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEFAULT_LISTENER_LIMITS, readServeConfig, type ServeConfig } from "../../src/config/config.js";
import type { StoreTarget } from "../../src/core/db/connect.js";
import { listAuditEvents } from "../../src/core/audit/audit.repository.js";
import { signatureMatches, WEBHOOK_BODY_MAX_BYTES } from "../../src/entries/webhooks/cube-webhook.js";
import { createListener, type Listener } from "../../src/http/listener.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { createRequestHandler } from "../../src/server/serve.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { createTestStoreTarget, testDatabaseKind } from "../support/database.js";
import { HOUR, POLICY_DIR } from "./test-core.js";

/**
 * POST /webhooks/cube in process, with a real HTTP client (fetch), over the
 * real ledger on PGlite or Postgres: what Cube sends
 * (CubeAPI/docs/webhook-integration.md) releases the sandbox and frees the
 * org's live-sandbox budget; anything unsigned or wrongly signed changes
 * nothing; retries, duplicates and unknown ids are 2xx.
 */

const SECRET = "cube-webhook-secret-for-tests";
const SERVE = { credentialPriority: ["authorization", "x-api-key"] as ServeConfig["credentialPriority"], clientIp: { header: undefined, trusted: new BlockList() }, shimPath: "/verify", directAuthorize: true };
const lines: Record<string, unknown>[] = [];
const log = createLogger("debug", (line) => void lines.push(JSON.parse(line) as Record<string, unknown>));

let runtime: Runtime;
let base: string;
let baseOff: string;
const drops: (() => Promise<void>)[] = [];
const listeners: Listener[] = [];

async function target(): Promise<StoreTarget> {
  const { target, drop } = await createTestStoreTarget();
  drops.push(drop);
  return target;
}

async function serve(secret: string | undefined): Promise<string> {
  const listener = createListener(createRequestHandler({ ...SERVE, cubeWebhookSecret: secret }, runtime, log), DEFAULT_LISTENER_LIMITS);
  listeners.push(listener);
  const { port } = await listener.listen(0, "127.0.0.1");
  return `http://127.0.0.1:${port}`;
}

beforeAll(async () => {
  const read = readServeConfig({ "policy-dir": POLICY_DIR }, {}, process.cwd());
  if (!read.ok) throw new Error(read.errors.join("; "));
  runtime = await openRuntime({ ...read.config, usageFlushMs: HOUR }, { storeTarget: await target() });
  base = await serve(SECRET);
  baseOff = await serve(undefined);
});

afterAll(async () => {
  await Promise.all(listeners.map((listener) => listener.close(1_000)));
  await runtime?.close();
  for (const drop of drops) await drop();
});

const sign = (body: string, secret = SECRET) => createHmac("sha256", secret).update(body).digest("hex");

/** What Cube's dispatcher sends: its JSON, Content-Type, User-Agent, and the signature when it has a secret. */
function cubeBody(event: string, sandboxId: string, at = new Date()): string {
  return JSON.stringify({ event, timestamp: at.toISOString(), sandbox_id: sandboxId, ...(event === "sandbox.created" && { template_id: "tpl-python-3.11" }) });
}

async function deliver(body: string | Uint8Array, headers: Record<string, string>, url = base) {
  const response = await fetch(`${url}/webhooks/cube`, { method: "POST", body, headers: { "content-type": "application/json", "user-agent": "CubeSandbox-Webhook/1.0", ...headers } });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const sandbox = (id: string) => ({ kind: "sandboxes", id });

async function claim(id: string, org = "acme") {
  const claimed = await runtime.resources.claim(sandbox(id), { org, namespace: "default", keyId: "local" });
  expect(claimed.ok).toBe(true);
}

describe(`POST /webhooks/cube, on ${testDatabaseKind}`, () => {
  it("a signed sandbox.deleted releases the sandbox and frees the org's live-sandbox budget; audited with the event id", async () => {
    await claim("sb-del-1");
    await claim("sb-del-2");
    const live = await runtime.resources.countLive("sandboxes", { org: "acme" });
    const body = cubeBody("sandbox.deleted", "sb-del-1");
    const answer = await deliver(body, { "x-cube-webhook-signature": sign(body) });
    expect(answer).toEqual({ status: 200, body: { ok: true, outcome: "released" } });
    expect(await runtime.resources.owner(sandbox("sb-del-1"))).toBeNull();
    expect(await runtime.resources.owner(sandbox("sb-del-2"))).not.toBeNull();
    expect(await runtime.resources.countLive("sandboxes", { org: "acme" })).toBe(live - 1);
    const [event] = await listAuditEvents(runtime.store.db, {}, 1);
    expect(event).toMatchObject({ actor: "cube-webhook", action: "resource.release", target: "sandboxes/sb-del-1", org: "acme", outcome: "ok" });
    expect(event!.detail).toMatchObject({ event: "sandbox.deleted", event_id: expect.stringMatching(/^sha256:[0-9a-f]{32}$/) });
  });

  it("Cube's newer sender: X-CubeSandbox-Signature sha256=…, and its X-CubeSandbox-Delivery as the event id", async () => {
    await claim("sb-new-sender", "globex");
    const body = cubeBody("sandbox.deleted", "sb-new-sender");
    const answer = await deliver(body, { "x-cubesandbox-signature": `sha256=${sign(body)}`, "x-cubesandbox-event": "sandbox.deleted", "x-cubesandbox-delivery": "7d0c6f7e-1111-4a5b-9c1d-000000000001" });
    expect(answer.body.outcome).toBe("released");
    const [event] = await listAuditEvents(runtime.store.db, {}, 1);
    expect(event!.detail).toMatchObject({ event_id: "7d0c6f7e-1111-4a5b-9c1d-000000000001" });
  });

  it.each([
    ["no signature", () => ({}), "missing X-Cube-Webhook-Signature"],
    ["a signature made with another secret", (body: string) => ({ "x-cube-webhook-signature": sign(body, "not-the-shared-secret") }), "invalid X-Cube-Webhook-Signature"],
    ["the signature of another body", () => ({ "x-cube-webhook-signature": sign(cubeBody("sandbox.deleted", "sb-other")) }), "invalid X-Cube-Webhook-Signature"],
    ["a truncated signature", (body: string) => ({ "x-cube-webhook-signature": sign(body).slice(0, 63) }), "invalid X-Cube-Webhook-Signature"],
    ["an empty signature", () => ({ "x-cube-webhook-signature": "" }), "invalid X-Cube-Webhook-Signature"],
    ["base64 instead of hex", (body: string) => ({ "x-cube-webhook-signature": createHmac("sha256", SECRET).update(body).digest("base64") }), "invalid X-Cube-Webhook-Signature"],
  ])("%s: 401, nothing released", async (_, headers, message) => {
    await claim("sb-kept");
    const body = cubeBody("sandbox.deleted", "sb-kept");
    expect(await deliver(body, headers(body))).toEqual({ status: 401, body: { code: 401, message } });
    expect(await runtime.resources.owner(sandbox("sb-kept"))).toMatchObject({ org: "acme" });
  });

  it("a duplicate (Cube retries after a lost answer) or a replay is 200 and changes nothing more", async () => {
    await claim("sb-dup");
    const body = cubeBody("sandbox.deleted", "sb-dup");
    const headers = { "x-cube-webhook-signature": sign(body) };
    expect((await deliver(body, headers)).body.outcome).toBe("released");
    const audited = (await listAuditEvents(runtime.store.db, {}, 1000)).length;
    for (let i = 0; i < 3; i++) expect(await deliver(body, headers)).toEqual({ status: 200, body: { ok: true, outcome: "already_released" } });
    expect((await listAuditEvents(runtime.store.db, {}, 1000)).length).toBe(audited);
  });

  it("an unknown sandbox id is 200 and a log line, not an error", async () => {
    const body = cubeBody("sandbox.deleted", "sb-never-claimed");
    expect(await deliver(body, { "x-cube-webhook-signature": sign(body) })).toEqual({ status: 200, body: { ok: true, outcome: "unknown" } });
    expect(lines.some((line) => line.msg === "cube webhook for a sandbox with no ownership entry" && line.sandbox_id === "sb-never-claimed")).toBe(true);
  });

  it("an event older than the entry (a late retry about an id claimed again since) releases nothing", async () => {
    await claim("sb-reused");
    const body = cubeBody("sandbox.deleted", "sb-reused", new Date(Date.now() - HOUR));
    expect((await deliver(body, { "x-cube-webhook-signature": sign(body) })).body.outcome).toBe("stale");
    expect(await runtime.resources.owner(sandbox("sb-reused"))).not.toBeNull();
  });

  it("created, paused and resumed are acknowledged and ignored (a webhook names no owner)", async () => {
    await claim("sb-life");
    for (const event of ["sandbox.created", "sandbox.paused", "sandbox.resumed"]) {
      const body = cubeBody(event, "sb-life");
      expect(await deliver(body, { "x-cube-webhook-signature": sign(body) })).toEqual({ status: 200, body: { ok: true, outcome: "ignored" } });
    }
    expect(await runtime.resources.owner(sandbox("sb-life"))).not.toBeNull();
  });

  it("a signed body that is not a Cube event is 400; GET is 405", async () => {
    const body = JSON.stringify({ hello: "world" });
    expect((await deliver(body, { "x-cube-webhook-signature": sign(body) })).status).toBe(400);
    expect((await fetch(`${base}/webhooks/cube`)).status).toBe(405);
  });

  it("a body over 1 MiB is 413, declared or streamed, before any signature is checked", async () => {
    const big = new Uint8Array(WEBHOOK_BODY_MAX_BYTES + 1).fill(32);
    expect(await deliver(big, { "x-cube-webhook-signature": "0".repeat(64) })).toEqual({ status: 413, body: { code: 413, message: `request body larger than ${WEBHOOK_BODY_MAX_BYTES} bytes` } });
    // Chunked: no Content-Length to go by.
    const chunks = new ReadableStream<Uint8Array>({
      start(controller) {
        for (let i = 0; i < 17; i++) controller.enqueue(new Uint8Array(64 * 1024).fill(32));
        controller.close();
      },
    });
    const response = await fetch(`${base}/webhooks/cube`, { method: "POST", body: chunks, duplex: "half", headers: { "x-cube-webhook-signature": "0".repeat(64) } } as RequestInit);
    expect(response.status).toBe(413);
  });

  it("without KEYGATE_CUBE_WEBHOOK_SECRET the endpoint is off: 404, even for a correctly signed body", async () => {
    await claim("sb-off");
    const body = cubeBody("sandbox.deleted", "sb-off");
    expect((await deliver(body, { "x-cube-webhook-signature": sign(body) }, baseOff)).status).toBe(404);
    expect(await runtime.resources.owner(sandbox("sb-off"))).not.toBeNull();
  });
});

describe("signatureMatches", () => {
  const body = Buffer.from('{"event":"sandbox.deleted"}');
  const good = createHmac("sha256", SECRET).update(body).digest("hex");
  it.each([
    [good, true],
    [good.toUpperCase(), true],
    [`sha256=${good}`, true],
    [` ${good} `, true],
    [undefined, false],
    ["", false],
    [good.slice(2), false],
    [`${good}00`, false],
    [`sha1=${good}`, false],
    [good.replace(/.$/, (c) => (c === "0" ? "1" : "0")), false],
  ])("%j → %s", (header, expected) => {
    expect(signatureMatches(SECRET, body, header)).toBe(expected);
  });
});
