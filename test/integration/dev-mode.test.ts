import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readRuntimeConfig } from "../../src/config/config.js";
import { createKeyManager } from "../../src/core/manage/key-manager.js";
import { DEV_MODE_REFUSAL, DEV_MODE_RESOURCE_REFUSAL } from "../../src/core/manage/dev-mode.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { createRoutes } from "../../src/server/routes.js";
import { createLogger } from "../../src/telemetry/logger.js";
import { KeyService, ManageKeyRequestSchema, type ManageKeyRequest } from "../../gen/keygate/v1/key_pb.js";
import { ResourceService } from "../../gen/keygate/v1/resource_pb.js";
import { createTestStoreTarget, testDatabaseKind } from "../support/database.js";
import { LOCAL, POLICY_DIR, unwrap } from "./test-core.js";

/**
 * Issue 14, item 4: in dev mode every ManageKey caller was the operator, so an
 * unauthenticated call minted an admin key in org "victim" that kept working
 * after a restart without dev mode. Dev mode now changes no key and claims
 * nothing, through the public port and the control socket alike; it still reads.
 */

let runtime: Runtime;
let drop: (() => Promise<void>) | undefined;
let existing: { id: string; plaintext: string };

beforeAll(async () => {
  const read = readRuntimeConfig({ "policy-dir": POLICY_DIR, dev: true }, {}, process.cwd());
  if (!read.ok) throw new Error(read.errors.join("; "));
  const created = await createTestStoreTarget();
  drop = created.drop;
  runtime = await openRuntime(read.config, { storeTarget: created.target });
  // A key from before dev mode, made by an unguarded manager on the same database.
  const manager = createKeyManager({ db: runtime.store.db, policy: runtime.policy, cache: runtime.cache, keyPrefix: "sk-sb-", now: () => new Date(), recorder: runtime.auditRecorder });
  const made = unwrap(await manager.create(LOCAL, { org: "acme", roles: ["reader"], name: "before-dev" }));
  existing = { id: made.key.id, plaintext: made.plaintext };
});

afterAll(async () => {
  await runtime?.close();
  await drop?.();
});

const log = createLogger("error");
/** The public port (no key given) and the control socket (the local operator). */
const doors = [
  ["the public port, no key", false],
  ["the control socket", true],
] as const;

const keyCount = async () => Number((await runtime.store.db.selectFrom("api_keys").select((eb) => eb.fn.countAll().as("n")).executeTakeFirstOrThrow()).n);

const changes = (): [string, ManageKeyRequest["action"]][] => [
  ["create an admin key in org victim", { case: "create", value: { org: "victim", roles: ["admin"], name: "minted" } as never }],
  ["update (enable, roles)", { case: "update", value: { id: existing.id, enabled: true, roles: { roles: ["admin"] } } as never }],
  ["revoke", { case: "revoke", value: { id: existing.id } as never }],
  ["rotate", { case: "rotate", value: { id: existing.id, grace: "" } as never }],
  ["delete", { case: "delete", value: { id: existing.id } as never }],
  ["reset_all", { case: "resetAll", value: { org: "" } as never }],
];

describe(`dev mode changes no key (${testDatabaseKind})`, () => {
  it.each(doors)("%s: every changing ManageKey action is refused, and nothing is written", async (_, localOperator) => {
    const keys = createClient(KeyService, createRouterTransport(createRoutes(runtime, ["authorization", "x-api-key"], log, localOperator)));
    for (const [what, action] of changes()) {
      const error = await keys.manageKey(create(ManageKeyRequestSchema, { action })).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(error, what).toBeDefined();
      expect({ code: error!.code, message: error!.rawMessage }, what).toEqual({ code: Code.PermissionDenied, message: DEV_MODE_REFUSAL });
    }
    expect(await keyCount()).toBe(1);
    const row = await runtime.store.db.selectFrom("api_keys").selectAll().where("id", "=", existing.id).executeTakeFirstOrThrow();
    expect({ enabled: row.enabled, roles: row.roles, revoked: row.revoked_at }).toEqual({ enabled: true, roles: ["reader"], revoked: null });
  });

  it.each(doors)("%s: reads still answer (get, list)", async (_, localOperator) => {
    const keys = createClient(KeyService, createRouterTransport(createRoutes(runtime, ["authorization", "x-api-key"], log, localOperator)));
    const got = await keys.manageKey(create(ManageKeyRequestSchema, { action: { case: "get", value: { id: existing.id } as never } }));
    expect(got.result.case).toBe("key");
  });

  it.each(doors)("%s: ResourceService claims and releases nothing", async (_, localOperator) => {
    const resources = createClient(ResourceService, createRouterTransport(createRoutes(runtime, ["authorization", "x-api-key"], log, localOperator)));
    for (const call of [() => resources.claim({ id: "sbx-1", org: "victim" }), () => resources.release({ id: "sbx-1" })]) {
      const error = await call().then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect({ code: error?.code, message: error?.rawMessage }).toEqual({ code: Code.PermissionDenied, message: DEV_MODE_RESOURCE_REFUSAL });
    }
    const owned = await runtime.store.db.selectFrom("owned_resources").select("id").execute();
    expect(owned).toEqual([]);
  });

  it("the core's own door (the CLI's in-process runtime) refuses too", async () => {
    expect(await runtime.keys.create(LOCAL, { org: "victim", roles: ["admin"] })).toEqual({ ok: false, code: "permission_denied", message: DEV_MODE_REFUSAL });
    expect(await runtime.keys.resetAll(LOCAL, "")).toEqual({ ok: false, code: "permission_denied", message: DEV_MODE_REFUSAL });
    expect(await keyCount()).toBe(1);
  });
});
