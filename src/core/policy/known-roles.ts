import type { Policy } from "./policy.js";

/**
 * The roles a policy knows: every subject of a `p` line and every role a `g`
 * line names (child or parent). A key given any other role is denied
 * everything, so key management refuses one unless asked to allow it
 * (key-input.ts checkKnownRoles).
 */

// Computed once per loaded policy: a reload builds a new Policy object.
const cache = new WeakMap<Policy, ReadonlySet<string>>();

export function knownRoles(policy: Policy): ReadonlySet<string> {
  let roles = cache.get(policy);
  if (!roles) {
    const found = new Set<string>();
    for (const rule of policy.rules) found.add(rule.sub);
    for (const link of policy.links) {
      found.add(link.child);
      found.add(link.parent);
    }
    roles = found;
    cache.set(policy, roles);
  }
  return roles;
}

/**
 * The candidate `word` most likely meant: the same but for case, else the
 * nearest within a small edit distance (1 for short words, 2 from 5
 * characters on); undefined when none is that close.
 */
export function closestName(word: string, candidates: Iterable<string>): string | undefined {
  const lower = word.toLowerCase();
  const limit = word.length >= 5 ? 2 : 1;
  let best: string | undefined;
  let bestDistance = limit + 1;
  for (const candidate of candidates) {
    if (candidate.toLowerCase() === lower) return candidate;
    const distance = editDistance(lower, candidate.toLowerCase());
    if (distance < bestDistance || (distance === bestDistance && best !== undefined && candidate < best)) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return bestDistance <= limit ? best : undefined;
}

/**
 * Optimal string alignment distance: insertions, deletions, substitutions and
 * adjacent swaps (so "raeder" is one edit from "reader", and --prot from
 * --port). The one implementation: the CLI's flag suggestions use it too.
 */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) rows[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}
