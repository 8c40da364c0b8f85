import { describe, expect, it } from "vitest";
import { clientResponseHeaders, takeQueryCredentials, upstreamRequestHeaders } from "../../src/entries/proxy/forward-headers.js";
import { createdIds, filterList, stampCreateBody } from "../../src/entries/proxy/sandbox-bodies.js";
import { parseRoutes } from "../../src/core/policy/policy-routes.js";
import { sandboxRoute } from "../../src/entries/proxy/sandbox-routes.js";

/**
 * What the proxy does to a request and an answer besides forwarding them, as
 * decision tables: which routes it reads (on the path as the core decides
 * on it, so no spelling of a list escapes the filter), which headers cross,
 * what a create's body and answer become. The whole proxy is
 * test/e2e/proxy.test.ts.
 */

describe("sandboxRoute: the routes the proxy reads", () => {
  // The shipped routes.yaml's prefix.
  const { strip } = parseRoutes("prefixes: [/cubeapi/v1]\n").routes;
  it.each([
    ["POST", "/sandboxes", { kind: "create" }],
    ["POST", "/v2/sandboxes", { kind: "create" }],
    ["POST", "/cubeapi/v1/sandboxes", { kind: "create" }],
    ["POST", "/cubeapi/v1/v2/sandboxes/", { kind: "create" }],
    ["POST", "/sandboxes/sbx-1/fork", { kind: "fork", id: "sbx-1" }],
    ["POST", "/cubeapi/v1/sandboxes/sbx-1/fork", { kind: "fork", id: "sbx-1" }],
    ["POST", "/v2/sandboxes/sbx-1/fork", { kind: "other" }],
    ["GET", "/sandboxes", { kind: "list" }],
    ["GET", "/v2/sandboxes", { kind: "list" }],
    ["GET", "//sandboxes//", { kind: "list" }],
    ["GET", "/%73andboxes", { kind: "list" }],
    ["GET", "/cubeapi/v1/sandboxes", { kind: "list" }],
    ["get", "/sandboxes", { kind: "list" }],
    ["HEAD", "/sandboxes", { kind: "other" }],
    ["DELETE", "/sandboxes/sbx-1", { kind: "delete", id: "sbx-1" }],
    ["DELETE", "/cubeapi/v1/sandboxes/sbx-1", { kind: "delete", id: "sbx-1" }],
    ["DELETE", "/v2/sandboxes/sbx-1", { kind: "delete", id: "sbx-1" }],
    ["GET", "/sandboxes/sbx-1", { kind: "other" }],
    ["GET", "/sandboxes/sbx-1/logs", { kind: "other" }],
    ["GET", "/templates", { kind: "other" }],
    ["GET", "/sandboxes/../sandboxes", { kind: "other" }], // refused by the core anyway
  ])("%s %s", (method, path, route) => {
    expect(sandboxRoute(method, path, strip)).toEqual(route);
  });
});

describe("takeQueryCredentials: as CubeAPI's websocket_auth reads them, the rest kept byte for byte", () => {
  it.each([
    ["", undefined, undefined, ""],
    ["cols=80&rows=24", undefined, undefined, "cols=80&rows=24"],
    ["api_key=sk-sb-abc&cols=80", "sk-sb-abc", undefined, "cols=80"],
    ["cols=80&access_token=tok%2Bx&rows=2", undefined, "tok+x", "cols=80&rows=2"],
    ["api_key=a&api_key=b", "a", undefined, ""],
    ["api%5Fkey=a&x=%41", "a", undefined, "x=%41"],
    ["q=a+b&access_token=t", undefined, "t", "q=a+b"],
  ])("%j", (query, apiKey, accessToken, rest) => {
    expect(takeQueryCredentials(query)).toEqual({ apiKey, accessToken, query: rest });
  });
});

describe("upstreamRequestHeaders", () => {
  const key = { id: "key_1", name: "ci bot", org: "acme", namespace: "*", roles: ["writer"] };
  const base = { peer: "10.0.0.9", trustedPeer: false, key };
  const pairs = (flat: string[]) => Array.from({ length: flat.length / 2 }, (_, i) => [flat[2 * i]!.toLowerCase(), flat[2 * i + 1]!]);

  it("drops hop-by-hop headers, those Connection names, credentials and forged identity; keeps the rest in order", () => {
    const raw = [
      "Host", "proxy.example", "Connection", "keep-alive, X-Secret-Hop", "Keep-Alive", "timeout=5", "X-Secret-Hop", "1",
      "Authorization", "Bearer sk-sb-x", "X-API-Key", "sk-sb-y", "X-User-ID", "forged", "x-user-name", "forged",
      "TE", "trailers", "Upgrade", "h2c", "Proxy-Authorization", "Basic x", "X-Auth-User", "forged", "Accept", "a", "Cookie", "c=1", "Accept", "b",
    ];
    expect(pairs(upstreamRequestHeaders(raw, base))).toEqual([
      ["accept", "a"],
      ["cookie", "c=1"],
      ["accept", "b"],
      ["x-forwarded-for", "10.0.0.9"],
      ["x-forwarded-proto", "http"],
      ["x-forwarded-host", "proxy.example"],
      ["x-user-id", "key_1"],
      ["x-user-name", "ci bot"],
    ]);
  });

  it("X-Forwarded-*: a client's own are replaced; a trusted proxy's are kept, with the peer appended", () => {
    const raw = ["Host", "h", "X-Forwarded-For", "1.2.3.4", "X-Forwarded-Proto", "https", "X-Forwarded-Host", "api.example"];
    expect(pairs(upstreamRequestHeaders(raw, base)).filter(([n]) => n!.startsWith("x-forwarded"))).toEqual([
      ["x-forwarded-for", "10.0.0.9"],
      ["x-forwarded-proto", "http"],
      ["x-forwarded-host", "h"],
    ]);
    expect(pairs(upstreamRequestHeaders(raw, { ...base, trustedPeer: true })).filter(([n]) => n!.startsWith("x-forwarded"))).toEqual([
      ["x-forwarded-for", "1.2.3.4, 10.0.0.9"],
      ["x-forwarded-proto", "https"],
      ["x-forwarded-host", "api.example"],
    ]);
  });

  it("a rewritten body's length and the proxy's own headers replace the client's", () => {
    const raw = ["Content-Length", "2", "Content-Type", "text/plain", "Accept-Encoding", "gzip"];
    const out = pairs(upstreamRequestHeaders(raw, { ...base, key: undefined, contentLength: 40, extra: { "content-type": "application/json", "accept-encoding": "identity" } }));
    expect(out.slice(0, 3)).toEqual([
      ["content-length", "40"],
      ["content-type", "application/json"],
      ["accept-encoding", "identity"],
    ]);
    // Dev mode (no key): the callback's "dev-mode", no name.
    expect(out.filter(([n]) => n!.startsWith("x-user"))).toEqual([["x-user-id", "dev-mode"]]);
  });

  it("a key name goes upstream as the callback sends it to Cube: printable ASCII as is, else percent-encoded UTF-8", () => {
    const name = (keyName: string) => pairs(upstreamRequestHeaders([], { ...base, key: { ...key, name: keyName } })).filter(([n]) => n!.startsWith("x-user"));
    expect(name("ci bot (prod)")).toEqual([["x-user-id", "key_1"], ["x-user-name", "ci bot (prod)"]]);
    expect(name("équipe ☃")).toEqual([["x-user-id", "key_1"], ["x-user-name", "%C3%A9quipe %E2%98%83"]]);
    expect(name("")).toEqual([["x-user-id", "key_1"]]);
  });

  it("clientResponseHeaders drops hop-by-hop ones and those Connection names", () => {
    expect(clientResponseHeaders({ connection: "x-hop", "x-hop": "1", "transfer-encoding": "chunked", "keep-alive": "t", "set-cookie": ["a", "b"], "content-type": "application/json" })).toEqual({
      "set-cookie": ["a", "b"],
      "content-type": "application/json",
    });
  });
});

describe("a create's body and answer", () => {
  const owner = { org: "acme", namespace: "team-a" };
  const stamped = (text: string) => {
    const result = stampCreateBody(Buffer.from(text), owner);
    return result.ok ? { body: JSON.parse(result.body.toString()) as unknown, count: result.count } : result.message;
  };

  it.each([
    ["", { body: { metadata: { keygate_org: "acme", keygate_namespace: "team-a" } }, count: 1 }],
    ['{"templateID":"base"}', { body: { templateID: "base", metadata: { keygate_org: "acme", keygate_namespace: "team-a" } }, count: 1 }],
    ['{"metadata":{"keygate_org":"globex","a":"1"}}', { body: { metadata: { keygate_org: "acme", a: "1", keygate_namespace: "team-a" } }, count: 1 }],
    ['{"metadata":null,"count":3}', { body: { metadata: { keygate_org: "acme", keygate_namespace: "team-a" }, count: 3 }, count: 3 }],
    ["[]", "request body must be a JSON object"],
    ["null", "request body must be a JSON object"],
    ['{"metadata":[]}', "metadata must be a JSON object"],
    ['{"metadata":"x"}', "metadata must be a JSON object"],
    ["{", "request body is not valid JSON"],
  ])("stamp %j", (text, expected) => {
    expect(stamped(text)).toEqual(expected);
  });

  it.each([
    [{ sandboxID: "sbx-1", templateID: "base" }, ["sbx-1"]],
    [[{ sandbox: { sandboxID: "sbx-2" } }, { error: { code: 429, message: "x" } }, { sandbox: { sandboxID: "sbx-3" } }], ["sbx-2", "sbx-3"]],
    [[], []],
    [{ templateID: "base" }, undefined],
    [{ sandboxID: "" }, undefined],
    [[{ nothing: true }], undefined],
    ["sbx-1", undefined],
  ])("ids of %j", (answer, ids) => {
    expect(createdIds(answer)).toEqual(ids);
  });

  it("filterList keeps the visible ids only; anything but an array is unreadable", () => {
    const list = [{ sandboxID: "a" }, { sandboxID: "b" }, { id: "c" }, "d", null];
    expect(filterList(list, (id) => id === "b")).toEqual([{ sandboxID: "b" }]);
    expect(filterList({ sandboxes: list }, () => true)).toBeUndefined();
  });
});
