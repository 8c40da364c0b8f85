import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { HeaderValueOption_HeaderAppendAction } from "../../gen/envoy/config/core/v3/base_pb.js";
import { CheckRequestSchema, type CheckResponse } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import type { Decision } from "../../src/core/authorize/decision.js";
import { checkRequestInput, clientAddress, headerReader, pathOnly } from "../../src/entries/extauthz/check-request.js";
import { checkResponseFor } from "../../src/entries/extauthz/check-response.js";
import { DEFAULT_TRUSTED_PROXIES, type ClientIpRules } from "../../src/config/config.js";
import { parseAddressList } from "../../src/core/request/address.js";

/** Envoy's CheckRequest → keygate's question, and a decision → CheckResponse, without a server. */

function trusting(proxies: string): ClientIpRules {
  const parsed = parseAddressList(proxies);
  if (!parsed.ok) throw new Error(parsed.error);
  return { header: undefined, trusted: parsed.list };
}

const RULES = { credentialPriority: ["authorization", "x-api-key"] as const, clientIp: trusting(DEFAULT_TRUSTED_PROXIES) };

describe("the path: the raw request target without query string or fragment", () => {
  it.each([
    ["/sandboxes", "/sandboxes"],
    ["/sandboxes/abc?force=true", "/sandboxes/abc"],
    ["/sandboxes/abc?next=/templates#x", "/sandboxes/abc"],
    ["/sandboxes/abc#frag?x", "/sandboxes/abc"],
    ["/sandboxes/a%2Fb?x", "/sandboxes/a%2Fb"], // left encoded: the authorizer denies it
    ["?only=query", ""],
    ["", ""],
  ])("%s → %s", (target, path) => {
    expect(pathOnly(target)).toBe(path);
  });
});

describe("headers", () => {
  it("reads the headers map case-insensitively", () => {
    const header = headerReader(create(CheckRequestSchema, { attributes: { request: { http: { headers: { "X-Api-Key": "k1", ":path": "/x" } } } } }).attributes!.request!.http);
    expect(header("x-api-key")).toBe("k1");
    expect(header(":path")).toBe("/x");
    expect(header("authorization")).toBeUndefined();
  });

  it("reads header_map (encode_raw_headers), raw bytes first, repeated names joined with ', '", () => {
    const http = create(CheckRequestSchema, {
      attributes: {
        request: {
          http: {
            headerMap: {
              headers: [
                { key: "authorization", rawValue: new TextEncoder().encode("Bearer one") },
                { key: "Authorization", value: "Bearer two" },
                { key: "x-request-org", rawValue: new TextEncoder().encode("acme") },
              ],
            },
          },
        },
      },
    }).attributes!.request!.http;
    const header = headerReader(http);
    expect(header("authorization")).toBe("Bearer one, Bearer two");
    expect(header("x-request-org")).toBe("acme");
  });
});

describe("the client's address for the failed-auth guard", () => {
  it.each([
    ["a trusted peer (Envoy on loopback): the source attribute", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", "203.0.113.7", "203.0.113.7"],
    ["a trusted v4-mapped peer, a v4-mapped attribute", DEFAULT_TRUSTED_PROXIES, "::ffff:127.0.0.1", "::ffff:203.0.113.7", "203.0.113.7"],
    ["a trusted CIDR", "10.0.0.0/8", "10.1.2.3", "2001:db8::9", "2001:db8::9"],
    ["an untrusted peer: the peer, whatever it claims", "10.0.0.0/8", "198.51.100.4", "203.0.113.7", "198.51.100.4"],
    ["a trusted peer without the attribute: the peer", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", undefined, "127.0.0.1"],
    ["a trusted peer with a garbage attribute: the peer", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", "not-an-ip", "127.0.0.1"],
  ] as const)("%s", (_, proxies, peer, attribute, expected) => {
    expect(clientAddress(trusting(proxies), peer, attribute)).toBe(expected);
  });

  it("no peer (a Unix socket): unknown", () => {
    expect(clientAddress(trusting(DEFAULT_TRUSTED_PROXIES), undefined, "203.0.113.7")).toBeUndefined();
  });
});

describe("CheckRequest → the authorizer's input", () => {
  const request = (extra: { headers?: Record<string, string>; context?: Record<string, string> } = {}) =>
    create(CheckRequestSchema, {
      attributes: {
        source: { address: { address: { case: "socketAddress", value: { address: "203.0.113.7", portSpecifier: { case: "portValue", value: 51000 } } } } },
        request: { http: { method: "DELETE", path: "/sandboxes/sbx-1?force=1", headers: { authorization: "Bearer sk-sb-secret", ...extra.headers } } },
        contextExtensions: extra.context ?? {},
      },
    });

  it("reads method, path (no query), credential and source", () => {
    expect(checkRequestInput(request(), RULES, "127.0.0.1")).toEqual({
      entry: "ext_authz",
      source: "203.0.113.7",
      credential: "sk-sb-secret",
      path: "/sandboxes/sbx-1",
      method: "DELETE",
      namespace: "",
      org: "",
    });
  });

  it("namespace and org: the route's context_extensions over the client's headers", () => {
    const headers = { "x-request-namespace": "from-client", "x-request-org": "client-org" };
    expect(checkRequestInput(request({ headers }), RULES, "127.0.0.1")).toMatchObject({ namespace: "from-client", org: "client-org" });
    expect(checkRequestInput(request({ headers, context: { namespace: "team-a", org: "acme" } }), RULES, "127.0.0.1")).toMatchObject({ namespace: "team-a", org: "acme" });
  });

  it("x-api-key first when so configured", () => {
    const input = checkRequestInput(request({ headers: { "x-api-key": "from-x-api-key" } }), { ...RULES, credentialPriority: ["x-api-key", "authorization"] }, "127.0.0.1");
    expect(input.credential).toBe("from-x-api-key");
  });

  it("no HTTP attributes (a network filter): nothing to allow", () => {
    expect(checkRequestInput(create(CheckRequestSchema), RULES, undefined)).toEqual({ entry: "ext_authz", credential: "", path: "", method: "", namespace: "", org: "" });
  });
});

describe("decision → CheckResponse", () => {
  const key = { id: "key_1", name: "k", org: "acme", namespace: "*", roles: ["reader"] };
  const headersOf = (headers: { header?: { key: string; value: string }; appendAction: number; append?: unknown }[]) =>
    Object.fromEntries(headers.map((h) => [h.header!.key, h.header!.value]));
  const denied = (response: CheckResponse) => {
    if (response.httpResponse.case !== "deniedResponse") throw new Error(`expected a denied response, got ${response.httpResponse.case}`);
    return response.httpResponse.value;
  };

  it("allow: OK, X-Auth-User set (overwriting, append unset), RateLimit-* to the client, ids as dynamic metadata", () => {
    const response = checkResponseFor({ allowed: true, reason: "allowed", message: "", key, matchedRule: "policy.csv:7", rateLimit: { limit: 10, remaining: 9, resetSeconds: 60 } });
    expect(response.status?.code).toBe(0);
    if (response.httpResponse.case !== "okResponse") throw new Error("expected an ok response");
    const ok = response.httpResponse.value;
    expect(ok.headers).toHaveLength(1);
    expect(ok.headers[0]).toMatchObject({ header: { key: "x-auth-user", value: "key_1" }, appendAction: HeaderValueOption_HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD });
    expect(ok.headers[0]!.append).toBeUndefined();
    expect(headersOf(ok.responseHeadersToAdd)).toEqual({ "ratelimit-limit": "10", "ratelimit-remaining": "9", "ratelimit-reset": "60" });
    expect(ok.headersToRemove).toEqual([]);
    expect(response.dynamicMetadata).toEqual({ key_id: "key_1", org: "acme", matched_rule: "policy.csv:7" });
  });

  it("allow in dev mode (no key): X-Auth-User dev-mode, no metadata", () => {
    const response = checkResponseFor({ allowed: true, reason: "allowed", message: "", matchedRule: "" });
    if (response.httpResponse.case !== "okResponse") throw new Error("expected an ok response");
    expect(headersOf(response.httpResponse.value.headers)).toEqual({ "x-auth-user": "dev-mode" });
    expect(response.dynamicMetadata).toBeUndefined();
  });

  it.each([
    ["missing_credential", "missing API key in Authorization header", 401, 16],
    ["invalid_key", "invalid API key", 401, 16],
    ["revoked", "API key has been revoked", 401, 16],
    ["expired", "API key has expired", 401, 16],
    ["forbidden", "API key is not allowed to DELETE /sandboxes/x", 403, 7],
    ["bad_request", 'path contains a ".." segment', 403, 7],
    ["unavailable", "authorization unavailable", 503, 14],
  ] as const)("%s → HTTP %i, google.rpc code %i, JSON body", (reason, message, status, code) => {
    const response = checkResponseFor({ allowed: false, reason, message, matchedRule: "" } satisfies Decision);
    expect(response.status).toMatchObject({ code, message });
    const deny = denied(response);
    expect(deny.status?.code).toBe(status);
    expect(JSON.parse(deny.body)).toEqual({ code: status, message });
    expect(headersOf(deny.headers)).toEqual({ "content-type": "application/json", "cache-control": "no-store" });
    for (const h of deny.headers) expect(h.appendAction).toBe(HeaderValueOption_HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD);
  });

  it("rate limited → 429, RESOURCE_EXHAUSTED, Retry-After and RateLimit-*", () => {
    const response = checkResponseFor({ allowed: false, reason: "rate_limited", message: "rate limit exceeded", matchedRule: "", key, rateLimit: { limit: 2, remaining: 0, resetSeconds: 42 } });
    expect(response.status?.code).toBe(8);
    const deny = denied(response);
    expect(deny.status?.code).toBe(429);
    expect(headersOf(deny.headers)).toEqual({
      "content-type": "application/json",
      "cache-control": "no-store",
      "retry-after": "42",
      "ratelimit-limit": "2",
      "ratelimit-remaining": "0",
      "ratelimit-reset": "42",
    });
    expect(JSON.parse(deny.body)).toEqual({ code: 429, message: "rate limit exceeded" });
  });
});
