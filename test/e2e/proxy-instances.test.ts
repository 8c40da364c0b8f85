import { Sandbox, type SandboxOpts } from "e2b";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDataDir, TEST_DATABASE_URL, type TestDataDir } from "../support/database.js";
import { startE2bStub, type E2bStub } from "../support/e2b-stub.js";
import { createKey, startServerProcess, stopAll, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { proxyUrlOf } from "../support/proxy-env.js";

/**
 * Two proxies over one Postgres, in front of one Cube: a sandbox created
 * through A is owned in B at once, and a kill through A frees it in B. Both
 * caches keep entries (owners and misses) for ten minutes here, so only the
 * ledger's change notification (LISTEN/NOTIFY) can explain B seeing the change
 * within 100 ms. On PGlite there is one process only: nothing to test.
 */

const SLOW_CACHES = { KEYGATE_KEY_CACHE_TTL: "10m", KEYGATE_NEGATIVE_CACHE_TTL: "10m" };
const WITHIN_MS = 100;

describe.skipIf(!TEST_DATABASE_URL)("two proxies, one Postgres: ownership propagates by notification", () => {
  let stub: E2bStub;
  let data: TestDataDir;
  let a: ServerProcess;
  let b: ServerProcess;
  let key: CreatedKeyJson;
  let other: CreatedKeyJson;

  beforeAll(async () => {
    stub = await startE2bStub();
    data = await createTestDataDir();
    const env = { ...data.env, ...SLOW_CACHES };
    const args = ["--upstream", stub.url, "--proxy-port", "0"];
    a = await startServerProcess(args, { cwd: data.dir, env });
    b = await startServerProcess(args, { cwd: data.dir, env });
    key = await createKey(["--org", "acme", "--role", "writer"], { cwd: data.dir, env });
    other = await createKey(["--org", "globex", "--role", "writer"], { cwd: data.dir, env });
  });

  afterAll(async () => {
    await stopAll(a, b);
    await stub?.close();
    await data?.dispose();
  });

  const get = async (server: ServerProcess, id: string, as: CreatedKeyJson) =>
    (await fetch(`${proxyUrlOf(server)}/sandboxes/${id}`, { headers: { "x-api-key": as.key } })).status;

  /** Polls B until `id` answers `status` for the key; the deadline starts when the change through A was answered. */
  async function seenInB(id: string, as: CreatedKeyJson, status: number): Promise<number> {
    const started = performance.now();
    let last = await get(b, id, as);
    while (last !== status && performance.now() - started < WITHIN_MS) last = await get(b, id, as);
    expect(last, `B answers ${status} within ${WITHIN_MS} ms`).toBe(status);
    return performance.now() - started;
  }

  it("created through A: owned in B within 100 ms (B had cached it as nobody's)", async () => {
    const id = "sbx-shared-1";
    // B remembers the id as owned by nobody (a 404, cached for ten minutes).
    expect(await get(b, id, key)).toBe(404);
    stub.nextIds.push(id);
    const opts: SandboxOpts = { apiKey: key.key, apiUrl: proxyUrlOf(a), retries: 0 };
    expect((await Sandbox.create("base", opts)).sandboxId).toBe(id);
    await seenInB(id, key, 200);
    // Still nobody else's.
    expect(await get(b, id, other)).toBe(404);
  });

  it("killed through A: released in B within 100 ms (B had cached the owner)", async () => {
    const id = "sbx-shared-1";
    expect(await get(b, id, key)).toBe(200);
    const opts: SandboxOpts = { apiKey: key.key, apiUrl: proxyUrlOf(a), retries: 0 };
    expect(await Sandbox.kill(id, opts)).toBe(true);
    await seenInB(id, key, 404);
  });
});
