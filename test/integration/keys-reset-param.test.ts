import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { createBudgetConsumer } from "../../src/core/authorize/consume-budgets.js";
import { loadPolicy } from "../../src/core/policy/policy.js";
import { createKeyService } from "../../src/entries/rpc/key-service.js";
import { createPrincipalOf } from "../../src/entries/rpc/principal.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { createTestDatabase, testDatabaseKind, type TestDatabase } from "../support/database.js";
import { asKey, createCore, createKey, LOCAL, POLICY_DIR, unwrap, type Core } from "./test-core.js";

/**
 * Issue 14, item 11: the pattern keys/:id also matched keys/reset-all, so a
 * custom rule granting POST on one key let its holder revoke every key of its
 * org. Each policy is the shipped one copied to a temp dir plus one line; the
 * caller holds only role "custom", as do the keys it would revoke (so the
 * roles-beyond check of item 5 is not what refuses).
 */

let database: TestDatabase;
let root: string;
const cores: Core[] = [];
const silent = createLogger("error", () => {});

beforeAll(async () => {
  database = await createTestDatabase();
  root = await mkdtemp(join(tmpdir(), "keygate-reset-param-"));
});

afterAll(async () => {
  for (const core of cores) await core.close();
  await database?.dispose();
  await rm(root, { recursive: true, force: true });
});

async function coreWith(line: string): Promise<Core> {
  const dir = await mkdtemp(join(root, "policy-"));
  await cp(POLICY_DIR, dir, { recursive: true });
  await writeFile(join(dir, "policy.csv"), `${await readFile(join(dir, "policy.csv"), "utf8")}\n${line}\n`);
  const core = await createCore(database.store.db, { policy: await loadPolicy(dir) });
  cores.push(core);
  return core;
}

let orgs = 0;
/** A caller with role "custom" and two more such keys in a fresh org. */
async function orgOfCustomKeys(core: Core) {
  const org = `reset-param-${++orgs}`;
  const caller = await createKey(core, { org, roles: ["custom"] });
  const others = [await createKey(core, { org, roles: ["custom"] }), await createKey(core, { org, roles: ["custom"], namespace: "team-a" })];
  return { org, caller, others };
}

async function enabledIn(core: Core, org: string): Promise<number> {
  return unwrap(await core.keys.list(LOCAL, { org, enabled: true, pageSize: 100 })).keys.length;
}

function keyService(core: Core) {
  const principalOf = createPrincipalOf({
    lookupKey: core.lookupKey,
    credentialPriority: ["authorization", "x-api-key"],
    dev: false,
    localOperator: false,
    consumeBudgets: createBudgetConsumer(core.rateLimiter, null),
  });
  return createClient(KeyService, createRouterTransport((router) => router.service(KeyService, createKeyService({ keys: core.keys, principalOf, log: silent }))));
}

describe(`a :param rule never grants reset-all, on ${testDatabaseKind}`, () => {
  it.each(["p, custom, *, *, keys/:id, POST", "p, custom, *, *, keys/:id, .*"])("%s: reset-all is refused and nothing is revoked", async (line) => {
    const core = await coreWith(line);
    const { org, caller } = await orgOfCustomKeys(core);

    const refused = await core.keys.resetAll(asKey(caller.key), "");
    expect(refused).toMatchObject({ ok: false, code: "permission_denied" });
    expect(!refused.ok && refused.message).toMatch(/^API key is not allowed to POST keys\/reset-all \(policy\.csv:\d+ reaches keys\/reset-all only through a ":param"/);
    expect(await enabledIn(core, org)).toBe(3);

    // The same over ManageKey (Connect), as a client would call it.
    const error = await keyService(core)
      .manageKey({ action: { case: "resetAll", value: {} } }, { headers: { authorization: `Bearer ${caller.plaintext}` } })
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.PermissionDenied);
    expect((error as ConnectError).rawMessage).toContain("API key is not allowed to POST keys/reset-all");
    expect(await enabledIn(core, org)).toBe(3);
  });

  it.each(["p, custom, *, *, keys/*, ^POST$", "p, custom, *, *, keys/reset-all, ^POST$"])("%s still grants it", async (line) => {
    const core = await coreWith(line);
    const { org, caller } = await orgOfCustomKeys(core);
    expect(unwrap(await core.keys.resetAll(asKey(caller.key), ""))).toBe(3);
    expect(await enabledIn(core, org)).toBe(0);
  });

  it("a literal rule after keys/:id grants it (the :param rule is skipped, not fatal)", async () => {
    const core = await coreWith("p, custom, *, *, keys/:id, ^POST$\np, custom, *, *, keys/reset-all, ^POST$");
    const { org, caller } = await orgOfCustomKeys(core);
    const response = await keyService(core).manageKey({ action: { case: "resetAll", value: {} } }, { headers: { authorization: `Bearer ${caller.plaintext}` } });
    expect(response.result).toMatchObject({ case: "resetAll", value: { revokedCount: 3 } });
    expect(await enabledIn(core, org)).toBe(0);
  });
});
