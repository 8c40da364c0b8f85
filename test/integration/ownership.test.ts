import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Decision } from "../../src/core/authorize/decision.js";
import { applyResourceChange } from "../../src/core/resources/resource-ledger.js";
import { createTestDatabase, type TestDatabase } from "../support/database.js";
import { check, createCore, createKey, LOCAL, type Core } from "./test-core.js";

/**
 * Ownership on every decision: with ownership on, a path routes.yaml declares
 * owned (/sandboxes/:id and below, v2 too, with or without /cubeapi/v1) is
 * allowed only to keys of the owner's org and namespace, and to platform keys
 * (org "*"). Another org's sandbox and a missing one get the same answer.
 * With ownership off (the default) the ledger is never consulted.
 */

let database: TestDatabase;
let core: Core;
let offCore: Core;
const key = {} as Record<"acmeWriter" | "acmeReader" | "acmeAlpha" | "globexWriter" | "platform", string>;
const id = {} as Record<keyof typeof key, string>;

beforeAll(async () => {
  database = await createTestDatabase();
  core = await createCore(database.store.db, { ownership: true });
  offCore = await createCore(database.store.db, { clock: core.clock });
  const made = {
    acmeWriter: await createKey(core, { name: "acme writer", org: "acme", roles: ["writer"] }),
    acmeReader: await createKey(core, { name: "acme reader", org: "acme", roles: ["reader"] }),
    acmeAlpha: await createKey(core, { name: "acme alpha", org: "acme", namespace: "team-alpha", roles: ["writer"] }),
    globexWriter: await createKey(core, { name: "globex writer", org: "globex", roles: ["writer"] }),
    platform: await createKey(core, { name: "platform", org: "*", roles: ["writer"] }),
  };
  for (const [alias, created] of Object.entries(made)) {
    key[alias as keyof typeof key] = created.plaintext;
    id[alias as keyof typeof key] = created.key.id;
  }
  expect((await core.resources.claim({ kind: "sandboxes", id: "sbx-acme" }, { org: "acme", namespace: "default", keyId: id.acmeWriter })).ok).toBe(true);
  expect((await core.resources.claim({ kind: "sandboxes", id: "sbx-alpha" }, { org: "acme", namespace: "team-alpha", keyId: id.acmeAlpha })).ok).toBe(true);
  expect((await core.resources.claim({ kind: "sandboxes", id: "sbx-globex" }, { org: "globex", namespace: "default", keyId: id.globexWriter })).ok).toBe(true);
});

afterAll(async () => {
  await core?.close();
  await offCore?.close();
  await database?.dispose();
});

const outcome = (d: Decision) => ({ allowed: d.allowed, reason: d.reason, message: d.message });

describe("ownership on", () => {
  it("lets the owner's org use its sandbox on every owned route and prefix", async () => {
    for (const path of ["/sandboxes/sbx-acme", "/sandboxes/sbx-acme/logs", "/v2/sandboxes/sbx-acme/logs", "/cubeapi/v1/sandboxes/sbx-acme", "/cubeapi/v1/v2/sandboxes/sbx-acme/logs"]) {
      expect(outcome(await check(core, key.acmeReader, "GET", path)), path).toMatchObject({ allowed: true });
    }
    expect((await check(core, key.acmeWriter, "DELETE", "/sandboxes/sbx-acme")).allowed).toBe(true);
    expect((await check(core, key.acmeWriter, "POST", "/cubeapi/v1/sandboxes/sbx-acme/timeout")).allowed).toBe(true);
  });

  it("answers another org's sandbox exactly as a missing one: not_found, 404 wording, no owner named", async () => {
    const other = await check(core, key.acmeWriter, "DELETE", "/sandboxes/sbx-globex");
    const missing = await check(core, key.acmeWriter, "DELETE", "/sandboxes/sbx-nobody");
    expect(outcome(other)).toEqual({ allowed: false, reason: "not_found", message: "sandboxes/sbx-globex not found" });
    expect(outcome(missing)).toEqual({ allowed: false, reason: "not_found", message: "sandboxes/sbx-nobody not found" });
    expect(JSON.stringify(other)).not.toContain("globex\"");
    expect(other.allowed || other.explanation).toBeUndefined();
    for (const path of ["/sandboxes/sbx-globex/logs", "/v2/sandboxes/sbx-globex/logs", "/cubeapi/v1/sandboxes/sbx-globex", "/sandboxes/sbx-globex/terminal/ws"]) {
      const decision = await check(core, key.acmeWriter, "GET", path);
      expect(decision.reason, path).toMatch(/^(not_found|forbidden)$/);
      expect(decision.allowed, path).toBe(false);
    }
  });

  it("holds a namespace-scoped key to its namespace's sandboxes, and a key of every namespace asking in one namespace to that one", async () => {
    expect((await check(core, key.acmeAlpha, "GET", "/sandboxes/sbx-alpha")).allowed).toBe(true);
    expect((await check(core, key.acmeAlpha, "GET", "/sandboxes/sbx-acme")).reason).toBe("not_found");
    expect((await check(core, key.acmeWriter, "GET", "/sandboxes/sbx-alpha")).allowed).toBe(true);
    expect((await check(core, key.acmeWriter, "GET", "/sandboxes/sbx-acme", { namespace: "team-alpha" })).reason).toBe("not_found");
  });

  it("lets a platform key (org *) reach every sandbox, owned or not", async () => {
    for (const sandbox of ["sbx-acme", "sbx-globex", "sbx-nobody"]) {
      expect((await check(core, key.platform, "GET", `/sandboxes/${sandbox}`)).allowed).toBe(true);
    }
  });

  it("decides the policy first: a route the key may not use is forbidden whoever owns the sandbox", async () => {
    expect((await check(core, key.acmeReader, "DELETE", "/sandboxes/sbx-globex")).reason).toBe("forbidden");
    expect((await check(core, key.acmeReader, "DELETE", "/sandboxes/sbx-nobody")).reason).toBe("forbidden");
  });

  it("leaves paths that address no owned resource alone (lists, creates, templates)", async () => {
    expect((await check(core, key.acmeReader, "GET", "/sandboxes")).allowed).toBe(true);
    expect((await check(core, key.acmeWriter, "POST", "/v2/sandboxes")).allowed).toBe(true);
    expect((await check(core, key.acmeReader, "GET", "/cubeapi/v1/templates")).allowed).toBe(true);
  });

  it("sees a release and a new claim at once (the cache is invalidated)", async () => {
    const ref = { kind: "sandboxes", id: "sbx-moving" };
    expect((await check(core, key.acmeReader, "GET", "/sandboxes/sbx-moving")).reason).toBe("not_found");
    await core.resources.claim(ref, { org: "acme", namespace: "default", keyId: id.acmeWriter });
    expect((await check(core, key.acmeReader, "GET", "/sandboxes/sbx-moving")).allowed).toBe(true);
    expect(await core.resources.release(ref)).toBe(true);
    expect(await core.resources.release(ref)).toBe(false);
    expect((await check(core, key.acmeReader, "GET", "/sandboxes/sbx-moving")).reason).toBe("not_found");
    // Released, the id may be owned again, by anyone.
    expect((await core.resources.claim(ref, { org: "globex", namespace: "default", keyId: id.globexWriter })).ok).toBe(true);
    expect((await check(core, key.globexWriter, "GET", "/sandboxes/sbx-moving")).allowed).toBe(true);
  });

  it("explains a not_found only when asked (the local operator): which route, and why", async () => {
    const explained = await check(core, key.acmeWriter, "GET", "/sandboxes/sbx-globex", { explain: true });
    if (explained.allowed) expect.fail("allowed");
    expect(explained.reason).toBe("not_found");
    expect(explained.explanation?.[0]?.rule).toMatch(/^routes\.yaml:\d+$/);
    expect(explained.explanation?.[0]?.reasons[0]).toContain('owned by org "globex"');
  });

  it("fails closed when the ledger cannot answer", async () => {
    const broken = await createCore(database.store.db, {
      ownership: true,
      clock: core.clock,
      owner: async () => {
        throw new Error("the database is down");
      },
    });
    try {
      const decision = await check(broken, key.acmeWriter, "GET", "/sandboxes/sbx-acme");
      expect(outcome(decision)).toMatchObject({ allowed: false, reason: "unavailable" });
      expect(broken.errors).toHaveLength(1);
    } finally {
      await broken.close();
    }
  });
});

describe("ownership off (the default)", () => {
  it("never consults the ledger: an empty or foreign entry changes nothing", async () => {
    expect((await check(offCore, key.acmeWriter, "DELETE", "/sandboxes/sbx-globex")).allowed).toBe(true);
    expect((await check(offCore, key.acmeReader, "GET", "/cubeapi/v1/sandboxes/sbx-nobody/logs")).allowed).toBe(true);
  });
});

describe("the ledger", () => {
  it("claims idempotently for the same owner and refuses another org's claim on a live resource", async () => {
    const ref = { kind: "sandboxes", id: "sbx-claimed" };
    const first = await core.resources.claim(ref, { org: "acme", namespace: "default", keyId: id.acmeWriter });
    const again = await core.resources.claim(ref, { org: "acme", namespace: "default", keyId: id.acmeReader });
    const stolen = await core.resources.claim(ref, { org: "globex", namespace: "default", keyId: id.globexWriter });
    expect(first).toMatchObject({ ok: true, created: true });
    expect(again).toMatchObject({ ok: true, created: false, resource: { keyId: id.acmeWriter } });
    expect(stolen).toMatchObject({ ok: false, reason: "conflict", resource: { org: "acme" } });
    expect(await core.resources.owner(ref)).toEqual({ org: "acme", namespace: "default", keyId: id.acmeWriter });
  });

  it("lists by org, namespace and key, newest first, in pages, and counts live entries", async () => {
    const org = "paging";
    for (let i = 0; i < 5; i++) {
      core.clock.advance(1_000);
      await core.resources.claim({ kind: "sandboxes", id: `sbx-page-${i}` }, { org, namespace: i % 2 ? "odd" : "even", keyId: `key_${i % 2}` });
    }
    const seen: string[] = [];
    let token: string | undefined;
    do {
      const page = await core.resources.list({ kind: "sandboxes", org, pageSize: 2, ...(token && { pageToken: token }) });
      expect(page).toBeDefined();
      seen.push(...page!.resources.map((r) => r.id));
      token = page!.nextPageToken || undefined;
    } while (token);
    expect(seen).toEqual(["sbx-page-4", "sbx-page-3", "sbx-page-2", "sbx-page-1", "sbx-page-0"]);
    expect([...(await core.resources.liveIds("sandboxes", { org, namespace: "odd" }))].sort()).toEqual(["sbx-page-1", "sbx-page-3"]);
    expect((await core.resources.liveIds("sandboxes", { org, namespace: "*" })).size).toBe(5);
    expect(await core.resources.countLive("sandboxes", { org })).toBe(5);
    expect(await core.resources.countLive("sandboxes", { keyId: "key_0" })).toBe(3);
    await core.resources.release({ kind: "sandboxes", id: "sbx-page-0" });
    expect(await core.resources.countLive("sandboxes", { keyId: "key_0" })).toBe(2);
    const all = await core.resources.list({ org, includeReleased: true, pageSize: 10 });
    expect(all!.resources.find((r) => r.id === "sbx-page-0")?.releasedAt).toBeInstanceOf(Date);
    expect(await core.resources.list({ org, pageSize: 10, pageToken: "not-a-token" })).toBeUndefined();
  });

  it("mints a platform key (org *) only for the local operator", async () => {
    expect((await core.keys.create(LOCAL, { name: "p2", org: "*", roles: ["reader"] })).ok).toBe(true);
    const admin = await createKey(core, { name: "acme admin", org: "acme", roles: ["admin"] });
    const refused = await core.keys.create({ kind: "key", key: admin.key }, { name: "escalate", org: "*", roles: ["reader"] });
    expect(refused).toMatchObject({ ok: false, code: "permission_denied" });
  });
});

describe("the ledger's list cache", () => {
  it("answers a list from memory until anything changes, then reads again", async () => {
    const org = "listing";
    await core.resources.claim({ kind: "sandboxes", id: "sbx-list-1" }, { org, namespace: "default", keyId: "key_l" });
    const first = await core.resources.liveIds("sandboxes", { org, namespace: "*" });
    expect([...first]).toEqual(["sbx-list-1"]);
    expect(core.resources.cache.getIds("sandboxes", org, "*")).toBe(first);
    // A claim anywhere drops every cached list: the next list sees it.
    await core.resources.claim({ kind: "sandboxes", id: "sbx-list-2" }, { org, namespace: "default", keyId: "key_l" });
    expect(core.resources.cache.getIds("sandboxes", org, "*")).toBeUndefined();
    expect([...(await core.resources.liveIds("sandboxes", { org, namespace: "*" }))].sort()).toEqual(["sbx-list-1", "sbx-list-2"]);
    await core.resources.release({ kind: "sandboxes", id: "sbx-list-1" });
    expect([...(await core.resources.liveIds("sandboxes", { org, namespace: "*" }))]).toEqual(["sbx-list-2"]);
    // And a change announced by another instance (NOTIFY) does the same.
    await core.resources.liveIds("sandboxes", { org, namespace: "*" });
    applyResourceChange(core.resources.cache, "sandboxes/sbx-elsewhere");
    expect(core.resources.cache.getIds("sandboxes", org, "*")).toBeUndefined();
  });
});
