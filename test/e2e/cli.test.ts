import { access } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { createKey, runCli, startServerProcess, type CliResult, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { policyLine } from "../support/policy-lines.js";

/**
 * The CLI as an operator uses it: microsandbox-style keygen, the keys
 * commands, check, status and migrate, first with no server running (the CLI
 * opens the data itself), then while `keygate serve` runs on the same data
 * (on PGlite the CLI goes through the server's control socket).
 */

let data: TestDataDir;
let server: ServerProcess | undefined;
let devServer: ServerProcess | undefined;
const onPglite = testDatabaseKind === "pglite";

const cli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> => runCli(args, { cwd: data.dir, env: { ...data.env, ...env } });
const keygen = (args: string[]): Promise<CreatedKeyJson> => createKey(args, { cwd: data.dir, env: data.env });

function ok(result: CliResult): CliResult {
  expect(result.code, `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(0);
  return result;
}

async function checkDecision(key: string, path = "/sandboxes/abc", method = "GET"): Promise<{ code: number; allowed: boolean; reason: string; message: string; matched_rule: string }> {
  const result = await cli(["check", "--json", "--key", key, "--path", path, "--method", method]);
  return { code: result.code, ...(JSON.parse(result.stdout) as { allowed: boolean; reason: string; message: string; matched_rule: string }) };
}

const DAY = 86_400_000;

beforeAll(async () => {
  data = await createTestDataDir();
});

afterAll(async () => {
  const codes = await Promise.all([server?.stop(), devServer?.stop()]);
  await data?.dispose();
  expect(codes.filter((code) => code !== undefined && code !== 0)).toEqual([]);
});

/** The key lifecycle, which must work the same in every mode the CLI can be in. */
function keyLifecycle(): void {
  let key: CreatedKeyJson;

  it("keys list and keys get show the key without its secret", async () => {
    key = await keygen(["--org", "acme", "--role", "writer", "--name", "lifecycle"]);
    const list = ok(await cli(["keys", "list", "--json"]));
    const listed = (JSON.parse(list.stdout) as { keys: { id: string }[] }).keys.map((k) => k.id);
    expect(listed).toContain(key.id);
    const table = ok(await cli(["keys", "list", "--org", "acme"]));
    expect(table.stdout).toMatch(/^ID\s+NAME\s+ORG\s+NAMESPACE\s+ROLES\s+STATE/);
    expect(table.stdout).toContain(key.id);
    const got = ok(await cli(["keys", "get", key.id]));
    expect(got.stdout).toMatch(new RegExp(`^id\\s+${key.id}$`, "m"));
    expect(got.stdout).toMatch(/^state\s+enabled$/m);
    expect(got.stdout).toMatch(/^requests 7d\s+\d+ allowed, \d+ denied$/m);
    expect(table.stdout).toMatch(/\sALLOWED 7D\s+DENIED 7D$/m);
    expect(got.stdout).toContain(`${key.display_prefix}…`);
    for (const output of [list, table, got]) expect(output.stdout + output.stderr).not.toContain(key.key);
  });

  it("check prints the decision, the reason and the rule; exit 0 allowed, 1 denied", async () => {
    const allowed = await cli(["check", "--key", key.key, "--path", "/sandboxes/abc", "--method", "DELETE"]);
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toMatch(/^decision:\s+ALLOW$/m);
    expect(allowed.stdout).toMatch(/^reason:\s+allowed$/m);
    expect(allowed.stdout).toMatch(new RegExp(`^key:\\s+${key.id} \\(org acme, namespace \\*, roles writer\\)$`, "m"));
    expect(allowed.stdout).toMatch(new RegExp(`^rule:\\s+${policyLine("p, writer, *, *, /sandboxes/:id, ^DELETE$")}$`, "m"));
    const denied = await cli(["check", "--key", key.key, "--path", "/sandboxes/abc/network", "--method", "DELETE"]);
    expect(denied.code).toBe(1);
    expect(denied.stdout).toMatch(/^decision:\s+DENY$/m);
    expect(denied.stdout).toMatch(/^reason:\s+forbidden — API key is not allowed to DELETE \/sandboxes\/abc\/network$/m);
    expect(denied.stdout).toMatch(/^rule:\s+no rule allows this request$/m);
    expect(allowed.stdout + allowed.stderr + denied.stdout + denied.stderr).not.toContain(key.key);
  });

  it("keys revoke stops the key; keys enable brings it back", async () => {
    const revoked = ok(await cli(["keys", "revoke", key.id, "--json"]));
    expect(JSON.parse(revoked.stdout)).toMatchObject({ id: key.id, enabled: false, revoked_at: expect.any(String) });
    expect(await checkDecision(key.key)).toMatchObject({ code: 1, allowed: false, reason: "revoked", message: "API key has been revoked" });
    const enabled = ok(await cli(["keys", "enable", key.id, "--json"]));
    expect(JSON.parse(enabled.stdout)).toMatchObject({ id: key.id, enabled: true, revoked_at: null });
    expect(await checkDecision(key.key)).toMatchObject({ code: 0, allowed: true, reason: "allowed" });
  });

  it("keys rotate: the new key works at once, the old one until revoked; --grace 0s stops it at once", async () => {
    const rotated = ok(await cli(["keys", "rotate", key.id]));
    const fresh = rotated.stdout.trim();
    expect(fresh).toMatch(/^sk-sb-[0-9A-Za-z]{32,}$/);
    expect(rotated.stderr).toContain(`The old key ${key.id} keeps working until you revoke it.`);
    expect(await checkDecision(fresh)).toMatchObject({ code: 0, allowed: true });
    expect(await checkDecision(key.key)).toMatchObject({ code: 0, allowed: true });

    const again = ok(await cli(["keys", "rotate", key.id, "--grace", "0s", "--json"]));
    const third = JSON.parse(again.stdout) as CreatedKeyJson;
    expect(third).toMatchObject({ rotated_from: key.id, org: "acme", roles: ["writer"], name: "lifecycle" });
    expect(await checkDecision(key.key)).toMatchObject({ code: 1, reason: "revoked" });
    expect(await checkDecision(third.key)).toMatchObject({ code: 0, allowed: true });
  });

  it("keys delete: the key is gone", async () => {
    const deleted = ok(await cli(["keys", "delete", key.id]));
    expect(deleted.stdout.trim()).toBe(`deleted ${key.id}`);
    const get = await cli(["keys", "get", key.id]);
    expect(get.code).toBe(1);
    expect(get.stderr).toContain(`key ${key.id} not found (not_found)`);
    expect(await checkDecision(key.key)).toMatchObject({ code: 1, reason: "invalid_key", message: "invalid API key" });
  });
}

describe("with no server running (the CLI opens the data itself)", () => {
  it("keygen takes microsandbox's flags: --expire 3mo --namespace --org, repeated --role, --name, --json", async () => {
    const key = await keygen(["--expire", "3mo", "--namespace", "team-alpha", "--org", "acme", "--role", "reader", "--role", "writer", "--name", "ci-bot"]);
    expect(key).toMatchObject({ name: "ci-bot", org: "acme", namespace: "team-alpha", roles: ["reader", "writer"], enabled: true, created_by: "local", rotated_from: null });
    expect(key.key).toMatch(/^sk-sb-[0-9A-Za-z]{32,}$/);
    expect(key.key.startsWith(key.display_prefix)).toBe(true);
    // "mo" is 30 days.
    expect(Date.parse(key.expires_at!) - Date.parse(key.created_at)).toBe(90 * DAY);
  });

  it("keygen with no flags: org default, every namespace, writer, no expiry", async () => {
    const key = await keygen([]);
    expect(key).toMatchObject({ org: "default", namespace: "*", roles: ["writer"], expires_at: null, name: "" });
  });

  it("keygen without --json prints only the key on stdout, once, and notes on stderr", async () => {
    const result = ok(await cli(["keygen", "--role", "reader", "--expire", "15m", "--org", "acme"]));
    expect(result.stdout).toMatch(/^sk-sb-[0-9A-Za-z]{32,}\n$/);
    const key = result.stdout.trim();
    expect(result.stderr).toMatch(/^Created key_[0-9A-Za-z]{20} \(org acme, namespace \*, roles reader, expires .+\)\.$/m);
    expect(result.stderr).toContain("This is the only time the key is shown");
    expect(result.stderr).not.toContain(key);
    const id = /Created (key_[0-9A-Za-z]{20})/.exec(result.stderr)![1]!;
    const got = JSON.parse(ok(await cli(["keys", "get", id, "--json"])).stdout) as CreatedKeyJson;
    // "m" is minutes, not months.
    expect(Date.parse(got.expires_at!) - Date.parse(got.created_at)).toBe(15 * 60_000);
  });

  it.each(["3x", "10", "1.5h", "3M", "mo", "1 y", "1000000000y"])("keygen --expire %s is a clear error with a non-zero exit", async (duration) => {
    const result = await cli(["keygen", `--expire=${duration}`]);
    expect(result.code).not.toBe(0);
    expect(result.stdout).toBe("");
    expect(result.stderr).toMatch(/^keygate: --expire: invalid duration ".*": /);
    expect(result.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it.each([
    [["keygen", "--rol", "admin"], /^keygate keygen: unknown flag --rol; did you mean --role\?$/m],
    [["keygen", "stray"], /keygen takes no arguments, got "stray"/],
    [["keys", "revoke"], /keys revoke takes exactly one key id/],
    [["keys", "frobnicate"], /unknown keys command "frobnicate"/],
    [["check", "--path", "/x"], /check needs --key KEY/],
    [["keys", "get", "not-an-id"], /invalid key id "not-an-id"/],
  ])("keygate %j is refused with a message", async (args, message) => {
    const result = await cli(args);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(message);
  });

  it("status: not running, the policy and the key counts", async () => {
    const result = ok(await cli(["status"]));
    expect(result.stdout).toMatch(/^server:\s+not running$/m);
    expect(result.stdout).toMatch(/^mode:\s+enforcing$/m);
    expect(result.stdout).toMatch(new RegExp(`^database:\\s+${testDatabaseKind} `, "m"));
    expect(result.stdout).toMatch(/^policy:\s+\S+ \[policy\.csv\], \d+ rules, version [0-9a-f]{12}$/m);
    expect(result.stdout).toMatch(/^keys:\s+3 \(3 enabled\)$/m);
    expect(result.stdout).not.toContain("DEV MODE");
  });

  it("migrate: already up to date", async () => {
    const result = ok(await cli(["migrate"]));
    expect(result.stdout).toContain("already up to date");
    expect(result.stdout).toMatch(/^current: \S+$/m);
  });

  keyLifecycle();
});

describe("while the server runs on the same data", () => {
  beforeAll(async () => {
    server = await startServerProcess([], { cwd: data.dir, env: data.env });
  });

  keyLifecycle();

  it("status shows the server running", async () => {
    // PGlite: asked through the server's control socket. Postgres: found by its connection to the database.
    const result = ok(await cli(["status"]));
    expect(result.stdout).toMatch(new RegExp(`^server:\\s+running, pid ${server!.child.pid}, on 127\\.0\\.0\\.1:${server!.port}, since \\S+$`, "m"));
    expect(result.stdout).toMatch(/^mode:\s+enforcing$/m);
    expect(result.stdout).toMatch(/^keys:\s+\d+ \(\d+ enabled\)$/m);
    const json = JSON.parse(ok(await cli(["status", "--json"])).stdout) as { server: string; pid: number; servers?: { pid: number; dev: boolean }[] };
    expect(json.server).toBe("running");
    if (onPglite) expect(json.pid).toBe(server!.child.pid);
    else expect(json.servers).toEqual([expect.objectContaining({ pid: server!.child.pid, dev: false, listen: `127.0.0.1:${server!.port}` })]);
  });

  it("a key made by the CLI works on the server at once", async () => {
    const key = await keygen(["--org", "acme", "--role", "reader"]);
    const response = await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "GET"));
    expect(response.status).toBe(200);
    expect(response.headers["x-auth-user"]).toBe(key.id);
  });

  it("a key revoked by the CLI is refused by the server at once", async () => {
    const key = await keygen(["--org", "acme", "--role", "reader"]);
    expect((await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "GET"))).status).toBe(200);
    ok(await cli(["keys", "revoke", key.id]));
    const response = await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "GET"));
    expect({ status: response.status, body: JSON.parse(response.body) as unknown }).toEqual({ status: 401, body: { code: 401, message: "API key has been revoked" } });
  });

  it("--server URL manages keys over the network with KEYGATE_API_KEY, in that key's org only", async () => {
    const admin = await keygen(["--org", "remote-org", "--role", "admin"]);
    const reader = await keygen(["--org", "remote-org", "--role", "reader"]);
    const listed = ok(await cli(["keys", "list", "--json", "--server", server!.url], { KEYGATE_API_KEY: admin.key }));
    const keys = (JSON.parse(listed.stdout) as { keys: { id: string; org: string }[] }).keys;
    expect(keys.map((k) => k.id).sort()).toEqual([admin.id, reader.id].sort());
    const made = JSON.parse(ok(await cli(["keygen", "--json", "--role", "reader", "--server", server!.url], { KEYGATE_API_KEY: admin.key })).stdout) as CreatedKeyJson;
    expect(made).toMatchObject({ org: "remote-org", created_by: admin.id });
    expect((await cubeRequest(server!.url, bearer(made.key, "/sandboxes/abc", "GET"))).headers["x-auth-user"]).toBe(made.id);

    const noKey = await cli(["keys", "list", "--server", server!.url]);
    expect(noKey.code).not.toBe(0);
    expect(noKey.stderr).toContain("--server needs an admin key: set KEYGATE_API_KEY");
    const asReader = await cli(["keys", "list", "--server", server!.url], { KEYGATE_API_KEY: reader.key });
    expect(asReader.code).toBe(1);
    expect(asReader.stderr).toContain("API key is not allowed to GET keys (permission_denied)");
  });

  it("migrate works while the server runs", async () => {
    const result = ok(await cli(["migrate"]));
    if (onPglite) expect(result.stdout).toContain(`a keygate server (pid ${server!.child.pid}) holds ${data.dataDir}`);
    else expect(result.stdout).toContain("already up to date");
  });

  it.runIf(onPglite)("a second serve on the same PGlite data dir fails, naming the data dir and the pid", async () => {
    const second = await runCli(["serve", "--port", "0"], { cwd: data.dir, env: data.env, timeoutMs: 20_000 });
    expect(second.code).not.toBe(0);
    expect(second.stderr).toContain(`data dir ${data.dataDir} is in use by pid ${server!.child.pid}`);
    expect(second.stderr).toContain("DATABASE_URL");
    // The first server is unharmed.
    expect((await cubeRequest(server!.url, bearer("sk-sb-x", "/sandboxes/abc", "GET"))).status).toBe(401);
  });

  it.runIf(!onPglite)("a second serve over the same Postgres runs beside the first; both see key changes at once", async () => {
    const key = await keygen(["--org", "acme", "--role", "reader"]);
    const second = await startServerProcess([], { cwd: data.dir, env: data.env });
    try {
      for (const running of [server!, second]) {
        const response = await cubeRequest(running.url, bearer(key.key, "/sandboxes/abc", "GET"));
        expect(response.headers["x-auth-user"]).toBe(key.id);
      }
      const status = ok(await cli(["status"]));
      expect(status.stdout).toMatch(new RegExp(`^server:\\s+running, .*pid ${server!.child.pid}, on 127\\.0\\.0\\.1:${server!.port}, `, "m"));
      expect(status.stdout).toMatch(new RegExp(`^server:\\s+running, .*pid ${second.child.pid}, on 127\\.0\\.0\\.1:${second.port}, `, "m"));
      ok(await cli(["keys", "revoke", key.id]));
      for (const running of [server!, second]) {
        const response = await cubeRequest(running.url, bearer(key.key, "/sandboxes/abc", "GET"));
        expect({ status: response.status, body: JSON.parse(response.body) as unknown }).toEqual({ status: 401, body: { code: 401, message: "API key has been revoked" } });
      }
    } finally {
      expect(await second.stop()).toBe(0);
    }
  });

  it("keys reset needs --yes; --org revokes that org's keys and says so; without it every key stops working on the server at once", async () => {
    const key = await keygen(["--org", "acme", "--role", "admin"]);
    expect((await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "DELETE"))).status).toBe(200);

    const refused = await cli(["keys", "reset"]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("run again with --yes");
    expect((await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "DELETE"))).status).toBe(200);

    // An org's reset says exactly what it revoked, and keys of other orgs keep working.
    const other = await keygen(["--org", "other-org", "--role", "admin"]);
    const orgReset = ok(await cli(["keys", "reset", "--org", "acme", "--yes"]));
    expect(orgReset.stdout).toMatch(/^revoked \d+ keys? of org acme$/m);
    expect(orgReset.stderr).toContain("Keys of org acme have stopped working; keys outside it are unchanged.");
    expect(orgReset.stderr).not.toContain("Every existing key");
    expect((await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "DELETE"))).status).toBe(401);
    expect((await cubeRequest(server!.url, bearer(other.key, "/sandboxes/abc", "DELETE"))).status).toBe(200);

    const reset = ok(await cli(["keys", "reset", "--yes"]));
    expect(reset.stdout).toMatch(/^revoked \d+ keys? of every org$/m);
    expect(reset.stderr).toContain("Every existing key, in every org, has stopped working.");
    const response = await cubeRequest(server!.url, bearer(key.key, "/sandboxes/abc", "DELETE"));
    expect({ status: response.status, body: JSON.parse(response.body) as unknown }).toEqual({ status: 401, body: { code: 401, message: "API key has been revoked" } });
    const status = ok(await cli(["status"]));
    expect(status.stdout).toMatch(/^keys:\s+\d+ \(0 enabled\)$/m);
  });
});

describe("dev mode", () => {
  beforeAll(async () => {
    expect(await server!.stop()).toBe(0);
    server = undefined;
    devServer = await startServerProcess(["--dev"], { cwd: data.dir, env: data.env });
  });

  it("warns loudly at start and allows every request, even with no key", async () => {
    expect(devServer!.output()).toContain("WARNING: keygate is in DEV MODE (--dev)");
    const response = await cubeRequest(devServer!.url, [["X-Request-Path", "/sandboxes/abc"], ["X-Request-Method", "DELETE"]]);
    expect(response.status).toBe(200);
  });

  it("status warns on every call while a dev-mode server runs", async () => {
    for (let i = 0; i < 2; i++) {
      const result = ok(await cli(["status"]));
      expect(result.stdout).toContain("WARNING: keygate is in DEV MODE (--dev)");
      expect(result.stdout).toMatch(/^mode:\s+DEV MODE — every request is allowed$/m);
    }
  });

  it("after the dev server stops, status no longer warns and the lock is gone", async () => {
    expect(await devServer!.stop()).toBe(0);
    devServer = undefined;
    const result = ok(await cli(["status"]));
    expect(result.stdout).not.toContain("DEV MODE");
    expect(result.stdout).toMatch(/^server:\s+not running$/m);
    await expect(access(join(data.dataDir, "keygate.lock"))).rejects.toThrow();
  });
});
