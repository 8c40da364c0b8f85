import { NO_ROUTES } from "../../src/core/policy/policy-routes.js";
import { describe, expect, it } from "vitest";
import { AUTH_FAIL_MESSAGE, createFailedAuthGuard, delayFor, MAX_DELAY_MS } from "../../src/core/authorize/failed-auth-guard.js";
import { createAuthorizer } from "../../src/core/authorize/authorizer.js";
import type { AuthorizeInput } from "../../src/core/authorize/decision.js";
import type { KeyLookup } from "../../src/core/keys/key-lookup.js";
import type { KeyRecord } from "../../src/core/keys/key-record.js";
import type { Policy } from "../../src/core/policy/policy.js";
import { createRateLimiter } from "../../src/core/ratelimit/rate-limiter.js";

/**
 * The failed-auth guard: invalid credentials from one address are slowed,
 * then refused; a valid key from that address is decided as usual.
 */

const VALID = "valid-key";
const KEY = { id: "key_1", name: "k", org: "acme", namespace: "*", roles: ["reader"], enabled: true, expiresAt: null } as unknown as KeyRecord;
const POLICY = { decide: () => ({ allowed: true, rule: "policy.csv:1" }), explain: () => [], routes: NO_ROUTES } as unknown as Policy;

function setup(limit = { points: 3, windowSeconds: 60 }, exempt?: (source: string) => boolean) {
  const delays: number[] = [];
  const lookups: string[] = [];
  /** Credentials the key cache holds (answered without a lookup). */
  const cached = new Set<string>();
  const guard = createFailedAuthGuard({
    rateLimiter: createRateLimiter({ keyPrefix: `t${Math.random()}` }),
    limit,
    sleep: async (ms) => void delays.push(ms),
    ...(exempt && { exempt }),
  });
  const authorize = createAuthorizer({
    lookupKey: async (credential): Promise<KeyLookup> => {
      lookups.push(credential);
      return credential === VALID ? { status: "ok", key: KEY } : { status: "invalid" };
    },
    knownKey: (credential) => (cached.has(credential) ? (credential === VALID ? { status: "ok", key: KEY } : { status: "invalid" }) : undefined),
    policy: () => POLICY,
    now: () => new Date(),
    guard,
  });
  const ask = (credential: string, source: string | null = "203.0.113.7") =>
    authorize({ credential, path: "/sandboxes", method: "GET", namespace: "", org: "", ...(source && { source }) } satisfies AuthorizeInput);
  return { ask, delays, lookups, cached };
}

describe("failed-auth guard", () => {
  it("an exempt source (default: loopback) is never slowed or refused", async () => {
    const { ask, delays } = setup({ points: 1, windowSeconds: 60 }, (source) => source === "127.0.0.1");
    const reasons: string[] = [];
    for (let i = 0; i < 6; i++) reasons.push((await ask(`bad-${i}`, "127.0.0.1")).reason);
    expect(reasons).toEqual(Array(6).fill("invalid_key"));
    expect(delays).toEqual([]);
    // Another source is still guarded by the same guard.
    for (let i = 0; i < 3; i++) await ask(`bad-${i}`);
    expect((await ask("bad-x")).reason).toBe("rate_limited");
  });

  it("delays grow from the threshold and are capped at 1 s", () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7, 100].map(delayFor)).toEqual([0, 25, 50, 100, 200, 400, 800, 1000, MAX_DELAY_MS]);
  });

  it("under the threshold: plain invalid_key, no delay; then delays; past twice the threshold: rate_limited", async () => {
    const { ask, delays } = setup();
    const reasons: string[] = [];
    for (let i = 0; i < 8; i++) reasons.push((await ask(`bad-${i}`)).reason);
    expect(reasons).toEqual(["invalid_key", "invalid_key", "invalid_key", "invalid_key", "invalid_key", "invalid_key", "rate_limited", "rate_limited"]);
    expect(delays).toEqual([25, 50, 100]);
  });

  it("a refusal says why, with a Retry-After (rate-limit status), and never names a key", async () => {
    const { ask } = setup({ points: 1, windowSeconds: 60 });
    for (let i = 0; i < 2; i++) await ask(`bad-${i}`);
    const refused = await ask("bad-x");
    expect(refused).toMatchObject({ allowed: false, reason: "rate_limited", message: AUTH_FAIL_MESSAGE, rateLimit: { remaining: 0 } });
    expect(refused.rateLimit!.resetSeconds).toBeGreaterThanOrEqual(1);
    expect(refused.key).toBeUndefined();
  });

  it("a blocked source: refused before any lookup; a valid key the cache knows is still allowed", async () => {
    const { ask, delays, lookups, cached } = setup({ points: 1, windowSeconds: 60 });
    for (let i = 0; i < 2; i++) await ask(`bad-${i}`);
    lookups.length = 0;
    delays.length = 0;
    expect((await ask("bad-again")).reason).toBe("rate_limited");
    // Not in the cache: refused with the guesses, and no lookup was made for either.
    expect((await ask(VALID)).reason).toBe("rate_limited");
    expect(lookups).toEqual([]);
    cached.add(VALID);
    const valid = await ask(VALID);
    expect(valid).toMatchObject({ allowed: true, reason: "allowed", key: { id: "key_1" } });
    expect((await ask("unknown-1")).reason).toBe("rate_limited");
    expect(lookups).toEqual([]);
    expect(delays).toEqual([]);
  });

  it("a credential known invalid without a lookup (malformed, remembered unknown) is counted without one", async () => {
    const { ask, delays, lookups, cached } = setup({ points: 1, windowSeconds: 60 });
    cached.add("bad-cached");
    const reasons: string[] = [];
    for (let i = 0; i < 3; i++) reasons.push((await ask("bad-cached")).reason);
    expect(reasons).toEqual(["invalid_key", "invalid_key", "rate_limited"]);
    expect(delays).toEqual([25]);
    expect(lookups).toEqual([]);
  });

  it("counts per source: another address is not affected", async () => {
    const { ask, delays } = setup({ points: 1, windowSeconds: 60 });
    for (let i = 0; i < 4; i++) await ask(`bad-${i}`, "198.51.100.1");
    expect((await ask("bad-0", "198.51.100.1")).reason).toBe("rate_limited");
    delays.length = 0;
    expect((await ask("bad-0", "198.51.100.2")).reason).toBe("invalid_key");
    expect(delays).toEqual([]);
  });

  it("valid keys never count as failures", async () => {
    const { ask } = setup({ points: 1, windowSeconds: 60 });
    for (let i = 0; i < 10; i++) expect((await ask(VALID)).allowed).toBe(true);
    expect((await ask("bad-0")).reason).toBe("invalid_key");
  });

  it("no source (the local CLI): never guarded", async () => {
    const { ask, delays } = setup({ points: 1, windowSeconds: 60 });
    for (let i = 0; i < 5; i++) expect((await ask(`bad-${i}`, null)).reason).toBe("invalid_key");
    expect(delays).toEqual([]);
  });
});
