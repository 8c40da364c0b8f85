import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { Authorization } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { StatusCode } from "../../gen/envoy/type/v3/http_status_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { createExtAuthzService } from "../../src/entries/extauthz/ext-authz.js";
import { DEFAULT_KEY_PREFIX } from "../../src/core/keys/key-format.js";
import { createKeyCache } from "../../src/core/keys/key-cache.js";
import { createKeyLookup } from "../../src/core/keys/key-lookup.js";
import { createPolicyHolder, type PolicyHolder } from "../../src/core/policy/policy-watcher.js";
import { createHealthService } from "../../src/entries/rpc/health-service.js";
import { createReadinessCheck } from "../../src/core/authorize/readiness.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { createCore, createKey, createOutage, useCoreDatabase, type Core } from "./test-core.js";

/**
 * gRPC health over the real readiness check and ext_authz over the real
 * authorizer, in process, with a database that fails at will (PGlite or
 * Postgres alike): NOT_SERVING and a 503 deny while it is down, SERVING and
 * decisions again once it is back.
 */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

const SERVICE = "keygate.v1.AuthorizeService";

function healthClient(policyHolder: PolicyHolder, outage: ReturnType<typeof createOutage>) {
  const store = { ...database.store, db: core.db.withPlugin(outage.plugin) };
  const impl = createHealthService({ services: [SERVICE], readiness: createReadinessCheck({ db: store.db, policyHolder }), pollMs: 20 });
  return createClient(Health, createRouterTransport(({ service }) => service(Health, impl)));
}

describe(`gRPC health on ${testDatabaseKind}`, () => {
  it("Check and Watch: NOT_SERVING while the database fails, SERVING once it answers", async () => {
    const outage = createOutage();
    outage.down = false;
    const client = healthClient(createPolicyHolder({ initial: core.policy, load: async () => core.policy }), outage);
    expect((await client.check({ service: SERVICE })).status).toBe(ServingStatus.SERVING);

    outage.down = true;
    expect((await client.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    expect((await client.check({ service: SERVICE })).status).toBe(ServingStatus.NOT_SERVING);

    const abort = new AbortController();
    const stream = client.watch({ service: SERVICE }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
    outage.down = false;
    expect((await stream.next()).value?.status).toBe(ServingStatus.SERVING);
    outage.down = true;
    expect((await stream.next()).value?.status).toBe(ServingStatus.NOT_SERVING);
    abort.abort();
  });

  it("NOT_SERVING when no policy is in force", async () => {
    const outage = createOutage();
    outage.down = false;
    const noPolicy = {
      current: () => {
        throw new Error("no policy loaded");
      },
      status: () => ({ reloads: 0, failures: 1, lastCheckedAt: undefined, lastError: undefined }),
    } as unknown as PolicyHolder;
    expect((await healthClient(noPolicy, outage).check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
  });

  it("an unknown service is NOT_FOUND, up or down", async () => {
    const outage = createOutage();
    const client = healthClient(createPolicyHolder({ initial: core.policy, load: async () => core.policy }), outage);
    const error = await client.check({ service: "keygate.v1.Nope" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.NotFound);
  });
});

describe(`ext_authz on ${testDatabaseKind}, database down`, () => {
  it("denies 503 (fail closed), then allows once the key store is back", async () => {
    const { plaintext, key } = await createKey(core, { org: "acme", roles: ["reader"] });
    const outage = createOutage();
    const cache = createKeyCache({ ttlMs: 60_000, negativeTtlMs: 5_000, maxEntries: 100, now: () => core.clock.now().getTime() });
    const lookupKey = createKeyLookup({ db: core.db.withPlugin(outage.plugin), cache, keyPrefix: DEFAULT_KEY_PREFIX, now: core.clock.now });
    const flaky = await createCore(core.db, { clock: core.clock, lookupKey });
    try {
      const impl = createExtAuthzService({ authorize: flaky.authorize, credentialPriority: ["authorization", "x-api-key"] });
      const client = createClient(Authorization, createRouterTransport(({ service }) => service(Authorization, impl)));
      const request = { attributes: { request: { http: { method: "GET", path: "/sandboxes?limit=5", headers: { authorization: `Bearer ${plaintext}` } } } } };

      const down = await client.check(request);
      expect(down.status?.code).toBe(Code.Unavailable);
      if (down.httpResponse.case !== "deniedResponse") throw new Error(`expected a denied response, got ${down.httpResponse.case}`);
      expect(down.httpResponse.value.status?.code).toBe(StatusCode.ServiceUnavailable);
      expect(JSON.parse(down.httpResponse.value.body)).toEqual({ code: 503, message: "authorization unavailable: the key store cannot be reached, request denied" });
      expect(flaky.errors).toHaveLength(1);

      outage.down = false;
      const up = await client.check(request);
      expect(up.status?.code).toBe(0);
      expect(up.httpResponse.case).toBe("okResponse");
      if (up.httpResponse.case === "okResponse") expect(up.httpResponse.value.headers.map((h) => [h.header?.key, h.header?.value])).toEqual([["x-auth-user", key.id]]);
    } finally {
      await flaky.close();
    }
  });
});
