import { BlockList, isIP } from "node:net";

/**
 * Who is asking, for the failed-auth guard: the TCP peer, or — only when
 * the peer is a trusted proxy — the address a configured header names. A
 * header from any other peer is ignored, so a client cannot pick its own
 * address. X-Forwarded-For is read right to left: the right-most entry is
 * the one the trusted proxy added; entries further left are client-written.
 */

export interface ClientIpRules {
  /** Lower-cased header name ("x-forwarded-for", "x-real-ip"); unset = always the peer. */
  header: string | undefined;
  trusted: BlockList;
}

/** No client-IP header, no trusted proxy: the source is always the TCP peer. */
export const PEER_ONLY: ClientIpRules = { header: undefined, trusted: new BlockList() };

export const DEFAULT_TRUSTED_PROXIES = "127.0.0.0/8,::1/128";

/** "::ffff:10.0.0.1" → "10.0.0.1", so IPv4 rules match v4-mapped peers. */
export function canonicalIp(address: string): string {
  // Socket peers come untrimmed and unmapped almost always: skip the regex then.
  if (!address.includes("::ffff:") && !address.includes("::FFFF:") && address.trim() === address) return address;
  const trimmed = address.trim();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(trimmed);
  return mapped ? mapped[1]! : trimmed;
}

export type TrustedProxiesResult = { ok: true; list: BlockList } | { ok: false; error: string };

/** "10.0.0.0/8, 192.168.1.7, ::1" → a BlockList; each entry an IP or CIDR. */
export function parseTrustedProxies(text: string): TrustedProxiesResult {
  const list = new BlockList();
  for (const raw of text.split(",")) {
    const entry = raw.trim();
    if (entry === "") continue;
    const [address = "", bits, extra] = entry.split("/");
    const ip = canonicalIp(address);
    const family = isIP(ip);
    if (family === 0 || extra !== undefined) return { ok: false, error: `"${entry}" is not an IP address or CIDR` };
    const type = family === 4 ? "ipv4" : "ipv6";
    if (bits === undefined) {
      list.addAddress(ip, type);
      continue;
    }
    const prefix = Number(bits);
    if (!/^\d{1,3}$/.test(bits) || prefix > (family === 4 ? 32 : 128)) return { ok: false, error: `"${entry}" has an invalid prefix length` };
    list.addSubnet(ip, prefix, type);
  }
  return { ok: true, list };
}

export function isTrusted(rules: ClientIpRules, peer: string): boolean {
  return inList(rules.trusted, canonicalIp(peer));
}

/**
 * Membership of a canonical address in a list, remembered per list: a
 * BlockList check builds a SocketAddress each time, and on the hot path the
 * same few peers (a gateway, a Cube server) ask over and over. Lists are
 * built once from config and never change afterwards.
 */
const MEMO_LIMIT = 4_096;
const memos = new WeakMap<BlockList, Map<string, boolean>>();

export function inList(list: BlockList, ip: string): boolean {
  let memo = memos.get(list);
  if (!memo) memos.set(list, (memo = new Map()));
  let found = memo.get(ip);
  if (found === undefined) {
    const family = isIP(ip);
    found = family !== 0 && list.check(ip, family === 4 ? "ipv4" : "ipv6");
    // Many distinct peers (a scan) must not grow it without bound.
    if (memo.size >= MEMO_LIMIT) memo.clear();
    memo.set(ip, found);
  }
  return found;
}

/**
 * The client's address, or undefined when nothing usable is known (a Unix
 * socket peer). A trusted peer whose header is missing or malformed is
 * the source itself: a broken proxy must not make every client anonymous.
 */
export function clientIp(rules: ClientIpRules, peer: string | undefined, header: (name: string) => string | undefined): string | undefined {
  if (peer === undefined || peer === "") return undefined;
  const self = canonicalIp(peer);
  if (!rules.header || !isTrusted(rules, self)) return self;
  const value = header(rules.header);
  if (value === undefined) return self;
  // Right-most entry: the one our trusted proxy appended (or, for X-Real-IP, the only one).
  const parts = value.split(",");
  const candidate = canonicalIp(parts[parts.length - 1] ?? "");
  return isIP(candidate) !== 0 ? candidate : self;
}
