import { describe, expect, it } from "vitest";
import { DEFAULT_TRUSTED_PROXIES, type ClientIpRules } from "../../src/config/config.js";
import { parseAddressList } from "../../src/core/request/address.js";
import { clientIp } from "../../src/http/client-ip.js";

function rules(header: string | undefined, proxies = DEFAULT_TRUSTED_PROXIES): ClientIpRules {
  const parsed = parseAddressList(proxies);
  if (!parsed.ok) throw new Error(parsed.error);
  return { header, trusted: parsed.list };
}
const headers = (values: Record<string, string>) => (name: string) => values[name];

describe("client IP: the peer, or a trusted proxy's header", () => {
  it.each([
    // [case, header rule, trusted proxies, peer, headers, expected]
    ["no header configured: the peer, whatever is sent", undefined, DEFAULT_TRUSTED_PROXIES, "127.0.0.1", { "x-forwarded-for": "9.9.9.9" }, "127.0.0.1"],
    ["trusted loopback peer: right-most X-Forwarded-For", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", { "x-forwarded-for": "6.6.6.6, 203.0.113.7" }, "203.0.113.7"],
    ["spaces around the right-most entry", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", { "x-forwarded-for": "6.6.6.6 ,  203.0.113.7 " }, "203.0.113.7"],
    ["v4-mapped trusted peer", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "::ffff:127.0.0.1", { "x-forwarded-for": "203.0.113.7" }, "203.0.113.7"],
    ["IPv6 loopback peer is trusted by default", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "::1", { "x-forwarded-for": "2001:db8::1" }, "2001:db8::1"],
    ["spoofed header from an untrusted peer is ignored", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "198.51.100.4", { "x-forwarded-for": "127.0.0.1" }, "198.51.100.4"],
    ["v4-mapped untrusted peer, canonical form", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "::ffff:198.51.100.4", { "x-forwarded-for": "1.1.1.1" }, "198.51.100.4"],
    ["trusted CIDR", "x-real-ip", "10.0.0.0/8", "10.1.2.3", { "x-real-ip": "203.0.113.9" }, "203.0.113.9"],
    ["outside the trusted CIDR", "x-real-ip", "10.0.0.0/8", "11.1.2.3", { "x-real-ip": "203.0.113.9" }, "11.1.2.3"],
    ["a trusted single address", "x-real-ip", "192.0.2.10", "192.0.2.10", { "x-real-ip": "203.0.113.9" }, "203.0.113.9"],
    ["trusted peer, header missing: the peer", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", {}, "127.0.0.1"],
    ["trusted peer, garbage header: the peer", "x-forwarded-for", DEFAULT_TRUSTED_PROXIES, "127.0.0.1", { "x-forwarded-for": "1.1.1.1, not-an-ip" }, "127.0.0.1"],
  ] as const)("%s", (_name, header, proxies, peer, sent, expected) => {
    expect(clientIp(rules(header, proxies), peer, headers(sent))).toBe(expected);
  });

  it("no peer address (a Unix socket): unknown", () => {
    expect(clientIp(rules("x-forwarded-for"), undefined, headers({ "x-forwarded-for": "1.2.3.4" }))).toBeUndefined();
  });

  it.each(["10.0.0.0/33", "not-an-ip", "10.0.0.1/8/2", "::1/129", "10.0.0.0/x"])("refuses trusted proxy %s", (text) => {
    expect(parseAddressList(text).ok).toBe(false);
  });
});
