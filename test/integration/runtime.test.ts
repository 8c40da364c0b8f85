import { readdirSync } from "node:fs";
import { resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readRuntimeConfig, type RuntimeConfig } from "../../src/config/config.js";
import type { StoreTarget } from "../../src/core/db/connect.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { createTestStoreTarget, testDatabaseKind } from "../support/database.js";
import { createFakeClock, HOUR, LOCAL, POLICY_DIR, unwrap } from "./test-core.js";

/**
 * The core as `serve` and the local CLI get it from openRuntime: one key
 * cache shared by decisions and key management, one clock, one usage
 * recorder. The other integration files wire the same parts by hand.
 */

const clock = createFakeClock();
let runtime: Runtime;
let drop: (() => Promise<void>) | undefined;

async function target(): Promise<StoreTarget> {
  const created = await createTestStoreTarget(5);
  drop = created.drop;
  return created.target;
}

beforeAll(async () => {
  const read = readRuntimeConfig({ "policy-dir": POLICY_DIR }, {}, process.cwd());
  if (!read.ok) throw new Error(read.errors.join("; "));
  const config: RuntimeConfig = { ...read.config, usageFlushMs: HOUR };
  runtime = await openRuntime(config, { now: clock.now, storeTarget: await target() });
});

afterAll(async () => {
  await runtime?.close();
  await drop?.();
});

describe(`openRuntime on ${testDatabaseKind}`, () => {
  it("opens the store the suite targets, migrated to the latest schema", () => {
    expect(runtime.store.kind).toBe(testDatabaseKind);
    // The newest migration file, by name.
    const newest = readdirSync(resolve(import.meta.dirname, "../../src/core/db/migrations")).sort().at(-1)!.replace(/\.ts$/, "");
    expect(runtime.migration.current).toBe(newest);
    expect(runtime.dev).toBe(false);
  });

  it("decisions and key management share one cache: a revoke stops a cached key at once", async () => {
    const { key, plaintext } = unwrap(await runtime.keys.create(LOCAL, { org: "rt", roles: ["reader"] }));
    const ask = () => runtime.authorize({ credential: plaintext, method: "GET", path: "/sandboxes", namespace: "", org: "" });
    expect(await ask()).toMatchObject({ allowed: true, matchedRule: expect.stringMatching(/^policy\.csv:\d+$/) });
    expect(runtime.cache.size).toBeGreaterThan(0);
    unwrap(await runtime.keys.revoke(LOCAL, key.id));
    expect(await ask()).toMatchObject({ allowed: false, reason: "revoked", message: "API key has been revoked" });
  });

  it("the injected clock decides expiry and last use", async () => {
    const { key, plaintext } = unwrap(await runtime.keys.create(LOCAL, { org: "rt", expiry: { kind: "in", duration: "1h" } }));
    expect(key.expiresAt).toEqual(new Date(clock.now().getTime() + HOUR));
    const ask = () => runtime.authorize({ credential: plaintext, method: "GET", path: "/sandboxes", namespace: "", org: "" });
    expect((await ask()).allowed).toBe(true);
    const usedAt = clock.now();
    await runtime.usage.flush();
    expect(unwrap(await runtime.keys.get(LOCAL, key.id)).lastUsedAt).toEqual(usedAt);
    clock.advance(HOUR);
    expect(await ask()).toMatchObject({ allowed: false, reason: "expired" });
  });
});
