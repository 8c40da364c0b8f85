import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { apiKey, bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { cliBudgetMs, runCli, startServerProcess, startShimProcess, type CliResult, type ServerProcess, type ShimProcess } from "../support/keygate-process.js";

/**
 * "Never log a key": a whole end-to-end flow at KEYGATE_LOG_LEVEL=debug, and
 * then every byte the server, the shims and the CLI wrote is searched for
 * every key made along the way. Only the stdout of keygen and rotate shows a
 * key, its own, once. The database holds hashes only.
 */

const DEBUG = { KEYGATE_LOG_LEVEL: "debug" };

let data: TestDataDir;
let server: ServerProcess | undefined;
let shim: ShimProcess | undefined;
let deadShim: ShimProcess | undefined;

/** Every CLI run: its output, and the one key its stdout may show. */
const runs: { args: string[]; result: CliResult; shows?: string }[] = [];
/** Every key created. */
const made: string[] = [];
/** Near-misses of real keys (a typo, a truncation, junk after it), which must not be logged either. */
const nearMisses: string[] = [];
const secrets = () => [...made, ...nearMisses];

async function cli(args: string[]): Promise<CliResult> {
  const result = await runCli(args, { cwd: data.dir, env: { ...data.env, ...DEBUG } });
  runs.push({ args, result });
  return result;
}

/** keygen or rotate: stdout shows the new key (text mode: the key alone on the first line). */
async function minting(args: string[]): Promise<string> {
  const result = await cli(args);
  expect(result.code, result.stderr).toBe(0);
  const key = args.includes("--json") ? (JSON.parse(result.stdout) as { key: string }).key : result.stdout.trim();
  expect(key).toMatch(/^sk-sb-/);
  runs[runs.length - 1]!.shows = key;
  made.push(key);
  return key;
}

const occurrences = (text: string, needle: string) => text.split(needle).length - 1;

beforeAll(async () => {
  data = await createTestDataDir();
  server = await startServerProcess([], { cwd: data.dir, env: { ...data.env, ...DEBUG } });
  shim = await startShimProcess(server.url, [], { cwd: data.dir, env: DEBUG });
  // Nothing listens on port 9: every decision fails and is logged as an error.
  deadShim = await startShimProcess("http://127.0.0.1:9", [], { cwd: data.dir, env: DEBUG });
});

afterAll(async () => {
  await Promise.all([shim?.stop(), deadShim?.stop(), server?.stop()]);
  await data?.dispose();
});

describe("a debug-level end-to-end flow", () => {
  it("runs: keys made, used, checked, revoked, rotated, managed over the network, refused", { timeout: cliBudgetMs(12) }, async () => {
    const admin = await minting(["keygen", "--json", "--org", "acme", "--role", "admin", "--name", "admin"]);
    const reader = await minting(["keygen", "--org", "acme", "--role", "reader", "--expire", "1d"]);
    const list = JSON.parse((await cli(["keys", "list", "--json"])).stdout) as { keys: { id: string; name: string }[] };
    const adminId = list.keys.find((k) => k.name === "admin")!.id;
    const readerId = list.keys.find((k) => k.name === "")!.id;
    await cli(["keys", "get", readerId]);

    // Near-misses of real keys: a typo, a truncation, a key with junk after it.
    const typo = admin.slice(0, -1) + (admin.endsWith("A") ? "B" : "A");
    nearMisses.push(typo, admin.slice(0, -4), `${reader}x`);

    // The Cube callback, on the server and through the shims.
    for (const url of [server!.url, shim!.url, deadShim!.url]) {
      await cubeRequest(url, bearer(admin, "/sandboxes/abc", "DELETE"));
      await cubeRequest(url, apiKey(reader, "/sandboxes/abc", "DELETE"));
      await cubeRequest(url, bearer(typo, "/sandboxes/abc", "GET"));
      await cubeRequest(url, apiKey(admin.slice(0, -4), "/sandboxes/../templates", "GET"));
      await cubeRequest(url, [["Authorization", `Bearer ${reader}x`], ["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "GET"]]);
      await cubeRequest(url, [["Authorization", `Bearer ${admin}`], ["Authorization", `Bearer ${reader}`], ["X-Request-Path", "/x"], ["X-Request-Method", "GET"]]);
    }

    // check, allowed and denied.
    expect((await cli(["check", "--key", admin, "--path", "/sandboxes/abc", "--method", "DELETE"])).code).toBe(0);
    expect((await cli(["check", "--key", reader, "--path", "/sandboxes/abc", "--method", "DELETE"])).code).toBe(1);
    expect((await cli(["check", "--key", typo, "--path", "/sandboxes/abc"])).code).toBe(1);

    // Revoke and rotate from the CLI.
    expect((await cli(["keys", "revoke", readerId])).code).toBe(0);
    await cubeRequest(server!.url, bearer(reader, "/sandboxes/abc", "GET"));
    const rotated = await minting(["keys", "rotate", adminId]);
    const rotatedJson = await minting(["keys", "rotate", adminId, "--grace", "1h", "--json"]);

    // ManageKey and Authorize over the network.
    const auth = (key: string): Interceptor => (next) => (req) => {
      req.header.set("authorization", `Bearer ${key}`);
      return next(req);
    };
    const keys = createClient(KeyService, createConnectTransport({ baseUrl: server!.url, httpVersion: "1.1", interceptors: [auth(rotated)] }));
    const created = await keys.manageKey({ action: { case: "create", value: { name: "net", roles: ["reader"] } } });
    if (created.result.case !== "created") throw new Error("expected a created key");
    made.push(created.result.value.plaintext);
    await keys.manageKey({ action: { case: "list", value: {} } });
    const refused = createClient(KeyService, createConnectTransport({ baseUrl: server!.url, httpVersion: "1.1", interceptors: [auth(typo)] }));
    await expect(refused.manageKey({ action: { case: "list", value: {} } })).rejects.toThrow("invalid API key");
    const authorize = createClient(AuthorizeService, createConnectTransport({ baseUrl: server!.url, httpVersion: "1.1" }));
    for (const credential of [admin, rotated, rotatedJson, created.result.value.plaintext, typo]) {
      await authorize.authorize({ credential, path: "/templates/t1", method: "PATCH" });
    }

    // A reset, then status.
    expect((await cli(["keys", "reset", "--org", "acme", "--yes"])).code).toBe(0);
    expect((await cli(["status"])).code).toBe(0);
  });

  it("the server, the shims and the CLI's stderr never show a key", async () => {
    expect(server!.output()).toContain('"level":"info"'); // it did log
    const outputs: [string, string][] = [
      ["server", server!.output()],
      ["shim", shim!.output()],
      ["shim with no upstream", deadShim!.output()],
      ...runs.map(({ args, result }): [string, string] => [`stderr of keygate ${args.join(" ")}`, result.stderr]),
    ];
    expect(deadShim!.output()).toContain("upstream Authorize failed, denied");
    for (const [where, text] of outputs) {
      for (const secret of secrets()) expect(text.includes(secret), `${where} shows a key`).toBe(false);
    }
  });

  it("stdout shows a key only for keygen and rotate, its own, once", async () => {
    for (const { args, result, shows } of runs) {
      for (const secret of made) {
        const n = occurrences(result.stdout, secret);
        if (secret === shows) expect(n, `keygate ${args.join(" ")}`).toBe(1);
        else expect(n, `keygate ${args.join(" ")} shows another key`).toBe(0);
      }
    }
  });

  it("the database holds the keys' hashes, never the keys", async () => {
    const hashes = made.slice(0, 2).map((secret) => createHash("sha256").update(secret).digest("hex"));
    if (testDatabaseKind === "postgres") {
      const client = new pg.Client({ connectionString: data.env.DATABASE_URL, user: new URL(data.env.DATABASE_URL!).username || "postgres" });
      await client.connect();
      try {
        const { rows } = await client.query<{ row: string }>("select row_to_json(k)::text as row from api_keys k");
        const dump = rows.map((r) => r.row).join("\n");
        for (const hash of hashes) expect(dump).toContain(hash);
        for (const secret of secrets()) expect(dump.includes(secret)).toBe(false);
      } finally {
        await client.end();
      }
      return;
    }
    // PGlite: stop the server so everything is on disk, then read every file of the data dir.
    expect(await server!.stop()).toBe(0);
    const files = (await readdir(data.dataDir, { recursive: true, withFileTypes: true })).filter((f) => f.isFile());
    const found = new Set<string>();
    for (const file of files) {
      const bytes = await readFile(join(file.parentPath, file.name));
      for (const hash of hashes) if (bytes.includes(hash)) found.add(hash);
      for (const secret of secrets()) expect(bytes.includes(secret), `${file.name} holds a key`).toBe(false);
    }
    // The search looked where the keys are: their hashes are there.
    expect([...found].sort()).toEqual([...hashes].sort());
  });
});
