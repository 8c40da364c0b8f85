import { performance } from "node:perf_hooks";
import { createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason, type AuthorizeResponse } from "../../gen/keygate/v1/authorize_pb.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { grpcClient } from "../support/grpc-js.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * The failed-auth guard through the real server's RPC door: Authorize over
 * Connect (HTTP/1.1) and over gRPC (h2c: connect-node's gRPC transport and
 * grpc-js). test/e2e/decision-log-guard.test.ts covers the Cube callback.
 *
 * The server guards every address (KEYGATE_AUTH_GUARD_EXEMPT=none, so
 * loopback too) with a limit of 5 per minute: 5 invalid keys from one
 * address are answered at once, the next 5 after 25, 50, 100, 200 and 400 ms
 * (README, "Failed-auth guard"), every one after that is refused. A valid
 * key the cache knows from that address is still decided as usual; one it
 * does not know is refused before any lookup (failed-auth-guard.ts: the
 * guard decides before the database). The cache holds keys for an hour here
 * (KEYGATE_KEY_CACHE_TTL), so the warm key stays warm on a slow machine.
 *
 * It also believes X-Forwarded-For from loopback (the default trusted
 * proxies), which gives each client its own address; without the header,
 * the address is the TCP peer, 127.0.0.1, whichever protocol is used.
 */

const SOFT = 5;
const HARD = 2 * SOFT;
const REFUSED_MESSAGE = "too many invalid API keys from this address";
/** The guard's delay for the n-th invalid key past SOFT: 25 ms, doubling, at most 1 s. */
const delayFor = (excess: number) => Math.min(1_000, 25 * 2 ** (excess - 1));
/** Timers may fire a millisecond early; the measured time also includes the request. */
const TIMER_SLACK_MS = 3;

let data: TestDataDir;
let server: ServerProcess;
let reader: CreatedKeyJson;
/** A valid key never decided: not in the cache. */
let unseen: CreatedKeyJson;
let h2: Http2SessionManager;
let grpcJs: GrpcAuthorizeClient;

beforeAll(async () => {
  data = await createTestDataDir();
  const env = { ...data.env, KEYGATE_AUTH_FAIL_LIMIT: `${SOFT}/1m`, KEYGATE_AUTH_GUARD_EXEMPT: "none", KEYGATE_KEY_CACHE_TTL: "1h" };
  server = await startServerProcess(["--trusted-proxy-header", "X-Forwarded-For"], { cwd: data.dir, env });
  reader = await createKey(["--org", "acme", "--role", "reader", "--name", "guarded-reader"], { cwd: data.dir, env });
  unseen = await createKey(["--org", "acme", "--role", "reader", "--name", "unseen-reader"], { cwd: data.dir, env });
  h2 = new Http2SessionManager(server.url);
  grpcJs = createGrpcJsClient(server.port);
  // The reader's key is decided once, from an address that never guesses: the cache knows it.
  expect((await connectH1(reader.key, "GET", "203.0.113.250")).allowed).toBe(true);
});

afterAll(async () => {
  grpcJs?.close();
  h2?.abort();
  const code = await server?.stop();
  await data?.dispose();
  expect(code).toBe(0);
});

// --- clients ------------------------------------------------------------------------

/** A decision as it came over the wire, whichever client read it. */
interface WireDecision {
  allowed: boolean;
  reason: string;
  message: string;
  keyId: string | null;
  rateLimit: { limit: number; remaining: number; resetSeconds: number } | null;
}

/** Authorize `credential` for GET|DELETE /sandboxes/abc, from `forwardedFor` (or the peer, when undefined). */
type AuthorizeCall = (credential: string, method: string, forwardedFor: string | undefined) => Promise<WireDecision>;

function fromProtobufEs(response: AuthorizeResponse): WireDecision {
  return {
    allowed: response.allowed,
    reason: `REASON_${Reason[response.reason]}`,
    message: response.message,
    keyId: response.key?.id ?? null,
    rateLimit: response.rateLimit ? { limit: response.rateLimit.limit, remaining: response.rateLimit.remaining, resetSeconds: response.rateLimit.resetSeconds } : null,
  };
}

function viaTransport(transport: () => Transport): AuthorizeCall {
  return async (credential, method, forwardedFor) => {
    const client = createClient(AuthorizeService, transport());
    const headers: Record<string, string> = forwardedFor === undefined ? {} : { "x-forwarded-for": forwardedFor };
    return fromProtobufEs(await client.authorize({ credential, path: "/sandboxes/abc", method, namespace: "", org: "" }, { headers }));
  };
}

interface GrpcJsResponse {
  allowed: boolean;
  reason: string;
  message: string;
  key: { id: string } | null;
  rate_limit: { limit: number; remaining: number; reset_seconds: number } | null;
}
type GrpcAuthorizeClient = grpc.Client & {
  authorize(request: object, metadata: grpc.Metadata, callback: (error: grpc.ServiceError | null, response: GrpcJsResponse) => void): void;
};

/** grpc-js with proto-loader on the .proto file: the client a non-TypeScript team would write. */
function createGrpcJsClient(port: number): GrpcAuthorizeClient {
  return grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", port) as unknown as GrpcAuthorizeClient;
}

const viaGrpcJs: AuthorizeCall = (credential, method, forwardedFor) =>
  new Promise((done, fail) => {
    const metadata = new grpc.Metadata();
    if (forwardedFor !== undefined) metadata.set("x-forwarded-for", forwardedFor);
    grpcJs.authorize({ credential, path: "/sandboxes/abc", method }, metadata, (error, response) => {
      if (error) return fail(error);
      const limit = response.rate_limit;
      done({
        allowed: response.allowed,
        reason: response.reason,
        message: response.message,
        keyId: response.key?.id ?? null,
        rateLimit: limit ? { limit: limit.limit, remaining: limit.remaining, resetSeconds: limit.reset_seconds } : null,
      });
    });
  });

const connectH1 = viaTransport(() => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
const grpcConnect = viaTransport(() => createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }));

// --- expectations --------------------------------------------------------------------

const INVALID: WireDecision = { allowed: false, reason: "REASON_INVALID_KEY", message: "invalid API key", keyId: null, rateLimit: null };

function refused(): WireDecision {
  return {
    allowed: false,
    reason: "REASON_RATE_LIMITED",
    message: REFUSED_MESSAGE,
    keyId: null,
    rateLimit: { limit: HARD, remaining: 0, resetSeconds: expect.any(Number) as unknown as number },
  };
}

/** Made-up keys: well-formed ones (a database lookup) alternating with malformed ones (none). */
function guesses(count: number, tag: string): string[] {
  return Array.from({ length: count }, (_, i) => (i % 2 === 0 ? generateKey() : `sk-sb-guess-${tag}-${i}`));
}

interface Timed {
  decision: WireDecision;
  ms: number;
}

async function timed(call: () => Promise<WireDecision>): Promise<Timed> {
  const start = performance.now();
  const decision = await call();
  return { decision, ms: performance.now() - start };
}

/** Answered normally, then slowed by at least the guard's delay, then refused with a reset within the window. */
function expectAnsweredSlowedRefused(answers: Timed[]): void {
  expect(answers.map((answer) => answer.decision)).toEqual([...Array(HARD).fill(INVALID), ...Array(answers.length - HARD).fill(refused())]);
  answers.slice(SOFT, HARD).forEach(({ ms }, i) => expect(ms, `invalid key ${SOFT + i + 1} waited`).toBeGreaterThanOrEqual(delayFor(i + 1) - TIMER_SLACK_MS));
  for (const { decision } of answers.slice(HARD)) {
    expect(decision.rateLimit!.resetSeconds).toBeGreaterThanOrEqual(1);
    expect(decision.rateLimit!.resetSeconds).toBeLessThanOrEqual(60);
  }
}

// --- tests --------------------------------------------------------------------------

const CLIENTS: [name: string, call: () => AuthorizeCall, address: string][] = [
  ["Connect over HTTP/1.1", () => connectH1, "198.51.100.1"],
  ["gRPC (connect-node, h2c)", () => grpcConnect, "198.51.100.2"],
  ["gRPC (grpc-js, h2c)", () => viaGrpcJs, "198.51.100.3"],
];

describe.each(CLIENTS)("guessing keys over %s, from a client address forwarded by a trusted proxy", (name, client, address) => {
  it("invalid keys are answered, then slowed, then refused with the guard's reason and message", async () => {
    const call = client();
    const answers: Timed[] = [];
    for (const key of guesses(HARD + 4, name)) answers.push(await timed(() => call(key, "GET", address)));
    expectAnsweredSlowedRefused(answers);
  });

  it("a valid key the cache knows is still decided as usual from the same address; one it does not know is refused", async () => {
    const call = client();
    expect(await call(unseen.key, "GET", address)).toEqual(refused());
    expect(await call(reader.key, "GET", address)).toEqual({ allowed: true, reason: "REASON_ALLOWED", message: "", keyId: reader.id, rateLimit: null });
    expect(await call(reader.key, "DELETE", address)).toEqual({
      allowed: false,
      reason: "REASON_FORBIDDEN",
      message: "API key is not allowed to DELETE /sandboxes/abc",
      keyId: reader.id,
      rateLimit: null,
    });
    // A valid key does not reset the count: the address is still refused for the next guess.
    expect(await call(generateKey(), "GET", address)).toEqual(refused());
  });

  it("other addresses are counted apart: a guess from another client is answered normally", async () => {
    const other = address.replace(/\.(\d+)$/, (_, last: string) => `.${Number(last) + 100}`);
    expect(await client()(generateKey(), "GET", other)).toEqual(INVALID);
  });
});

describe("guessing keys without a proxy header: the address is the TCP peer, whatever the protocol", () => {
  it("invalid keys over Connect and over gRPC add up for 127.0.0.1; both are refused, and its valid key is allowed over both", async () => {
    const answers: Timed[] = [];
    const keys = guesses(HARD + 2, "peer");
    // Half over Connect, half over gRPC, one count: the slowing starts on gRPC where Connect left off.
    for (const [i, key] of keys.entries()) answers.push(await timed(() => (i < SOFT ? connectH1 : grpcConnect)(key, "GET", undefined)));
    expectAnsweredSlowedRefused(answers);
    for (const call of [connectH1, grpcConnect, viaGrpcJs]) {
      expect(await call(generateKey(), "GET", undefined)).toEqual(refused());
      expect(await call(unseen.key, "GET", undefined)).toEqual(refused());
      expect(await call(reader.key, "GET", undefined)).toMatchObject({ allowed: true, reason: "REASON_ALLOWED", keyId: reader.id });
    }
  });
});
