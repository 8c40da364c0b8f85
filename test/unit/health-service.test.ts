import { Code, ConnectError, createClient, createRouterTransport, type Client } from "@connectrpc/connect";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/grpc/health/v1/health_pb.js";
import { createHealthService } from "../../src/entries/rpc/health-service.js";
import type { Readiness } from "../../src/core/authorize/readiness.js";

/**
 * grpc.health.v1.Health over a fake readiness check, in memory, on a fake
 * clock: Check and List follow readiness, Watch sends the current status and
 * then each change, and one poller serves every watcher and stops with the last.
 */

const POLL_MS = 2_000;
const SERVICES = ["keygate.v1.AuthorizeService", "keygate.v1.KeyService"];

function readinessOf(ready: boolean): Readiness {
  return { ready, checks: { database: { ok: ready }, policy: { ok: true, version: "v1" } } };
}

let ready: boolean;
let checks: number;
let shutdown: AbortController;
let client: Client<typeof Health>;

beforeEach(() => {
  vi.useFakeTimers();
  ready = true;
  checks = 0;
  shutdown = new AbortController();
  const readiness = async () => {
    checks++;
    return readinessOf(ready);
  };
  const impl = createHealthService({ services: SERVICES, readiness, shutdown: shutdown.signal, pollMs: POLL_MS });
  client = createClient(Health, createRouterTransport(({ service }) => service(Health, impl)));
});

afterEach(() => {
  vi.useRealTimers();
});

/** The next message of a Watch stream. */
async function next(stream: AsyncIterator<{ status: ServingStatus }>): Promise<ServingStatus | "ended"> {
  const result = await stream.next();
  return result.done ? "ended" : result.value.status;
}

describe("Check", () => {
  it.each(["", ...SERVICES])("'%s' is SERVING while ready, NOT_SERVING when not", async (service) => {
    expect((await client.check({ service })).status).toBe(ServingStatus.SERVING);
    ready = false;
    expect((await client.check({ service })).status).toBe(ServingStatus.NOT_SERVING);
  });

  it("an unknown service is NOT_FOUND", async () => {
    const error = await client.check({ service: "no.such.Service" }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConnectError);
    expect((error as ConnectError).code).toBe(Code.NotFound);
  });

  it("a readiness check that throws is NOT_SERVING", async () => {
    const impl = createHealthService({ services: [], readiness: () => Promise.reject(new Error("boom")) });
    const failing = createClient(Health, createRouterTransport(({ service }) => service(Health, impl)));
    expect((await failing.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
  });

  it("is NOT_SERVING once shutdown has begun, without asking readiness", async () => {
    shutdown.abort();
    const before = checks;
    expect((await client.check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    expect(checks).toBe(before);
  });
});

describe("List", () => {
  it("lists the server and every service with one status", async () => {
    ready = false;
    const { statuses } = await client.list({});
    expect(Object.keys(statuses).sort()).toEqual(["", ...SERVICES].sort());
    for (const response of Object.values(statuses)) expect(response.status).toBe(ServingStatus.NOT_SERVING);
  });
});

describe("Watch", () => {
  it("sends the current status at once, then every change, and nothing when nothing changes", async () => {
    const abort = new AbortController();
    const stream = client.watch({ service: "" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect(await next(stream)).toBe(ServingStatus.SERVING);

    ready = false;
    const changed = next(stream);
    await vi.advanceTimersByTimeAsync(POLL_MS);
    expect(await changed).toBe(ServingStatus.NOT_SERVING);

    // Several polls with the same status send nothing; the next change does.
    const back = next(stream);
    await vi.advanceTimersByTimeAsync(POLL_MS * 3);
    ready = true;
    await vi.advanceTimersByTimeAsync(POLL_MS);
    expect(await back).toBe(ServingStatus.SERVING);
    abort.abort();
  });

  it("an unknown service: SERVICE_UNKNOWN, and the call stays open", async () => {
    const abort = new AbortController();
    const stream = client.watch({ service: "no.such.Service" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect(await next(stream)).toBe(ServingStatus.SERVICE_UNKNOWN);
    const pending = next(stream).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(POLL_MS * 5);
    abort.abort();
    expect(await pending).toBeInstanceOf(ConnectError);
  });

  it("one poller serves every watcher, and stops with the last one", async () => {
    const watchers = [new AbortController(), new AbortController(), new AbortController()];
    const streams = watchers.map((a) => client.watch({ service: "" }, { signal: a.signal })[Symbol.asyncIterator]());
    for (const stream of streams) expect(await next(stream)).toBe(ServingStatus.SERVING);

    const afterFirst = checks;
    await vi.advanceTimersByTimeAsync(POLL_MS * 5);
    expect(checks - afterFirst).toBe(5); // one check per interval, not one per watcher

    for (const watcher of watchers) watcher.abort();
    await vi.advanceTimersByTimeAsync(POLL_MS); // lets the streams wind down
    const idle = checks;
    await vi.advanceTimersByTimeAsync(POLL_MS * 10);
    expect(checks).toBe(idle);
  });

  it("on shutdown: NOT_SERVING, then the stream ends", async () => {
    const stream = client.watch({ service: "keygate.v1.KeyService" })[Symbol.asyncIterator]();
    expect(await next(stream)).toBe(ServingStatus.SERVING);
    shutdown.abort();
    expect(await next(stream)).toBe(ServingStatus.NOT_SERVING);
    expect(await next(stream)).toBe("ended");
  });
});
