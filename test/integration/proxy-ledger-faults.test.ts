import http from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { Decision } from "../../src/core/authorize/decision.js";
import { NO_ROUTES } from "../../src/core/policy/policy-routes.js";
import type { ResourceLedger } from "../../src/core/resources/resource-ledger.js";
import { createSandboxProxy, type SandboxProxy } from "../../src/entries/proxy/sandbox-proxy.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { startE2bStub, type E2bStub } from "../support/e2b-stub.js";

/**
 * The proxy when the ownership ledger fails (the database out of reach, a
 * bug): it fails closed. A list it cannot filter is 503, never Cube's
 * unfiltered answer; a create it cannot count against the limit is 503 and
 * not forwarded; a sandbox Cube made whose claim failed is killed upstream and
 * the client gets 502, never an unowned sandbox. The proxy runs in process
 * here, with a ledger that fails on demand, in front of the E2B stub.
 */

const KEY = { id: "key_acme", name: "acme writer", org: "acme", namespace: "*", roles: ["writer"] };
const ALLOW: Decision = { allowed: true, reason: "allowed", message: "", matchedRule: "policy.csv:1", key: KEY };
const down = () => Promise.reject(new Error("connection refused (the ledger's database)"));

let stub: E2bStub;
let proxy: SandboxProxy;
let server: http.Server;
let url: string;
const lines: string[] = [];
const failing = new Set<keyof ResourceLedger>();

const ledger: ResourceLedger = {
  claim: (ref, owner) => (failing.has("claim") ? down() : Promise.resolve({ ok: true, created: true, resource: { ...ref, ...owner, createdAt: new Date(0), releasedAt: null } })),
  release: () => (failing.has("release") ? down() : Promise.resolve(true)),
  owner: () => Promise.resolve(null),
  cachedOwner: () => undefined,
  get: () => Promise.resolve(null),
  list: () => Promise.resolve({ resources: [], nextPageToken: "" }),
  liveIds: () => (failing.has("liveIds") ? down() : Promise.resolve(new Set<string>())),
  countLive: () => (failing.has("countLive") ? down() : Promise.resolve(0)),
  cache: undefined as unknown as ResourceLedger["cache"],
};

beforeAll(async () => {
  stub = await startE2bStub();
  proxy = createSandboxProxy({
    upstream: stub.url,
    timeoutMs: 5_000,
    authorize: () => Promise.resolve(ALLOW),
    credentialPriority: ["authorization", "x-api-key"],
    ledger,
    routes: () => NO_ROUTES,
    ownership: true,
    keyMaxSandboxes: () => Promise.resolve(10),
    orgMaxSandboxes: null,
    log: createLogger("info", (line) => lines.push(line)),
  });
  server = http.createServer((req, res) => proxy.handle(req, res));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => server?.close(() => resolve()));
  await proxy?.close();
  await stub?.close();
});

beforeEach(() => failing.clear());

async function send(method: string, path: string, body?: string) {
  const res = await fetch(`${url}${path}`, { method, headers: { "x-api-key": "sk-sb-any" }, ...(body !== undefined && { body }) });
  return { status: res.status, body: (await res.json()) as unknown };
}

describe("the proxy when the ledger fails", () => {
  it("a claim that fails: 502 to the client, the new sandbox killed upstream, both logged", async () => {
    failing.add("claim");
    stub.nextIds.push("sbx-unclaimed");
    expect(await send("POST", "/v2/sandboxes", "{}")).toEqual({ status: 502, body: { code: 502, message: "could not record the new sandbox's owner" } });
    expect(stub.requests.at(-1)).toMatchObject({ method: "DELETE", url: "/sandboxes/sbx-unclaimed" });
    expect(stub.sandboxes.has("sbx-unclaimed")).toBe(false);
    expect(lines.join("\n")).toContain("claiming a created sandbox failed; killing it upstream");
    expect(lines.join("\n")).toContain("unowned sandbox killed upstream");
  });

  it("a list it cannot filter: 503, never Cube's unfiltered answer", async () => {
    await send("POST", "/sandboxes", "{}");
    failing.add("liveIds");
    expect(await send("GET", "/sandboxes")).toEqual({ status: 503, body: { code: 503, message: "ownership ledger unavailable, request denied" } });
  });

  it("a create it cannot count against the limit: 503, not forwarded", async () => {
    failing.add("countLive");
    const creates = () => stub.requests.filter((r) => r.method === "POST").length;
    const before = creates();
    expect(await send("POST", "/sandboxes", "{}")).toEqual({ status: 503, body: { code: 503, message: "ownership ledger unavailable, request denied" } });
    expect(creates()).toBe(before);
  });

  it("a release that fails: Cube's answer still reaches the client, and the failure is logged", async () => {
    stub.nextIds.push("sbx-to-kill");
    expect((await send("POST", "/sandboxes", "{}")).status).toBe(201);
    failing.add("release");
    const res = await fetch(`${url}/sandboxes/sbx-to-kill`, { method: "DELETE", headers: { "x-api-key": "sk-sb-any" } });
    expect(res.status).toBe(204);
    expect(lines.join("\n")).toContain("releasing a deleted sandbox failed; it still counts as live");
  });
});
