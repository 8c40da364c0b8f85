import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KeyIdentity } from "../../src/core/authorize/decision.js";
import { writeDecision } from "../../src/http/decision-answer.js";
import { headerSafe, identityHeaders } from "../../src/http/identity-headers.js";

/**
 * X-User-ID / X-User-Name, as Cube's auth middleware reads them: a value it
 * keeps is visible ASCII (http's HeaderValue::to_str), trimmed; so a key name
 * must come out of headerSafe as printable ASCII that decodes back to itself.
 */

const key = (name: string): KeyIdentity => ({ id: "key_0123456789abcdefghij", name, org: "acme", namespace: "*", roles: ["reader"] });

/** Every key name checkName accepts that needs care, and some that need none. */
const NAMES: [string, string][] = [
  ["ci deploy", "ci deploy"],
  ["acme-admin", "acme-admin"],
  ["café", "caf%C3%A9"],
  ["☃ snow", "%E2%98%83 snow"],
  ["𝄞", "%F0%9D%84%9E"],
  ["50% off", "50%25 off"],
  [" padded ", "%20padded%20"],
  ["  two", "%20 two"],
  ["\u0085 NEL, \u2028 LSEP", "%C2%85 NEL, %E2%80%A8 LSEP"],
  ["a: b, c; d=\"e\"", "a: b, c; d=\"e\""],
];

describe("headerSafe", () => {
  it.each(NAMES)("%j → %j, printable ASCII, decodes back", (name, sent) => {
    const value = headerSafe(name);
    expect(value).toBe(sent);
    expect(value).toMatch(/^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/);
    expect(decodeURIComponent(value)).toBe(name);
  });

  it("never throws, whatever the string (lone surrogates become U+FFFD)", () => {
    for (const name of ["\ud800", "x\udfffy", "\u0000\r\n", "\u00ff".repeat(300)]) {
      expect(headerSafe(name)).toMatch(/^[\x20-\x7e]*$/);
    }
  });
});

describe("identityHeaders", () => {
  it("the key id in X-Auth-User and X-User-ID, its name in X-User-Name", () => {
    expect(identityHeaders(key("ci deploy"))).toEqual({ "x-auth-user": "key_0123456789abcdefghij", "x-user-id": "key_0123456789abcdefghij", "x-user-name": "ci deploy" });
  });

  it("no X-User-Name for a key without a name; dev mode (no key) is dev-mode", () => {
    expect(identityHeaders(key(""))).toEqual({ "x-auth-user": "key_0123456789abcdefghij", "x-user-id": "key_0123456789abcdefghij" });
    expect(identityHeaders(undefined)).toEqual({ "x-auth-user": "dev-mode", "x-user-id": "dev-mode" });
  });
});

describe("an allow with an awkward key name, through a real server and fetch", () => {
  let server: Server;
  let url: string;
  let name = "";

  beforeAll(async () => {
    server = createServer((_req, res) => writeDecision(res, { allowed: true, reason: "allowed", message: "", matchedRule: "policy.csv:1", key: key(name) }));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  });

  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it.each(NAMES)("%j: 200, one X-User-Name that decodes to the name", async (given) => {
    name = given;
    const response = await fetch(url, { method: "POST" });
    expect(response.status).toBe(200);
    expect(response.headers.get("x-user-id")).toBe("key_0123456789abcdefghij");
    expect(decodeURIComponent(response.headers.get("x-user-name")!)).toBe(given);
    expect([...response.headers.keys()].filter((h) => h.startsWith("x-user"))).toEqual(["x-user-id", "x-user-name"]);
  });
});
