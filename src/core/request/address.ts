import { BlockList, isIP } from "node:net";

/**
 * Client addresses: canonical form, and lists of addresses and CIDRs (trusted
 * proxies, addresses the failed-auth guard exempts). Lists are built once from
 * config and never change afterwards.
 */

/** "::ffff:10.0.0.1" → "10.0.0.1", so IPv4 rules match v4-mapped peers. */
export function canonicalIp(address: string): string {
  // Socket peers come untrimmed and unmapped almost always: skip the regex then.
  if (!address.includes("::ffff:") && !address.includes("::FFFF:") && address.trim() === address) return address;
  const trimmed = address.trim();
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(trimmed);
  return mapped ? mapped[1]! : trimmed;
}

export type AddressListResult = { ok: true; list: BlockList } | { ok: false; error: string };

/** "10.0.0.0/8, 192.168.1.7, ::1" → a BlockList; each entry an IP or CIDR. */
export function parseAddressList(text: string): AddressListResult {
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

/**
 * Membership of a canonical address in a list, remembered per list: a
 * BlockList check builds a SocketAddress each time, and on the hot path the
 * same few peers (a gateway, a Cube server) ask over and over.
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
