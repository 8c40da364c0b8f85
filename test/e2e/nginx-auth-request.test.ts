import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import { accessSync, constants } from "node:fs";
import { cp, mkdir, readFile, writeFile } from "node:fs/promises";
import http from "node:http";
import net, { type AddressInfo } from "node:net";
import { delimiter, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createAuthorizer } from "../../src/core/authorize/authorizer.js";
import { createForwardAuthHandler, NGINX_HEADERS } from "../../src/entries/gateway/forward-auth.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { loadPolicy } from "../../src/core/policy/policy.js";
import { cubeRequest, type CubeResponse, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, POLICY_DIR, REPO, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * A real nginx (Debian's package) with auth_request in front of a stub API,
 * asking a real `keygate serve` at /auth/nginx. The nginx config is the
 * documented one, deploy/nginx-auth-request.conf, with only its addresses
 * replaced. What matters is what reaches the API: allowed requests, with
 * X-Auth-User; never a denied one, a path trick, or anything during an outage.
 */

const NGINX_MISSING = "nginx is not installed: this test runs the real nginx. Install it with `apt-get install -y nginx` (Debian; `bash .ci/run` does it).";

function findNginx(): string | undefined {
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"];
  for (const dir of dirs.filter(Boolean)) {
    try {
      accessSync(join(dir, "nginx"), constants.X_OK);
      return join(dir, "nginx");
    } catch {
      // not here
    }
  }
  return undefined;
}

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const { port } = server.address() as AddressInfo;
  await new Promise((done) => server.close(done));
  return port;
}

interface UpstreamRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

/** The API behind nginx: answers 200 "upstream" and records every request it gets. */
async function startUpstream(): Promise<{ port: number; seen: UpstreamRequest[]; close(): Promise<void> }> {
  const seen: UpstreamRequest[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers });
    req.resume();
    res.writeHead(200, { "content-type": "text/plain", "x-upstream": "yes" }).end("upstream");
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    close: () => new Promise((done) => server.close(() => done())),
  };
}

/**
 * deploy/nginx-auth-request.conf as one server block, its upstreams renamed
 * (so several copies fit in one http block) and pointed at the test's ports.
 */
function site(template: string, { name, listen, keygate, app, withoutErrorPage = false }: { name: string; listen: number; keygate: number; app: number; withoutErrorPage?: boolean }): string {
  let text = template
    .replace(/^(\s*)server keygate:8080;/m, `$1server 127.0.0.1:${keygate};`)
    .replace(/^(\s*)server app:8000;/m, `$1server 127.0.0.1:${app};`)
    .replace(/^(\s*)listen 8080;/m, `$1listen 127.0.0.1:${listen};`)
    .replace(/\bupstream (keygate|app) \{/g, `upstream $1_${name} {`)
    .replace(/http:\/\/(keygate|app)([/;])/g, `http://$1_${name}$2`);
  if (withoutErrorPage) text = text.replace(/^\s*error_page 500 = @keygate_error;\n/m, "");
  return text;
}

interface Nginx {
  child: ChildProcess;
  errorLog: string;
  stop(): Promise<void>;
}

/** nginx in the foreground, every file it writes inside `dir`. */
async function startNginx(bin: string, dir: string, sites: string[], ports: number[]): Promise<Nginx> {
  const errorLog = join(dir, "error.log");
  const temp = (name: string) => join(dir, "temp", name);
  await mkdir(join(dir, "temp"), { recursive: true });
  const conf = [
    "daemon off;",
    "master_process off;",
    "worker_processes 1;",
    `pid ${join(dir, "nginx.pid")};`,
    `error_log ${errorLog} info;`,
    "events { worker_connections 256; }",
    "http {",
    `  access_log ${join(dir, "access.log")};`,
    `  client_body_temp_path ${temp("client_body")};`,
    `  proxy_temp_path ${temp("proxy")};`,
    `  fastcgi_temp_path ${temp("fastcgi")};`,
    `  uwsgi_temp_path ${temp("uwsgi")};`,
    `  scgi_temp_path ${temp("scgi")};`,
    ...sites,
    "}",
    "",
  ].join("\n");
  const confPath = join(dir, "nginx.conf");
  await writeFile(confPath, conf);
  // -e: the error log before the config is read (else /var/log/nginx/error.log).
  const child = spawn(bin, ["-p", dir, "-c", confPath, "-e", errorLog], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((done) => child.on("close", () => done()));
  const log = async () => `${output}\n${await readFile(errorLog, "utf8").catch(() => "")}`;
  for (const port of ports) {
    const deadline = Date.now() + 10_000;
    while (!(await accepts(port))) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`nginx exited before listening:\n${await log()}\n${conf}`);
      if (Date.now() > deadline) {
        child.kill("SIGKILL");
        throw new Error(`nginx is not listening on ${port} after 10 s:\n${await log()}`);
      }
      await sleep(50);
    }
  }
  return {
    child,
    errorLog,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      done(true);
    });
    socket.once("error", () => done(false));
  });
}

// ---------------------------------------------------------------------------------

const nginxBin = findNginx();
/**
 * nginx is an optional system binary: without it this file is skipped, saying so in one line;
 * in CI (`.ci/run` installs nginx and sets CI=true) its absence fails the file instead.
 */
const SKIP = !nginxBin && process.env.CI !== "true";
if (SKIP) console.log(`[skipped] nginx-auth-request: ${NGINX_MISSING}`);
let data: TestDataDir;
let keygate: ServerProcess | undefined;
let nginx: Nginx | undefined;
let upstream: Awaited<ReturnType<typeof startUpstream>>;
let brokenKeygate: http.Server | undefined;
let decisionLog: string;
/** The documented config, in front of the real keygate. */
let mainUrl: string;
/** The same, in front of a keygate whose key store is down. */
let outageUrl: string;
/** The documented config without its error_page line: what plain auth_request does with a 429. */
let bareUrl: string;

type KeyName = "admin" | "writer" | "reader" | "getOnly" | "revoked" | "expired" | "limited" | "bareLimited";
const keys = {} as Record<KeyName, CreatedKeyJson>;
const k = (name: KeyName) => keys[name].key;
const UNKNOWN_KEY = generateKey();

beforeAll(async () => {
  if (SKIP) return;
  // In CI: fails the file (every test in it) with how to install nginx.
  if (!nginxBin) throw new Error(NGINX_MISSING);
  data = await createTestDataDir();
  const policyDir = join(data.dir, "policies");
  await cp(POLICY_DIR, policyDir, { recursive: true });
  // A role that may GET but not HEAD: HEAD is never implied by GET.
  await writeFile(join(policyDir, "extra.csv"), "# test-only role\np, getonly, *, *, /sandboxes/:id, ^GET$\n");
  decisionLog = join(data.dir, "decisions.jsonl");
  const env = { ...data.env, KEYGATE_POLICY_DIR: policyDir };
  const cli = { cwd: data.dir, env };
  keygate = await startServerProcess(["--trusted-proxy-header", "X-Forwarded-For", "--decision-log", decisionLog], cli);
  // First, so that making the others uses up most of its second.
  keys.expired = await createKey(["--org", "acme", "--role", "reader", "--expire", "1s"], cli);
  keys.admin = await createKey(["--org", "acme", "--role", "admin"], cli);
  keys.writer = await createKey(["--org", "acme", "--role", "writer"], cli);
  keys.reader = await createKey(["--org", "acme", "--role", "reader"], cli);
  keys.getOnly = await createKey(["--org", "acme", "--role", "getonly"], cli);
  keys.limited = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "2/1h"], cli);
  keys.bareLimited = await createKey(["--org", "acme", "--role", "reader", "--rate-limit", "1/1h"], cli);
  keys.revoked = await createKey(["--org", "acme", "--role", "reader"], cli);
  const revoked = await runCli(["keys", "revoke", keys.revoked.id], cli);
  expect(revoked.code, revoked.stderr).toBe(0);

  upstream = await startUpstream();
  // keygate's own answer when its key store cannot be reached: the real core, its lookup failing.
  const policy = await loadPolicy(policyDir);
  const failing = createAuthorizer({
    lookupKey: async () => {
      throw new Error("connect ECONNREFUSED 127.0.0.1:5432");
    },
    policy: () => policy,
    now: () => new Date(),
  });
  brokenKeygate = http.createServer(createForwardAuthHandler(NGINX_HEADERS, { authorize: failing, credentialPriority: ["authorization", "x-api-key"] }));
  await new Promise<void>((done) => brokenKeygate!.listen(0, "127.0.0.1", done));
  const brokenPort = (brokenKeygate.address() as AddressInfo).port;

  const template = await readFile(join(REPO, "deploy/nginx-auth-request.conf"), "utf8");
  const [main, outage, bare] = [await freePort(), await freePort(), await freePort()];
  const dir = join(data.dir, "nginx");
  nginx = await startNginx(
    nginxBin,
    dir,
    [
      site(template, { name: "main", listen: main, keygate: keygate.port, app: upstream.port }),
      site(template, { name: "outage", listen: outage, keygate: brokenPort, app: upstream.port }),
      site(template, { name: "bare", listen: bare, keygate: keygate.port, app: upstream.port, withoutErrorPage: true }),
    ],
    [main, outage, bare],
  );
  const url = (port: number) => `http://127.0.0.1:${port}`;
  [mainUrl, outageUrl, bareUrl] = [url(main), url(outage), url(bare)];
  // An expiry is wall-clock time in another process.
  await sleep(Math.max(0, Date.parse(keys.expired.expires_at!) + 100 - Date.now()));
});

afterAll(async () => {
  await nginx?.stop();
  await new Promise((done) => (brokenKeygate ? brokenKeygate.close(done) : done(undefined)));
  await upstream?.close();
  const code = await keygate?.stop();
  await data?.dispose();
  expect(code === undefined || code === 0).toBe(true);
});

interface Sent {
  response: CubeResponse;
  /** What the API behind nginx received for this request. */
  reached: UpstreamRequest[];
}

/** One client request through nginx, tagged so the API's record of it can be found. */
async function send(baseUrl: string, method: string, target: string, headers: RawHeaders = []): Promise<Sent> {
  const id = randomUUID();
  const response = await cubeRequest(baseUrl, [...headers, ["X-Test-Id", id]], { method, target });
  return { response, reached: upstream.seen.filter((request) => request.headers["x-test-id"] === id) };
}

const bearer = (name: KeyName): RawHeaders => [["Authorization", `Bearer ${k(name)}`]];
const apiKey = (name: KeyName): RawHeaders => [["X-API-Key", k(name)]];

function expectReached({ response, reached }: Sent, key: KeyName, method: string, target: string): void {
  expect(response.status, response.body).toBe(200);
  expect(response.headers["x-upstream"]).toBe("yes");
  expect(reached).toHaveLength(1);
  const [request] = reached;
  // The request as the client sent it: nginx passes the raw URI on.
  expect({ method: request!.method, url: request!.url }).toEqual({ method, url: target });
  expect(request!.headers["x-auth-user"]).toBe(keys[key].id);
  // The key stays at the edge (the documented config clears both headers).
  expect(request!.headers.authorization).toBeUndefined();
  expect(request!.headers["x-api-key"]).toBeUndefined();
}

function expectStopped({ response, reached }: Sent, status: number): void {
  expect(response.status, response.body).toBe(status);
  expect(response.headers["x-upstream"]).toBeUndefined();
  expect(reached).toEqual([]);
  for (const key of Object.values(keys)) expect(JSON.stringify(response)).not.toContain(key.key);
}

describe.skipIf(SKIP)("nginx auth_request → keygate /auth/nginx (deploy/nginx-auth-request.conf)", () => {
  it.each<[string, KeyName, "bearer" | "api-key", string, string]>([
    ["reader GET, Authorization: Bearer", "reader", "bearer", "GET", "/sandboxes/abc"],
    ["reader GET, X-API-Key", "reader", "api-key", "GET", "/sandboxes/abc"],
    ["writer DELETE", "writer", "bearer", "DELETE", "/sandboxes/abc"],
    ["writer POST", "writer", "api-key", "POST", "/sandboxes"],
    ["reader HEAD, which the policy grants", "reader", "bearer", "HEAD", "/sandboxes/abc"],
    ["GET for a GET-only role", "getOnly", "bearer", "GET", "/sandboxes/abc"],
    ["a query string is not matched (allowed)", "reader", "bearer", "GET", "/sandboxes/abc?next=/../../keys&x=%2f"],
    ["// collapses: the normalized path is allowed", "reader", "bearer", "GET", "//sandboxes//abc"],
    ["a trailing slash", "reader", "bearer", "GET", "/sandboxes/abc/"],
    ["a plain character percent-encoded", "reader", "bearer", "GET", "/sandboxes/%61bc"],
    ["admin DELETE (writer's, inherited)", "admin", "bearer", "DELETE", "/sandboxes/abc"],
  ])("allowed: %s → the API gets it, with X-Auth-User and without the key", async (_, key, scheme, method, target) => {
    expectReached(await send(mainUrl, method, target, scheme === "bearer" ? bearer(key) : apiKey(key)), key, method, target);
  });

  it.each<[string, 401 | 403, string, string, () => RawHeaders]>([
    ["no credential → 401", 401, "GET", "/sandboxes/abc", () => []],
    ["Authorization: Basic is not a key → 401", 401, "GET", "/sandboxes/abc", () => [["Authorization", "Basic dXNlcjpwYXNz"]]],
    ["a key nobody issued → 401", 401, "GET", "/sandboxes/abc", () => [["Authorization", `Bearer ${UNKNOWN_KEY}`]]],
    ["a revoked key → 401", 401, "GET", "/sandboxes/abc", () => apiKey("revoked")],
    ["an expired key → 401", 401, "GET", "/sandboxes/abc", () => apiKey("expired")],
    ["forbidden by policy → 403", 403, "DELETE", "/sandboxes/abc", () => bearer("reader")],
    ["no rule for the path → 403", 403, "GET", "/keys", () => bearer("writer")],
    ["no rule for the path, even for admin (no catch-all) → 403", 403, "PUT", "/anything/at/all", () => bearer("admin")],
    ["a shared template, even for admin → 403", 403, "DELETE", "/templates/t1", () => bearer("admin")],
    ["HEAD is not GET (a GET-only role) → 403", 403, "HEAD", "/sandboxes/abc", () => bearer("getOnly")],
    ["a query string does not change the decision → 403", 403, "DELETE", "/sandboxes/abc?method=GET", () => bearer("reader")],
    ["a method keygate does not know → 403", 403, "BREW", "/sandboxes/abc", () => bearer("admin")],
  ])("denied: %s, and the API never sees it", async (_, status, method, target, headers) => {
    const sent = await send(mainUrl, method, target, headers());
    expectStopped(sent, status);
    // nginx copies keygate's WWW-Authenticate onto its own 401.
    if (status === 401) expect(sent.response.headers["www-authenticate"]).toBe('Bearer realm="keygate"');
  });

  // With the most powerful key: a path that could be read two ways never reaches the API.
  // 403 is keygate refusing it; 400 is nginx refusing it before asking anyone.
  it.each<[string, string, 400 | 403]>([
    ["../ out of an allowed prefix", "/sandboxes/../keys", 403],
    ["../ above the root", "/../keys", 400],
    ["./ segment", "/sandboxes/./abc", 403],
    ["%2e%2e", "/sandboxes/%2e%2e/keys", 403],
    ["%2E%2E", "/sandboxes/%2E%2E/keys", 403],
    [".%2e", "/sandboxes/.%2e/keys", 403],
    ["%2f encoded slash", "/sandboxes/abc%2f..%2fkeys", 403],
    ["%2F encoded slash", "/templates/t1%2Fbuilds", 403],
    ["%5c encoded backslash", "/sandboxes/abc%5c..%5ckeys", 403],
    ["raw backslash", "/sandboxes\\..\\keys", 403],
    ["; path parameter", "/sandboxes/abc;jsessionid=1", 403],
    ["%3b encoded ;", "/sandboxes/abc%3bx=1", 403],
    ["double encoding %252e%252e", "/sandboxes/%252e%252e/keys", 403],
    ["%00 NUL", "/sandboxes/abc%00.json", 400],
    ["overlong UTF-8 %c0%ae%c0%ae", "/sandboxes/%c0%ae%c0%ae/keys", 403],
    ["invalid escape %zz", "/sandboxes/%zz", 400],
  ])("path trick: %s (%s) → %s, the API never sees it", async (_, target, status) => {
    expectStopped(await send(mainUrl, "GET", target, bearer("admin")), status);
  });

  it("a path trick whose normalized path would be allowed is still refused (reader, /sandboxes/x/../abc)", async () => {
    expectStopped(await send(mainUrl, "GET", "/sandboxes/x/../abc", bearer("reader")), 403);
  });

  it("headers a client forges are replaced by nginx: X-Original-URI, X-Original-Method, X-Auth-User, X-Forwarded-For", async () => {
    // A reader asking DELETE, claiming GET on another path: keygate sees what nginx sets.
    const forged: RawHeaders = [
      ["X-Original-URI", "/sandboxes"],
      ["X-Original-Method", "GET"],
      ["X-Forwarded-For", "203.0.113.7"],
    ];
    expectStopped(await send(mainUrl, "DELETE", "/sandboxes/abc", [...bearer("reader"), ...forged]), 403);
    // The API learns who called from keygate, whatever the client says.
    expectReached(await send(mainUrl, "GET", "/sandboxes/abc", [...bearer("reader"), ["X-Auth-User", keys.admin.id]]), "reader", "GET", "/sandboxes/abc");
  });

  it("namespace and org hints come from the config, not the client (the documented config clears them)", async () => {
    // Were X-Request-Org passed on, another org would deny even an admin key.
    expectReached(await send(mainUrl, "GET", "/sandboxes/abc", [...bearer("admin"), ["X-Request-Org", "globex"], ["X-Request-Namespace", "*"]]), "admin", "GET", "/sandboxes/abc");
  });

  it("over the key's rate limit: 429 with Retry-After to the client, and the API saw only the allowed ones", async () => {
    const target = "/sandboxes/limited";
    expectReached(await send(mainUrl, "GET", target, bearer("limited")), "limited", "GET", target);
    expectReached(await send(mainUrl, "GET", target, bearer("limited")), "limited", "GET", target);
    const third = await send(mainUrl, "GET", target, bearer("limited"));
    expectStopped(third, 429);
    expect(Number(third.response.headers["retry-after"])).toBeGreaterThan(3500);
    expect(Number(third.response.headers["retry-after"])).toBeLessThanOrEqual(3600);
  });

  it("without the config's error_page line, nginx turns keygate's 429 into a 500 of its own (still closed)", async () => {
    expectReached(await send(bareUrl, "GET", "/sandboxes/abc", bearer("bareLimited")), "bareLimited", "GET", "/sandboxes/abc");
    expectStopped(await send(bareUrl, "GET", "/sandboxes/abc", bearer("bareLimited")), 500);
    // 401 and 403 need no help.
    expectStopped(await send(bareUrl, "GET", "/sandboxes/abc"), 401);
    expectStopped(await send(bareUrl, "DELETE", "/sandboxes/abc", bearer("reader")), 403);
  });

  it("keygate unable to decide (its key store down) answers 403: nginx passes it on, the API never sees the request", async () => {
    for (const name of ["admin", "reader"] as const) {
      expectStopped(await send(outageUrl, "GET", "/sandboxes/abc", bearer(name)), 403);
      expectStopped(await send(outageUrl, "GET", "/sandboxes/abc", apiKey(name)), 403);
    }
    // A missing credential is still a 401: no key store is needed to know that.
    expectStopped(await send(outageUrl, "GET", "/sandboxes/abc"), 401);
  });

  describe("when keygate is stopped", () => {
    beforeAll(async () => {
      expect(await keygate!.stop()).toBe(0);
    });

    it.each<[string, KeyName, string, string]>([
      ["admin", "admin", "DELETE", "/sandboxes/abc"],
      ["reader", "reader", "GET", "/sandboxes/abc"],
    ])("%s → 503 from nginx (the config's fallback), never the API", async (_, key, method, target) => {
      expectStopped(await send(mainUrl, method, target, bearer(key)), 503);
      // Without the error_page line, nginx's own 500: closed either way.
      expectStopped(await send(bareUrl, method, target, bearer(key)), 500);
    });

    it("nginx logged why", async () => {
      expect(await readFile(nginx!.errorLog, "utf8")).toMatch(/connect\(\) failed \(111: Connection refused\) while connecting to upstream/);
    });

    it("the decision log has every decision keygate made, as entry forward_auth, and never a key", async () => {
      const lines = (await readFile(decisionLog, "utf8")).trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>);
      expect(lines.length).toBeGreaterThan(20);
      expect(new Set(lines.map((line) => line.entry))).toEqual(new Set(["forward_auth"]));
      expect(lines.map((line) => line.source)).toContain("127.0.0.1");
      const text = JSON.stringify(lines);
      for (const key of Object.values(keys)) expect(text).not.toContain(key.key);
    });
  });
});
