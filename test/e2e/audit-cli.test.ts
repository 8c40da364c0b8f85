import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { cliBudgetMs, createKey, runCli, startServerProcess, type CliResult, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * `keygate audit` as an operator uses it: what the CLI and ManageKey over the
 * network did, filtered by org, key and time, with no server running (the
 * CLI opens the data) and while one runs (control socket on PGlite); and an
 * admin key over --server sees only its own org.
 */

let data: TestDataDir;
let server: ServerProcess | undefined;

interface EventJson {
  actor: string;
  action: string;
  target: string | null;
  new_target: string | null;
  org: string | null;
  outcome: string;
  detail: Record<string, unknown>;
}

const cli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> => runCli(args, { cwd: data.dir, env: { ...data.env, ...env } });
const keygen = (args: string[]): Promise<CreatedKeyJson> => createKey(args, { cwd: data.dir, env: data.env });

function ok(result: CliResult): CliResult {
  expect(result.code, `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(0);
  return result;
}

async function events(args: string[], env: Record<string, string> = {}): Promise<EventJson[]> {
  return (JSON.parse(ok(await cli(["audit", "--json", ...args], env)).stdout) as { events: EventJson[] }).events;
}

let acme: CreatedKeyJson;
let globexAdmin: CreatedKeyJson;

beforeAll(async () => {
  data = await createTestDataDir();
});

afterAll(async () => {
  const code = await server?.stop();
  await data?.dispose();
  expect(code === undefined || code === 0).toBe(true);
});

describe(`keygate audit with no server running, on ${testDatabaseKind}`, () => {
  it("lists what the CLI did, newest first", { timeout: cliBudgetMs(5) }, async () => {
    acme = await keygen(["--org", "acme", "--role", "writer", "--name", "w"]);
    globexAdmin = await keygen(["--org", "globex", "--role", "admin"]);
    ok(await cli(["keys", "update", acme.id, "--name", "w2"]));
    ok(await cli(["keys", "revoke", acme.id]));
    const all = await events([]);
    expect(all.map((e) => [e.actor, e.action, e.target, e.org, e.outcome])).toEqual([
      ["local", "revoke", acme.id, "acme", "ok"],
      ["local", "update", acme.id, "acme", "ok"],
      ["local", "create", globexAdmin.id, "globex", "ok"],
      ["local", "create", acme.id, "acme", "ok"],
    ]);
  });

  it("filters by --org, --key and --limit, and prints a table", { timeout: cliBudgetMs(4) }, async () => {
    expect((await events(["--org", "globex"])).map((e) => e.target)).toEqual([globexAdmin.id]);
    expect((await events(["--key", acme.id])).map((e) => e.action)).toEqual(["revoke", "update", "create"]);
    expect((await events(["--limit", "1"])).map((e) => e.action)).toEqual(["revoke"]);
    const table = ok(await cli(["audit", "--org", "acme"]));
    expect(table.stdout).toMatch(/^AT\s+ACTOR\s+ACTION\s+TARGET\s+ORG\s+OUTCOME/);
    expect(table.stdout).toContain(acme.id);
  });

  it("--since takes a duration back from now or an ISO time", { timeout: cliBudgetMs(3) }, async () => {
    expect(await events(["--since", "1h"])).toHaveLength(4);
    expect(await events(["--since", new Date(Date.now() + 60_000).toISOString()])).toEqual([]);
    const bad = await cli(["audit", "--since", "yesterday"]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("--since");
  });
});

describe(`keygate audit while the server runs, on ${testDatabaseKind}`, () => {
  it("records ManageKey calls over the network, refused ones too, and lists them locally", { timeout: cliBudgetMs(7) }, async () => {
    server = await startServerProcess([], { cwd: data.dir, env: data.env });
    const made = JSON.parse(ok(await cli(["keygen", "--json", "--role", "reader", "--server", server.url], { KEYGATE_API_KEY: globexAdmin.key })).stdout) as CreatedKeyJson;
    const refused = await cli(["keys", "revoke", acme.id, "--server", server.url], { KEYGATE_API_KEY: globexAdmin.key });
    expect(refused.code).toBe(1);
    ok(await cli(["keys", "rotate", made.id, "--grace", "0s"]));
    const mine = await events(["--key", made.id]);
    expect(mine.map((e) => [e.actor, e.action, e.outcome])).toEqual([
      ["local", "rotate", "ok"],
      [globexAdmin.id, "create", "ok"],
    ]);
    expect(mine[0]!.new_target).toMatch(/^key_/);
    const denied = (await events(["--key", acme.id]))[0]!;
    expect(denied).toMatchObject({ actor: globexAdmin.id, action: "revoke", org: "globex", outcome: `denied: not_found: key ${acme.id} not found` });
    expect(await events(["--since", "10m", "--org", "globex"])).toHaveLength(4);
  });

  it("over --server an admin key sees only its own org; another org or a writer key is refused", { timeout: cliBudgetMs(5) }, async () => {
    const remote = await events(["--server", server!.url], { KEYGATE_API_KEY: globexAdmin.key });
    expect(remote.length).toBeGreaterThanOrEqual(4);
    expect(remote.every((e) => e.org === "globex")).toBe(true);
    const other = await cli(["audit", "--org", "acme", "--server", server!.url], { KEYGATE_API_KEY: globexAdmin.key });
    expect(other.code).toBe(1);
    expect(other.stderr).toContain("permission_denied");
    const writer = await keygen(["--org", "globex", "--role", "writer"]);
    const asWriter = await cli(["audit", "--server", server!.url], { KEYGATE_API_KEY: writer.key });
    expect(asWriter.code).toBe(1);
    expect(asWriter.stderr).toContain("API key is not allowed to GET audit");
    const dump = ok(await cli(["audit", "--json", "--limit", "1000"])).stdout;
    for (const key of [acme.key, globexAdmin.key, writer.key]) expect(dump).not.toContain(key);
  });
});
