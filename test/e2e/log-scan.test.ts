import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService, type ManageKeyRequestSchema } from "../../gen/keygate/v1/key_pb.js";
import { apiKey, bearer, cubeRequest, type CubeResponse, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { runCli, startServerProcess, startShimProcess, type CliResult, type KeygateProcess } from "../support/keygate-process.js";

/**
 * Logs never hold a credential (issue 6): a server and a `keygate shim` at
 * KEYGATE_LOG_LEVEL=debug with a decision log; keys made every way (keygen
 * and rotate over the control socket or in-process, and with --server;
 * ManageKey over the network), then used, misused and pasted into every
 * field a client controls, over the Cube callback, Connect, gRPC and
 * gRPC-Web, with errors along the way. Then every byte every process wrote
 * and the whole decision log are searched for each key and each key's
 * 36-character random part: none may appear. Request ids ride along: kept
 * when well formed, made when missing, replaced when malicious.
 */

const PREFIX = "sk-sb-";
const RANDOM_LENGTH = 36;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const DEBUG = { KEYGATE_LOG_LEVEL: "debug" };

let data: TestDataDir;
let server: KeygateProcess;
let shim: KeygateProcess;
let h2: Http2SessionManager;
let decisionLogPath: string;

/** Every CLI run, and the key its stdout shows (keygen, rotate), if any. */
const runs: { args: string[]; result: CliResult; shows?: string }[] = [];
/** Every key made. */
const made: string[] = [];
/** Responses whose x-request-id was checked against the log: [what, id]. */
const traced: [string, string][] = [];

const randomPart = (key: string) => key.slice(PREFIX.length, PREFIX.length + RANDOM_LENGTH);
const secrets = () => made.flatMap((key) => [key, randomPart(key)]);

async function cli(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const result = await runCli(args, { cwd: data.dir, env: { ...data.env, ...DEBUG, ...env } });
  runs.push({ args, result });
  return result;
}

/** keygen or keys rotate: the new key, from --json or from the first line of stdout. */
async function mint(args: string[], env: Record<string, string> = {}): Promise<string> {
  const result = await cli(args, env);
  expect(result.code, result.stderr).toBe(0);
  const key = args.includes("--json") ? (JSON.parse(result.stdout) as { key: string }).key : result.stdout.split("\n")[0]!.trim();
  expect(key.startsWith(PREFIX)).toBe(true);
  runs[runs.length - 1]!.shows = key;
  made.push(key);
  return key;
}

async function keyId(name: string): Promise<string> {
  const list = JSON.parse((await cli(["keys", "list", "--json"])).stdout) as { keys: { id: string; name: string }[] };
  return list.keys.find((k) => k.name === name)!.id;
}

const bearerAuth = (key: string): Interceptor => (next) => (req) => {
  req.header.set("authorization", `Bearer ${key}`);
  return next(req);
};

/** The server's JSON log lines so far. */
function serverLines(): Record<string, unknown>[] {
  return server
    .output()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** The debug line of one request (written when the response ends, so it may trail the answer a little). */
async function requestLine(id: string): Promise<Record<string, unknown>> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const line = serverLines().find((l) => l.msg === "request" && l.request_id === id);
    if (line) return line;
    if (Date.now() > deadline) throw new Error(`no debug line for request ${id}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function shimCall(headers: RawHeaders, target = "/verify", url = server.url): Promise<CubeResponse> {
  return cubeRequest(url, headers, { target });
}

beforeAll(async () => {
  data = await createTestDataDir();
  decisionLogPath = join(data.dir, "decisions.jsonl");
  server = await startServerProcess([], { cwd: data.dir, env: { ...data.env, ...DEBUG, KEYGATE_DECISION_LOG: decisionLogPath } });
  shim = await startShimProcess(server.url, [], { cwd: data.dir, env: DEBUG });
  h2 = new Http2SessionManager(server.url);
});

afterAll(async () => {
  h2?.abort();
  await Promise.allSettled([shim?.stop(), server?.stop()]);
  await data?.dispose();
});

describe(`logs at debug level hold no key (${testDatabaseKind})`, () => {
  it("makes keys every way: keygen and rotate locally and with --server, ManageKey over the network", async () => {
    const admin = await mint(["keygen", "--json", "--org", "acme", "--role", "admin", "--name", "admin"]);
    await mint(["keygen", "--org", "acme", "--role", "reader", "--name", "reader"]);
    await mint(["keys", "rotate", await keyId("reader")]);
    await mint(["keygen", "--server", server.url, "--org", "acme", "--role", "reader", "--name", "remote"], { KEYGATE_API_KEY: admin });
    await mint(["keys", "rotate", await keyId("remote"), "--server", server.url, "--json"], { KEYGATE_API_KEY: admin });

    const keys = createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearerAuth(admin)] }));
    const created = await keys.manageKey({ action: { case: "create", value: { name: "net", roles: ["reader"] } } });
    if (created.result.case !== "created") throw new Error("expected a created key");
    made.push(created.result.value.plaintext);

    // A revoked key, to be used below.
    expect((await cli(["keys", "revoke", await keyId("reader")])).code).toBe(0);
    expect(made).toHaveLength(6);
    expect(new Set(made).size).toBe(6);
  });

  it("uses and misuses every key through the Cube callback, on the server and through `keygate shim`", async () => {
    const [admin, reader] = made as [string, string];
    for (const url of [server.url, shim.url]) {
      for (const key of made) {
        await shimCall(bearer(key, "/sandboxes", "GET"), "/verify", url);
        await shimCall(apiKey(key, "/sandboxes/abc", "DELETE"), "/verify", url);
      }
      const misuses: [string, RawHeaders, string?][] = [
        ["revoked", bearer(reader, "/sandboxes", "GET")],
        ["junk after the key", [["Authorization", `Bearer ${admin}x`], ["X-Request-Path", "/sandboxes"], ["X-Request-Method", "GET"]]],
        ["a space and junk", [["Authorization", `Bearer ${admin} junk`], ["X-Request-Path", "/sandboxes"]]],
        ["Basic instead of Bearer", [["Authorization", `Basic ${admin}`], ["X-Request-Path", "/sandboxes"]]],
        ["no scheme", [["Authorization", admin], ["X-Request-Path", "/sandboxes"]]],
        ["the key twice", [["Authorization", `Bearer ${admin}`], ["Authorization", `Bearer ${reader}`], ["X-Request-Path", "/x"], ["X-Request-Method", "GET"]]],
        ["both headers", [["Authorization", `Bearer ${admin}`], ["X-API-Key", reader], ["X-Request-Path", "/x"], ["X-Request-Method", "GET"]]],
        ["X-API-Key twice", [["X-API-Key", admin], ["X-API-Key", reader], ["X-Request-Path", "/x"]]],
        ["the key as the path", bearer(admin, `/sandboxes/${admin}`, "GET")],
        ["the key in a malformed path", bearer(admin, `/sandboxes/../${admin}`, "GET")],
        ["the key as the method", [["X-API-Key", admin], ["X-Request-Path", "/sandboxes"], ["X-Request-Method", admin]]],
        ["the key as namespace and org", [...bearer(admin, "/sandboxes", "GET"), ["X-Request-Namespace", admin], ["X-Request-Org", reader]]],
        ["the key as the request id", [...bearer(admin, "/sandboxes", "GET"), ["X-Request-Id", admin]]],
        ["the key in the query string", bearer(admin, "/sandboxes", "GET"), `/verify?api_key=${admin}`],
        ["the key as an unknown path", bearer(admin, "/sandboxes", "GET"), `/${admin}`],
        ["keys in the query", apiKey(admin, "/sandboxes", "GET"), `/verify?key=${admin}&token=${reader}`],
      ];
      // Answered (the caller may see its own input quoted back); what matters is the logs.
      for (const [what, headers, target] of misuses) expect((await shimCall(headers, target, url)).status, what).toBeGreaterThanOrEqual(200);
      // Past Node's header limit (16 KiB): refused before keygate sees it (431), and the process lives on.
      const huge = await shimCall([["Authorization", `Bearer ${admin}`], ["X-Request-Path", "/sandboxes"], ["X-Junk", `${admin} `.repeat(500)]], "/verify", url);
      expect(huge.status).toBe(431);
      // A method the callback refuses.
      expect((await cubeRequest(url, bearer(admin, "/sandboxes", "GET"), { method: "PUT" })).status).toBe(405);
    }
  });

  it("sends every key over Connect, gRPC and gRPC-Web, in the right field and the wrong ones", async () => {
    const [admin, reader] = made as [string, string];
    const transports: [string, () => Transport][] = [
      ["Connect HTTP/1.1", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
      ["Connect h2c", () => createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 })],
      ["gRPC", () => createGrpcTransport({ baseUrl: server.url, sessionManager: h2 })],
      ["gRPC-Web", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    ];
    for (const [, transport] of transports) {
      const authorize = createClient(AuthorizeService, transport());
      for (const key of made) await authorize.authorize({ credential: key, path: "/templates/t1", method: "PATCH" });
      const wrong = [
        { credential: admin, path: `/sandboxes/${reader}`, method: "GET" },
        { credential: admin, path: `/sandboxes/../${reader}`, method: "GET" },
        { credential: admin, path: `/sandboxes/%2F${reader}`, method: "GET" },
        { credential: "", path: `/sk%2Dsb%2D${randomPart(reader)}${reader.slice(-6)}`, method: "GET" },
        { credential: admin, path: "/sandboxes", method: reader },
        { credential: admin, path: "/sandboxes", method: "GET", namespace: reader, org: reader },
        { credential: `${admin}\n`, path: "/sandboxes", method: "GET" },
        { credential: `Bearer ${admin}`, path: "/sandboxes", method: "GET" },
      ];
      for (const request of wrong) await authorize.authorize(request);
    }

    // ManageKey with keys where names and ids go, and with a key that is not an admin's.
    const keys = createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearerAuth(admin)] }));
    const attempts: MessageInitShape<typeof ManageKeyRequestSchema>[] = [
      { action: { case: "get", value: { id: reader } } },
      { action: { case: "revoke", value: { id: admin } } },
      { action: { case: "rotate", value: { id: reader, grace: "1h" } } },
      { action: { case: "update", value: { id: admin, name: reader } } },
      { action: { case: "list", value: { org: reader, namespace: admin, pageSize: 10, pageToken: reader } } },
    ];
    for (const attempt of attempts) await keys.manageKey(attempt).catch(() => undefined);
    const named = await keys.manageKey({ action: { case: "create", value: { name: reader, roles: ["reader"], namespace: "team-a" } } });
    if (named.result.case === "created") made.push(named.result.value.plaintext);
    const asReader = createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearerAuth(made[3]!)] }));
    await expect(asReader.manageKey({ action: { case: "create", value: { name: admin, roles: ["admin"] } } })).rejects.toThrow();
    // One character off (never the key itself: a key may end in "Z" already).
    const mistyped = `${admin.slice(0, -1)}${admin.endsWith("Z") ? "Y" : "Z"}`;
    const typo = createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearerAuth(mistyped)] }));
    await expect(typo.manageKey({ action: { case: "list", value: {} } })).rejects.toThrow("invalid API key");

    // Bad requests, the key in their bodies: malformed JSON, a wrong field type, an unknown method.
    const post = (path: string, body: string, contentType = "application/json") =>
      fetch(`${server.url}${path}`, { method: "POST", headers: { "content-type": contentType }, body });
    const refused: [string, string, string?][] = [
      ["/keygate.v1.AuthorizeService/Authorize", `{"credential": "${admin}", "path": `],
      ["/keygate.v1.AuthorizeService/Authorize", JSON.stringify({ credential: admin, path: { nested: reader } })],
      [`/keygate.v1.AuthorizeService/${admin}`, JSON.stringify({ credential: admin })],
      ["/keygate.v1.KeyService/ManageKey", JSON.stringify({ create: { name: admin } }), "text/plain"],
      ["/keygate.v1.AuthorizeService/Authorize", "x".repeat(70 * 1024) + admin],
    ];
    for (const [path, body, type] of refused) expect((await post(path, body, type)).status, path).toBeGreaterThanOrEqual(400);
    await post("/keygate.v1.AuthorizeService/Authorize", JSON.stringify({ credential: admin, bogus: reader }));
  });

  it("keeps a well-formed x-request-id, echoes it and logs it on the request's debug line", async () => {
    const [admin] = made as [string];
    const given = "log-scan.given-1";
    const response = await shimCall([...bearer(admin, "/sandboxes", "GET"), ["X-Request-Id", given]]);
    expect(response.status).toBe(200);
    expect(response.headers["x-request-id"]).toBe(given);
    const line = await requestLine(given);
    expect(line).toMatchObject({ level: "debug", method: "POST", route: "/verify", status: 200, entry: "shim", reason: "allowed" });
    expect(line.key_id).toMatch(/^key_/);
    expect(typeof line.duration_ms).toBe("number");

    // Over Connect (HTTP/1.1 and h2c) and gRPC (h2c), answered directly; gRPC-Web, through the connect-node adapter.
    const rpc: [string, Transport][] = [
      ["connect", createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
      ["connect-h2", createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 })],
      ["grpc", createGrpcTransport({ baseUrl: server.url, sessionManager: h2 })],
      ["grpc-web", createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    ];
    for (const [name, transport] of rpc) {
      let echoed: string | null = null;
      const id = `given-${name}-7`;
      await createClient(AuthorizeService, transport).authorize(
        { credential: admin, path: "/sandboxes", method: "GET" },
        { headers: { "x-request-id": id }, onHeader: (headers) => (echoed = headers.get("x-request-id")) },
      );
      expect(echoed, name).toBe(id);
      expect(await requestLine(id), name).toMatchObject({ route: "/keygate.v1.AuthorizeService/Authorize", entry: "rpc", reason: "allowed", status: 200 });
      traced.push([name, id]);
    }
    // ManageKey's info line carries it too.
    await createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors: [bearerAuth(admin)] })).manageKey(
      { action: { case: "list", value: {} } },
      { headers: { "x-request-id": "manage-1" } },
    );
    await requestLine("manage-1");
    expect(serverLines().find((l) => l.msg === "key action" && l.request_id === "manage-1")).toMatchObject({ level: "info", action: "list" });
  });

  it("makes an id when none is sent, on every endpoint, and on the standalone shim", async () => {
    const [admin] = made as [string];
    const allowed = await shimCall(bearer(admin, "/sandboxes", "GET"));
    expect(allowed.headers["x-request-id"]).toMatch(UUID);
    await requestLine(allowed.headers["x-request-id"]!);
    const notFound = await shimCall(bearer(admin, "/sandboxes", "GET"), "/nowhere?secret=1");
    expect(notFound.status).toBe(404);
    expect(notFound.headers["x-request-id"]).toMatch(UUID);
    expect(await requestLine(notFound.headers["x-request-id"]!)).toMatchObject({ route: "/nowhere", status: 404 });
    const viaShim = await shimCall([...bearer(admin, "/sandboxes", "GET"), ["X-Request-Id", "through-the-shim"]], "/verify", shim.url);
    expect(viaShim.headers["x-request-id"]).toBe("through-the-shim");
    expect((await shimCall(bearer(admin, "/sandboxes", "GET"), "/verify", shim.url)).headers["x-request-id"]).toMatch(UUID);
  });

  it.each<[string, string | [string, string][]]>([
    ["10 KB", "a".repeat(10 * 1024)],
    ["a tab", "abc\tdef"],
    ["JSON injection", 'x","level":"error","msg":"forged'],
    ["a space", "two words"],
    ["non-ASCII", "r\u00e9quest"],
    ["sent twice", [["X-Request-Id", "first-1"], ["X-Request-Id", "second-2"]]],
    ["empty", ""],
  ])("replaces a malformed x-request-id (%s) with a fresh one", async (_, value) => {
    const [admin] = made as [string];
    const extra: [string, string][] = typeof value === "string" ? [["X-Request-Id", value]] : value;
    const response = await shimCall([...bearer(admin, "/sandboxes", "GET"), ...extra]);
    expect(response.status).toBe(200);
    expect(response.headers["x-request-id"]).toMatch(UUID);
    await requestLine(response.headers["x-request-id"]!);
  });

  it("refuses newlines and control characters in any header before keygate sees the request", async () => {
    const [admin] = made as [string];
    for (const bad of ["abc\ninjected-line: 1", "abc\rinjected", "abc\u0001injected"]) {
      const response = await shimCall([...bearer(admin, "/sandboxes", "GET"), ["X-Request-Id", bad]]);
      expect(response.status).toBe(400);
    }
    expect(server.output()).not.toContain("injected");
    expect(server.output()).not.toContain("forged");
    expect(server.output()).not.toContain("a".repeat(200));
  });

  it("no output of any process, and no line of the decision log, holds a key or a key's random part", async () => {
    expect(await shim.stop()).toBe(0);
    expect(await server.stop()).toBe(0);
    const decisions = await readFile(decisionLogPath, "utf8");
    const outputs: [string, string][] = [
      ["server", server.output()],
      ["keygate shim", shim.output()],
      ["decision log", decisions],
      ...runs.flatMap(({ args, result, shows }): [string, string][] => [
        [`stderr of keygate ${args.join(" ")}`, result.stderr],
        // keygen and rotate print their own key, once, and nothing else secret.
        [`stdout of keygate ${args.join(" ")}`, shows ? result.stdout.replace(shows, "<its own key>") : result.stdout],
      ]),
    ];
    expect(made.length).toBeGreaterThanOrEqual(7);
    for (const [where, text] of outputs) {
      for (const secret of secrets()) {
        expect(text.includes(secret), `${where} shows ${secret.startsWith(PREFIX) ? "a key" : "a key's random part"}`).toBe(false);
      }
    }
    for (const { args, result, shows } of runs) if (shows) expect(result.stdout.split(shows).length - 1, `keygate ${args.join(" ")}`).toBe(1);

    // The search looked where keys were: debug lines for every request, masked keys where they were pasted.
    const lines = server.output().split("\n").filter((l) => l.startsWith("{"));
    expect(lines.every((l) => JSON.parse(l) !== null)).toBe(true);
    const requests = lines.filter((l) => l.includes('"msg":"request"'));
    expect(requests.length).toBeGreaterThan(50);
    expect(server.output()).toContain(`"route":"/${made[0]!.slice(0, PREFIX.length + 4)}…"`);
    expect(server.output()).toContain(`"request_id":"${made[0]!.slice(0, PREFIX.length + 4)}…"`);
    expect(decisions).toContain(`/sandboxes/${made[1]!.slice(0, PREFIX.length + 4)}…`);
    expect(decisions.split("\n").filter(Boolean).length).toBeGreaterThan(50);
    expect(shim.output()).toContain('"msg":"request"');
    expect(server.output()).toContain('"msg":"stopped"');
    for (const [name, id] of traced) expect(server.output(), name).toContain(`"request_id":"${id}"`);
  });
});
