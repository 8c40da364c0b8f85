import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DEV_ALLOW_PUBLIC_PHRASE } from "../../src/config/settings.js";
import { DEV_MODE_REFUSAL } from "../../src/core/manage/dev-mode.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { cliBudgetMs, runCli, startServerProcess, stopAll, type ServerProcess } from "../support/keygate-process.js";

/**
 * Issue 14, item 4, as an attacker found it: KEYGATE_DEV=yes with the
 * Dockerfile's KEYGATE_HOST=0.0.0.0 served an allow-all port to the world; an
 * unauthenticated ManageKey call minted an admin key in org "victim" that
 * outlived dev mode; over a shared Postgres a dev instance did that to production.
 */

let data: TestDataDir;
const onPostgres = testDatabaseKind === "postgres";
const options = () => ({ cwd: data.dir, env: data.env });

beforeAll(async () => {
  data = await createTestDataDir();
});

afterAll(async () => {
  await data?.dispose();
});

/** An unauthenticated Connect call to ManageKey: create an admin key in org victim. */
async function mintAdmin(url: string): Promise<{ status: number; body: { code?: string; message?: string } }> {
  const response = await fetch(`${url}/keygate.v1.KeyService/ManageKey`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ create: { org: "victim", roles: ["admin"], name: "minted" } }),
  });
  return { status: response.status, body: (await response.json()) as { code?: string; message?: string } };
}

describe(`dev mode (${testDatabaseKind})`, () => {
  it("KEYGATE_DEV=yes with KEYGATE_HOST=0.0.0.0 does not start: exit 2, naming both settings", async () => {
    const result = await runCli(["serve", "--port", "0"], { cwd: data.dir, env: { ...data.env, KEYGATE_DEV: "yes", KEYGATE_HOST: "0.0.0.0" }, timeoutMs: 20_000 });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("--dev/KEYGATE_DEV: refused on 0.0.0.0 (--host/KEYGATE_HOST), which is not a loopback address");
    expect(result.stderr).toContain(`--dev-allow-public=${DEV_ALLOW_PUBLIC_PHRASE} (KEYGATE_DEV_ALLOW_PUBLIC)`);
    expect(result.stderr).not.toContain("keygate listening");
  });

  it("on loopback, an unauthenticated ManageKey create is refused and no key exists afterwards, with or without dev mode", { timeout: cliBudgetMs(3) }, async () => {
    const dev = await startServerProcess(["--dev"], options());
    try {
      expect(await mintAdmin(dev.url)).toEqual({ status: 403, body: { code: "permission_denied", message: DEV_MODE_REFUSAL } });
      // The operator's own CLI, through the control socket on PGlite, is refused the same way.
      const keygen = await runCli(["keygen", "--org", "victim", "--role", "admin"], { ...options(), env: { ...data.env, ...(onPostgres && { KEYGATE_DEV: "yes" }) } });
      expect(keygen.code).toBe(1);
      expect(keygen.stderr).toContain(`${DEV_MODE_REFUSAL} (permission_denied)`);
    } finally {
      expect(await dev.stop()).toBe(0);
    }
    const list = await runCli(["keys", "list", "--json", "--org", "victim"], options());
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { keys: unknown[] }).keys).toEqual([]);
  });
});

describe.runIf(onPostgres)("dev mode never shares a Postgres database with other servers", () => {
  let servers: ServerProcess[] = [];
  afterAll(async () => {
    await stopAll(...servers);
  });

  it("a dev server does not start while a normal one uses the database, nor a normal one beside a dev one", { timeout: cliBudgetMs(6) }, async () => {
    const normal = await startServerProcess([], options());
    servers.push(normal);
    const devRefused = await startServerProcess(["--dev"], options()).then(
      (started) => {
        servers.push(started);
        return "started";
      },
      (error: Error) => error.message,
    );
    expect(devRefused).toContain("exited with 2 before listening");
    expect(devRefused).toContain(`dev mode refused: other keygate servers use this database (pid ${normal.child.pid} on 127.0.0.1:`);
    expect(devRefused).toContain("Dev mode allows every request and shows every key, so it needs a database of its own");

    expect(await normal.stop()).toBe(0);
    const dev = await startServerProcess(["--dev"], options());
    servers.push(dev);
    const normalRefused = await startServerProcess([], options()).then(
      (started) => {
        servers.push(started);
        return "started";
      },
      (error: Error) => error.message,
    );
    expect(normalRefused).toContain("exited with 2 before listening");
    expect(normalRefused).toContain(`refused: a dev-mode keygate server uses this database (pid ${dev.child.pid} on 127.0.0.1:`);
    expect(await dev.stop()).toBe(0);
    servers = [];
  });
});
