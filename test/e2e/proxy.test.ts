import http from "node:http";
import { Sandbox, SandboxNotFoundError, type SandboxOpts } from "e2b";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { startE2bStub, type E2bStub } from "../support/e2b-stub.js";
import { cliBudgetMs, createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { proxyUrlOf } from "../support/proxy-env.js";

/**
 * Proxy mode through a client nobody here wrote: the `e2b` SDK, pointed at
 * `keygate serve --upstream` in front of an E2B-compatible stub (what Cube
 * serves; it lists every org's sandboxes to anyone, as Cube does). Two orgs
 * and a platform key (org "*"): each org creates, sees and touches only its
 * own sandboxes, by any route or prefix, and a denied request never reaches
 * the stub (its record of requests is the witness).
 */

let stub: E2bStub;
let data: TestDataDir;
let server: ServerProcess;
let proxy: string;
const keys = {} as Record<"acme" | "globex" | "platform" | "acmeReader" | "limited" | "initech1" | "initech2", CreatedKeyJson>;

/** The SDK's connection options for a key: the proxy as the API, no retries (a 429 is the answer under test). */
const as = (key: CreatedKeyJson): SandboxOpts => ({ apiKey: key.key, apiUrl: proxy, retries: 0, requestTimeoutMs: 10_000 });

async function listIds(key: CreatedKeyJson): Promise<string[]> {
  return (await Sandbox.list(as(key)).nextItems()).map((s) => s.sandboxId).sort();
}

async function call(method: string, path: string, key: CreatedKeyJson | undefined, body?: string, headers: Record<string, string> = {}) {
  const res = await fetch(`${proxy}${path}`, {
    method,
    headers: { ...(key && { "x-api-key": key.key }), ...(body !== undefined && { "content-type": "application/json" }), ...headers },
    ...(body !== undefined && { body }),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) as unknown };
}

/** A create whose body is sent chunked (no Content-Length), `bytes` long. */
function chunkedCreate(key: CreatedKeyJson, bytes: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(`${proxy}/sandboxes`, { method: "POST", headers: { "x-api-key": key.key, "content-type": "application/json" } }, (res) => {
      let body = "";
      res.on("data", (chunk: Buffer) => (body += chunk.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    const chunk = Buffer.alloc(64 * 1024, "x");
    req.write('{"pad":"');
    for (let sent = 0; sent < bytes; sent += chunk.length) req.write(chunk);
    req.end('"}');
  });
}

/** How many requests reached the stub while `work` ran. */
async function reaching(work: () => Promise<unknown>): Promise<number> {
  const before = stub.requests.length;
  await work();
  return stub.requests.length - before;
}

/** A terminal connection: its first echo, or the HTTP status it was refused with. */
function terminal(path: string, headers: Record<string, string> = {}): Promise<{ echo: string } | { status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${proxy.replace("http", "ws")}${path}`, { headers });
    ws.on("open", () => ws.send("hi"));
    ws.on("message", (data) => {
      resolve({ echo: data.toString() });
      ws.close();
    });
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (chunk: Buffer) => (body += chunk.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    ws.on("error", reject);
  });
}

beforeAll(async () => {
  stub = await startE2bStub();
  data = await createTestDataDir();
  // The shipped policy: it covers every route the e2b SDK calls.
  const env = data.env;
  const cli = { cwd: data.dir, env };
  server = await startServerProcess(["--upstream", stub.url, "--proxy-port", "0"], {
    cwd: data.dir,
    env: { ...env, KEYGATE_PROXY_TIMEOUT: "1s", KEYGATE_ORG_MAX_SANDBOXES: "4" },
  });
  proxy = proxyUrlOf(server);
  keys.acme = await createKey(["--org", "acme", "--role", "writer", "--name", "acme writer"], cli);
  keys.acmeReader = await createKey(["--org", "acme", "--role", "reader", "--name", "acme reader"], cli);
  keys.globex = await createKey(["--org", "globex", "--role", "writer", "--name", "globex writer"], cli);
  keys.platform = await createKey(["--org", "*", "--role", "writer", "--name", "platform"], cli);
  keys.limited = await createKey(["--org", "hooli", "--role", "writer", "--name", "limited", "--max-sandboxes", "2"], cli);
  keys.initech1 = await createKey(["--org", "initech", "--role", "writer", "--name", "initech one"], cli);
  keys.initech2 = await createKey(["--org", "initech", "--role", "writer", "--name", "initech two"], cli);
}, cliBudgetMs(8));

afterAll(async () => {
  // A clean stop (exit 0): the proxy listener drains and its upstream pool closes with the rest.
  const code = await server?.stop();
  await stub?.close();
  await data?.dispose();
  expect(code === undefined || code === 0, server?.output()).toBe(true);
});

describe(`proxy mode, the e2b SDK, two orgs and a platform key (${testDatabaseKind})`, () => {
  let acmeBox: string;
  let globexBox: string;

  it("each org creates through the SDK (v2): Cube gets the body stamped with the owner, the key's identity, and no credential", async () => {
    const acme = await Sandbox.create("base", { ...as(keys.acme), metadata: { keygate_org: "globex", team: "red" } });
    const globex = await Sandbox.create("base", as(keys.globex));
    acmeBox = acme.sandboxId;
    globexBox = globex.sandboxId;
    // The client's own keygate_org is overwritten: the owner is who created it.
    expect(stub.sandboxes.get(acmeBox)?.metadata).toEqual({ keygate_org: "acme", keygate_namespace: "default", team: "red" });
    expect(stub.sandboxes.get(globexBox)?.metadata).toEqual({ keygate_org: "globex", keygate_namespace: "default" });
    const create = stub.requests.find((r) => r.method === "POST" && r.url === "/v2/sandboxes" && r.headers["x-user-id"] === keys.acme.id)!;
    expect(create.headers).toMatchObject({ "x-user-id": keys.acme.id, "x-user-name": "acme writer", "x-forwarded-proto": "http", "x-forwarded-for": "127.0.0.1" });
    expect(create.headers["x-forwarded-host"]).toBe(new URL(proxy).host);
    expect(create.headers["x-api-key"]).toBeUndefined();
    expect(create.headers["authorization"]).toBeUndefined();
  });

  it("client-sent X-User-ID / X-User-Name are replaced; Authorization: Bearer works as well as X-API-Key", async () => {
    const got = await call("GET", `/sandboxes/${acmeBox}`, undefined, undefined, { authorization: `Bearer ${keys.acme.key}`, "x-user-id": "forged", "x-user-name": "forged" });
    expect(got.status).toBe(200);
    const seen = stub.requests.at(-1)!;
    expect(seen.headers["x-user-id"]).toBe(keys.acme.id);
    expect(seen.headers["x-user-name"]).toBe("acme writer");
    expect(seen.headers["authorization"]).toBeUndefined();
    expect(got.headers.get("x-stub")).toBe("e2b"); // the upstream's own headers pass through
    // One request id on both sides (made here, or the client's own), so the two logs can be matched.
    expect(seen.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/);
    expect(got.headers.get("x-request-id")).toBe(seen.headers["x-request-id"]);
    const traced = await call("GET", `/sandboxes/${acmeBox}`, keys.acme, undefined, { "x-request-id": "trace-42" });
    expect([traced.headers.get("x-request-id"), stub.requests.at(-1)!.headers["x-request-id"]]).toEqual(["trace-42", "trace-42"]);
  });

  it("lists only its own sandboxes, by the SDK (v2) and by v1 and /cubeapi/v1; the platform key sees all", async () => {
    expect(await listIds(keys.acme)).toEqual([acmeBox]);
    expect(await listIds(keys.globex)).toEqual([globexBox]);
    expect(await listIds(keys.platform)).toEqual(expect.arrayContaining([acmeBox, globexBox]));
    for (const path of ["/sandboxes", "/cubeapi/v1/sandboxes", "/cubeapi/v1/v2/sandboxes", "//sandboxes/", "/%73andboxes"]) {
      const listed = await call("GET", path, keys.globex);
      expect(listed.status, path).toBe(200);
      expect((listed.json() as { sandboxID: string }[]).map((s) => s.sandboxID), path).toEqual([globexBox]);
      expect(Number(listed.headers.get("content-length")), path).toBe(Buffer.byteLength(listed.text));
    }
  });

  it("another org's sandbox is not found by any route or prefix, and nothing of it reaches the stub", async () => {
    const reached = await reaching(async () => {
      await expect(Sandbox.getInfo(acmeBox, as(keys.globex))).rejects.toBeInstanceOf(SandboxNotFoundError);
      expect(await Sandbox.kill(acmeBox, as(keys.globex))).toBe(false);
      await expect(Sandbox.setTimeout(acmeBox, 60_000, as(keys.globex))).rejects.toBeInstanceOf(SandboxNotFoundError);
      await expect(Sandbox.connect(acmeBox, as(keys.globex))).rejects.toBeInstanceOf(SandboxNotFoundError);
      await expect(Sandbox.fork(acmeBox, as(keys.globex))).rejects.toBeInstanceOf(SandboxNotFoundError);
      for (const [method, path] of [
        ["GET", `/sandboxes/${acmeBox}/logs`],
        ["GET", `/v2/sandboxes/${acmeBox}/logs`],
        ["GET", `/cubeapi/v1/sandboxes/${acmeBox}`],
        ["DELETE", `/cubeapi/v1/sandboxes/${acmeBox}`],
        ["GET", `/sandboxes/${acmeBox}/metrics`],
      ] as const) {
        const denied = await call(method, path, keys.globex);
        expect(denied.status, `${method} ${path}`).toBe(404);
        expect(denied.json(), `${method} ${path}`).toEqual({ code: 404, message: expect.any(String) });
      }
      // The shell too, however the credential comes.
      expect(await terminal(`/sandboxes/${acmeBox}/terminal/ws?api_key=${keys.globex.key}`)).toMatchObject({ status: 404 });
      expect(await terminal(`/sandboxes/${acmeBox}/terminal/ws`, { "x-api-key": keys.globex.key })).toMatchObject({ status: 404 });
    });
    expect(reached).toBe(0);
    // The same answer as for a sandbox that does not exist at all: no existence oracle.
    const missing = await call("GET", "/sandboxes/sbx-never-was", keys.globex);
    expect(missing.status).toBe(404);
    expect(stub.sandboxes.has(acmeBox)).toBe(true);
  });

  it("every other deny is answered in the callback's JSON and never forwarded", async () => {
    const reached = await reaching(async () => {
      const missing = await call("GET", "/sandboxes", undefined);
      expect([missing.status, missing.json()]).toEqual([401, { code: 401, message: "missing API key in Authorization header" }]);
      // One character off, whatever the key ends in (replacing it by a fixed letter would leave a key ending in that letter valid).
      const typo = `${keys.acme.key.slice(0, -1)}${keys.acme.key.endsWith("x") ? "y" : "x"}`;
      const invalid = await call("GET", "/sandboxes", { ...keys.acme, key: typo });
      expect([invalid.status, invalid.json()]).toEqual([401, { code: 401, message: "invalid API key" }]);
      const reader = await call("POST", "/v2/sandboxes", keys.acmeReader, "{}");
      expect([reader.status, reader.json()]).toEqual([403, { code: 403, message: "API key is not allowed to POST /v2/sandboxes" }]);
      // A reader may read its org's sandbox, but never open a shell in it.
      expect(await terminal(`/sandboxes/${acmeBox}/terminal/ws?access_token=${keys.acmeReader.key}`)).toMatchObject({ status: 403 });
      // Query credentials count only on a WebSocket upgrade.
      expect((await call("GET", `/sandboxes?api_key=${keys.acme.key}`, undefined)).status).toBe(401);
    });
    expect(reached).toBe(0);
  });

  it("the owner gets, sets a timeout, connects, reads logs and forks; a fork is the caller's too", async () => {
    expect(await Sandbox.getInfo(acmeBox, as(keys.acme))).toMatchObject({ sandboxId: acmeBox, metadata: { keygate_org: "acme", team: "red" } });
    await Sandbox.setTimeout(acmeBox, 60_000, as(keys.acme));
    expect((await Sandbox.connect(acmeBox, as(keys.acme))).sandboxId).toBe(acmeBox);
    expect((await call("GET", `/v2/sandboxes/${acmeBox}/logs`, keys.acme)).json()).toMatchObject({ logs: [{ line: `hello from ${acmeBox}` }] });
    const [fork] = await Sandbox.fork(acmeBox, { ...as(keys.acme), count: 1 });
    expect(fork).toBeInstanceOf(Sandbox);
    const forkId = (fork as Sandbox).sandboxId;
    expect(stub.sandboxes.get(forkId)?.metadata).toMatchObject({ keygate_org: "acme" });
    expect(await listIds(keys.acme)).toEqual([acmeBox, forkId].sort());
    await expect(Sandbox.getInfo(forkId, as(keys.globex))).rejects.toBeInstanceOf(SandboxNotFoundError);
    // The platform operator reaches every org's sandbox.
    expect((await Sandbox.getInfo(globexBox, as(keys.platform))).sandboxId).toBe(globexBox);
    expect(await Sandbox.kill(forkId, as(keys.acme))).toBe(true);
  });

  it("the terminal is piped both ways; credential query parameters never reach Cube", async () => {
    expect(await terminal(`/sandboxes/${acmeBox}/terminal/ws?cols=80&api_key=${encodeURIComponent(keys.acme.key)}&rows=24`)).toEqual({ echo: "echo: hi" });
    expect(stub.terminals.at(-1)).toBe(`/sandboxes/${acmeBox}/terminal/ws?cols=80&rows=24`);
    expect(await terminal(`/cubeapi/v1/sandboxes/${acmeBox}/terminal/ws?access_token=${keys.acme.key}`)).toEqual({ echo: "echo: hi" });
    expect(stub.terminals.at(-1)).toBe(`/cubeapi/v1/sandboxes/${acmeBox}/terminal/ws`);
    const upgrade = stub.requests.at(-1)!;
    expect(upgrade.headers["x-user-id"]).toBe(keys.acme.id);
    expect(upgrade.headers["authorization"]).toBeUndefined();
  });

  it("a kill releases the sandbox: gone from the list, and from the platform's view of the ledger", async () => {
    expect(await Sandbox.kill(acmeBox, as(keys.acme))).toBe(true);
    expect(await listIds(keys.acme)).toEqual([]);
    // A sandbox nobody owns any more is not found, for its old owner too (Cube forgot it as well).
    expect((await call("GET", `/sandboxes/${acmeBox}`, keys.acme)).status).toBe(404);
  });

  it("a key's live-sandbox limit: over it, 429 naming the limit and nothing forwarded; a kill frees the budget", async () => {
    const first = await Sandbox.create("base", as(keys.limited));
    await Sandbox.create("base", as(keys.limited));
    const reached = await reaching(async () => {
      const over = await call("POST", "/sandboxes", keys.limited, '{"templateID":"base"}');
      expect([over.status, over.json()]).toEqual([429, { code: 429, message: `live sandbox limit reached: 2 for key ${keys.limited.id} (keygen --max-sandboxes)` }]);
      await expect(Sandbox.create("base", as(keys.limited))).rejects.toThrow(/live sandbox limit reached: 2/);
    });
    expect(reached).toBe(0);
    expect(await Sandbox.kill(first.sandboxId, as(keys.limited))).toBe(true);
    await Sandbox.create("base", as(keys.limited));
  });

  it("the org default (KEYGATE_ORG_MAX_SANDBOXES=4) counts every key of the org", async () => {
    for (const key of [keys.initech1, keys.initech1, keys.initech2, keys.initech2]) await Sandbox.create("base", as(key));
    const over = await call("POST", "/cubeapi/v1/sandboxes", keys.initech2, "{}");
    expect([over.status, over.json()]).toEqual([429, { code: 429, message: "live sandbox limit reached: 4 for org initech (KEYGATE_ORG_MAX_SANDBOXES)" }]);
  });

  it("a create body: over 1 MiB is 413, a non-object body or metadata is 400; neither is forwarded", async () => {
    const reached = await reaching(async () => {
      const big = await call("POST", "/v2/sandboxes", keys.globex, JSON.stringify({ templateID: "base", pad: "x".repeat(1024 * 1024) }));
      expect(big.status).toBe(413);
      expect(big.json()).toMatchObject({ code: 413 });
      // Chunked, with no length to refuse up front: read up to the cap, then the 413 still arrives.
      expect(await chunkedCreate(keys.globex, 1100 * 1024)).toMatchObject({ status: 413 });
      for (const body of ["[1]", '"base"', '{"metadata":[1]}', '{"metadata":"x"}', "{not json"]) {
        const bad = await call("POST", "/sandboxes", keys.globex, body);
        expect([bad.status, (bad.json() as { code: number }).code], body).toEqual([400, 400]);
      }
    });
    expect(reached).toBe(0);
  });

  it("a create Cube answers with no sandbox, or with another org's sandbox id: 502, nothing handed out, nothing killed", async () => {
    stub.createAnswer = { templateID: "base" };
    const nameless = await call("POST", "/v2/sandboxes", keys.globex, "{}");
    expect([nameless.status, nameless.json()]).toEqual([502, { code: 502, message: "upstream create answer names no sandbox; not handed out unowned" }]);
    // Cube hands out an id the ledger has for acme: globex gets no access to it, and acme keeps it.
    const theirs = (await Sandbox.create("base", as(keys.acme))).sandboxId;
    stub.nextIds.push(theirs);
    const conflict = await call("POST", "/sandboxes", keys.globex, "{}");
    expect([conflict.status, conflict.json()]).toEqual([502, { code: 502, message: `sandbox ${theirs} is recorded for another owner` }]);
    expect(stub.requests.some((r) => r.method === "DELETE" && r.url.endsWith(theirs))).toBe(false);
    expect((await Sandbox.getInfo(theirs, as(keys.acme))).sandboxId).toBe(theirs);
    expect((await call("GET", `/sandboxes/${theirs}`, keys.globex)).status).toBe(404);
    expect(await Sandbox.kill(theirs, as(keys.acme))).toBe(true);
  });

  it("a list answer that cannot be read becomes [] and a log line, never another org's data", async () => {
    stub.listBody = "{ not json";
    try {
      const listed = await call("GET", "/v2/sandboxes", keys.globex);
      expect([listed.status, listed.text]).toEqual([200, "[]"]);
      expect(server.output()).toContain("a sandbox list answer could not be read");
    } finally {
      stub.listBody = undefined;
    }
  });

  it("an upstream that does not answer within KEYGATE_PROXY_TIMEOUT: 504 JSON", async () => {
    stub.hang = (method, path) => method === "GET" && path.endsWith("/metrics");
    try {
      const slow = await call("GET", `/sandboxes/${globexBox}/metrics`, keys.globex);
      expect([slow.status, slow.json()]).toEqual([504, { code: 504, message: "upstream did not answer within 1000 ms" }]);
    } finally {
      stub.hang = () => false;
    }
  });

  it("keys list and get show the limit", async () => {
    const got = await runCli(["keys", "get", keys.limited.id, "--json"], { cwd: data.dir, env: data.env });
    expect(JSON.parse(got.stdout)).toMatchObject({ max_sandboxes: 2 });
    const listed = await runCli(["keys", "list", "--org", "hooli"], { cwd: data.dir, env: data.env });
    expect(listed.stdout).toMatch(/SANDBOXES/);
  });
});
