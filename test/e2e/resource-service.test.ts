import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code, ConnectError, createKeygateClient, type KeygateClient } from "../../src/client/index.js";
import { grpcClient, unary, type GrpcClient } from "../support/grpc-js.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { cliBudgetMs, createKey, runCli, startServerProcess, type CliResult, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * ResourceService as other services call it: a real server on port 0,
 * reached by grpc-js with proto-loader on proto/keygate/v1/resource.proto (a
 * client nobody here wrote) and by Connect (keygate/client); keys made with
 * the real CLI, two orgs and a platform key; then `keygate resources` in
 * the CLI's modes.
 */

let data: TestDataDir;
let server: ServerProcess;
let grpcJs: GrpcClient;
const connect = {} as Record<"acme" | "globex" | "platform" | "alpha", KeygateClient>;
const keys = {} as Record<"acme" | "globex" | "platform" | "alpha" | "writer", CreatedKeyJson>;

const cli = (args: string[], env: Record<string, string> = {}): Promise<CliResult> => runCli(args, { cwd: data.dir, env: { ...data.env, ...env } });

function ok(result: CliResult): CliResult {
  expect(result.code, `exit ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(0);
  return result;
}

beforeAll(async () => {
  data = await createTestDataDir();
  const options = { cwd: data.dir, env: data.env };
  server = await startServerProcess([], options);
  keys.acme = await createKey(["--org", "acme", "--role", "admin", "--name", "acme-admin"], options);
  keys.alpha = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "admin", "--name", "alpha-admin"], options);
  keys.globex = await createKey(["--org", "globex", "--role", "admin", "--name", "globex-admin"], options);
  keys.platform = await createKey(["--org", "*", "--role", "admin", "--name", "platform"], options);
  keys.writer = await createKey(["--org", "acme", "--role", "writer", "--name", "acme-writer"], options);
  for (const name of ["acme", "globex", "platform", "alpha"] as const) connect[name] = createKeygateClient({ baseUrl: server.url, apiKey: keys[name].key });
  grpcJs = grpcClient("keygate/v1/resource.proto", "keygate.v1.ResourceService", server.port);
}, cliBudgetMs(6));

afterAll(async () => {
  grpcJs?.close();
  for (const client of Object.values(connect)) client.close();
  const code = await server?.stop();
  await data?.dispose();
  expect(code).toBe(0);
});

/** A grpc-js call as `key`, with the credential in the metadata as any gRPC client sends it. */
function asKey<T>(key: CreatedKeyJson, method: string, request: object): Promise<T> {
  return new Promise((done, fail) => {
    const metadata = new grpc.Metadata();
    metadata.set("authorization", `Bearer ${key.key}`);
    grpcJs[method]!(request, metadata, { deadline: Date.now() + 10_000 }, (error: grpc.ServiceError | null, response: T) => (error ? fail(error) : done(response)));
  });
}

async function grpcCode(call: Promise<unknown>): Promise<[number, string]> {
  const error = (await call.then(
    () => expect.fail("expected the call to fail"),
    (e: unknown) => e,
  )) as grpc.ServiceError;
  return [error.code, error.details];
}

async function connectCode(call: Promise<unknown>): Promise<[Code, string]> {
  const error = ConnectError.from(await call.then(() => expect.fail("expected the call to fail"), (e: unknown) => e));
  return [error.code, error.rawMessage];
}

interface WireResource {
  kind: string;
  id: string;
  org: string;
  namespace: string;
  key_id: string;
  released_at: unknown;
}

describe(`ResourceService over grpc-js and Connect, on ${testDatabaseKind}`, () => {
  it("each org claims with grpc-js; get answers the owner; another org's get is NOT_FOUND, like a missing id", async () => {
    const claimed = await asKey<{ resource: WireResource; created: boolean }>(keys.acme, "Claim", { kind: "sandboxes", id: "sb-acme-1" });
    expect(claimed.created).toBe(true);
    expect(claimed.resource).toMatchObject({ kind: "sandboxes", id: "sb-acme-1", org: "acme", namespace: "default", key_id: keys.acme.id, released_at: null });
    // Empty kind is "sandboxes"; a retry answers the same entry.
    expect(await asKey<{ created: boolean }>(keys.acme, "Claim", { id: "sb-acme-1" })).toMatchObject({ created: false });
    await asKey(keys.globex, "Claim", { id: "sb-globex-1" });
    expect((await asKey<{ resource: WireResource }>(keys.globex, "Get", { id: "sb-globex-1" })).resource.org).toBe("globex");
    expect(await grpcCode(asKey(keys.acme, "Get", { id: "sb-globex-1" }))).toEqual([grpc.status.NOT_FOUND, "sandboxes sb-globex-1 not found"]);
    expect(await grpcCode(asKey(keys.acme, "Get", { id: "sb-missing" }))).toEqual([grpc.status.NOT_FOUND, "sandboxes sb-missing not found"]);
    expect(await grpcCode(asKey(keys.acme, "Release", { id: "sb-globex-1" }))).toEqual([grpc.status.NOT_FOUND, "sandboxes sb-globex-1 not found"]);
    expect(await grpcCode(asKey(keys.acme, "Claim", { id: "sb-globex-1" }))).toEqual([grpc.status.ALREADY_EXISTS, "sandboxes sb-globex-1 is already claimed"]);
  });

  it("Connect (keygate/client): the same rules; the platform key claims for any org and sees all", async () => {
    const { resource } = await connect.platform.resources.claim({ id: "sb-platform-made", org: "globex", namespace: "team-g" });
    expect(resource).toMatchObject({ org: "globex", namespace: "team-g", keyId: keys.platform.id });
    expect(await connectCode(connect.acme.resources.get({ id: "sb-platform-made" }))).toEqual([Code.NotFound, "sandboxes sb-platform-made not found"]);
    expect((await connect.platform.resources.get({ id: "sb-acme-1" })).resource?.org).toBe("acme");
    const all = (await connect.platform.resources.list({ pageSize: 1000 })).resources.map((r) => r.id);
    expect(all).toEqual(expect.arrayContaining(["sb-acme-1", "sb-globex-1", "sb-platform-made"]));
    const acme = (await connect.acme.resources.list({})).resources;
    expect(new Set(acme.map((r) => r.org))).toEqual(new Set(["acme"]));
  });

  it("escalation attempts are refused, and each refusal is in the audit log", async () => {
    expect(await connectCode(connect.acme.resources.claim({ id: "sb-x1", org: "globex" }))).toEqual([Code.PermissionDenied, 'a key may not claim resources for another org ("globex")']);
    expect(await connectCode(connect.alpha.resources.claim({ id: "sb-x2", namespace: "team-beta" }))).toEqual([
      Code.PermissionDenied,
      'a key scoped to namespace "team-alpha" may not claim into namespace "team-beta"',
    ]);
    expect(await connectCode(connect.acme.resources.list({ org: "globex" }))).toEqual([Code.PermissionDenied, "a key may list only its own org's resources"]);
    const writer = createKeygateClient({ baseUrl: server.url, apiKey: keys.writer.key });
    expect(await connectCode(writer.resources.claim({ id: "sb-x3" }))).toEqual([Code.PermissionDenied, "API key is not allowed to POST resources"]);
    writer.close();
    expect(await connectCode(connect.acme.resources.get({ id: "sb-x1" }))).toEqual([Code.NotFound, "sandboxes sb-x1 not found"]);
    const audit = await connect.acme.audit.listAuditEvents({ pageSize: 50 });
    const refusals = audit.events.filter((e) => e.action.startsWith("resource.") && e.outcome.startsWith("denied: permission_denied"));
    expect(refusals.map((e) => [e.actor, e.action, e.target])).toEqual(
      expect.arrayContaining([
        [keys.acme.id, "resource.claim", "sandboxes/sb-x1"],
        [keys.alpha.id, "resource.claim", "sandboxes/sb-x2"],
        [keys.acme.id, "resource.list", ""],
        [keys.writer.id, "resource.claim", "sandboxes/sb-x3"],
      ]),
    );
  });

  it("List pages through grpc-js until next_page_token is empty; release is audited and idempotent", async () => {
    for (let i = 0; i < 5; i++) await connect.globex.resources.claim({ id: `sb-page-${i}` });
    const seen: string[] = [];
    let token = "";
    let pages = 0;
    do {
      const page = await asKey<{ resources: WireResource[]; next_page_token: string }>(keys.globex, "List", { page_size: 2, page_token: token });
      expect(page.resources.length).toBeLessThanOrEqual(2);
      seen.push(...page.resources.map((r) => r.id));
      token = page.next_page_token;
      pages++;
    } while (token !== "");
    expect(pages).toBeGreaterThanOrEqual(3);
    expect(seen).toEqual(expect.arrayContaining(["sb-page-0", "sb-page-4", "sb-globex-1", "sb-platform-made"]));
    expect(new Set(seen).size).toBe(seen.length);
    // (grpc-js reads grpc-message with decodeURI, which leaves the ":" connect-node percent-encodes as "%3A".)
    expect(await connectCode(connect.globex.resources.list({ pageToken: "not-a-token" }))).toEqual([Code.InvalidArgument, "invalid page_token: pass the next_page_token of a previous page"]);
    expect((await grpcCode(asKey(keys.globex, "List", { page_token: "not-a-token" })))[0]).toBe(grpc.status.INVALID_ARGUMENT);

    expect(await asKey(keys.globex, "Release", { id: "sb-page-0" })).toMatchObject({ released: true });
    expect(await asKey(keys.globex, "Release", { id: "sb-page-0" })).toMatchObject({ released: false });
    const [latest] = (await connect.globex.audit.listAuditEvents({ pageSize: 1 })).events;
    expect(latest).toMatchObject({ actor: keys.globex.id, action: "resource.release", target: "sandboxes/sb-page-0", org: "globex", outcome: "ok" });
    const live = (await connect.globex.resources.list({ pageSize: 1000 })).resources.map((r) => r.id);
    expect(live).not.toContain("sb-page-0");
    expect((await connect.globex.resources.list({ pageSize: 1000, includeReleased: true })).resources.map((r) => r.id)).toContain("sb-page-0");
  });

  it("unauthenticated calls are refused before anything is read", async () => {
    expect(await grpcCode(unary(grpcJs, "Get", { id: "sb-acme-1" }))).toEqual([grpc.status.UNAUTHENTICATED, "missing API key in Authorization header"]);
  });
});

describe(`keygate resources, on ${testDatabaseKind}`, () => {
  it("the local operator (through the control socket on PGlite, in process on Postgres) claims, gets, lists and releases; JSON and text", { timeout: cliBudgetMs(6) }, async () => {
    const claimed = JSON.parse(ok(await cli(["resources", "claim", "sb-cli-1", "--org", "acme", "--namespace", "team-alpha", "--json"])).stdout) as Record<string, unknown>;
    expect(claimed).toMatchObject({ kind: "sandboxes", id: "sb-cli-1", org: "acme", namespace: "team-alpha", key_id: "local", released_at: null, created: true });
    expect(ok(await cli(["resources", "get", "sb-cli-1"])).stdout).toMatch(/^org\s+acme$/m);
    const listed = JSON.parse(ok(await cli(["resources", "list", "--org", "acme", "--json"])).stdout) as { resources: { id: string }[] };
    expect(listed.resources.map((r) => r.id)).toEqual(expect.arrayContaining(["sb-cli-1", "sb-acme-1"]));
    expect(ok(await cli(["resources", "release", "sb-cli-1"])).stdout.trim()).toBe("released sandboxes sb-cli-1");
    expect(ok(await cli(["resources", "release", "sb-cli-1"])).stdout.trim()).toBe("sandboxes sb-cli-1 was already released");
    const missing = await cli(["resources", "get", "sb-nowhere"]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("sandboxes sb-nowhere not found (not_found)");
  });

  it("mistakes at the keyboard exit 2 and say what to type", { timeout: cliBudgetMs(3) }, async () => {
    const none = await cli(["resources"]);
    expect([none.code, none.stderr.trim()]).toEqual([2, "keygate: resources needs a command: list, get, claim or release"]);
    const twoIds = await cli(["resources", "get", "a", "b"]);
    expect([twoIds.code, twoIds.stderr.trim()]).toEqual([2, "keygate: resources get takes exactly one resource id"]);
    const size = await cli(["resources", "list", "--page-size", "0"]);
    expect([size.code, size.stderr.trim()]).toEqual([2, 'keygate: --page-size: a whole number from 1 to 1000, not "0"']);
  });

  it("--server with a key: its own org only, paging with --all", { timeout: cliBudgetMs(4) }, async () => {
    const env = { KEYGATE_API_KEY: keys.globex.key };
    const page = JSON.parse(ok(await cli(["resources", "list", "--server", server.url, "--page-size", "2", "--json"], env)).stdout) as { resources: WireResource[]; next_page_token: string };
    expect(page.resources).toHaveLength(2);
    expect(page.next_page_token).not.toBe("");
    const all = JSON.parse(ok(await cli(["resources", "list", "--server", server.url, "--page-size", "2", "--all", "--json"], env)).stdout) as { resources: WireResource[] };
    expect(new Set(all.resources.map((r) => r.org))).toEqual(new Set(["globex"]));
    expect(all.resources.length).toBeGreaterThan(2);
    const other = await cli(["resources", "get", "sb-acme-1", "--server", server.url], env);
    expect(other.code).toBe(1);
    expect(other.stderr).toContain("sandboxes sb-acme-1 not found (not_found)");
    const escalate = await cli(["resources", "claim", "sb-cli-2", "--org", "acme", "--server", server.url], env);
    expect(escalate.code).toBe(1);
    expect(escalate.stderr).toContain('a key may not claim resources for another org ("acme") (permission_denied)');
  });
});
