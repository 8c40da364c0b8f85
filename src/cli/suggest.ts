import { editDistance } from "../core/policy/known-roles.js";

export { editDistance };

/**
 * "Did you mean": the candidate closest to what was typed, by edit distance
 * (a swap of two neighbours counts as one edit, so --prot finds --port), and
 * only when it is close: at most one edit in three characters, at least one.
 * Failing that, the one candidate the input begins (--database → --database-url).
 */
export function closest(input: string, candidates: Iterable<string>): string | undefined {
  const typed = input.toLowerCase();
  const list = [...candidates];
  const limit = Math.max(1, Math.floor(typed.length / 3));
  let best: string | undefined;
  let bestDistance = limit + 1;
  for (const candidate of list) {
    const distance = editDistance(typed, candidate.toLowerCase());
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  if (best !== undefined || typed.length < 3) return best;
  const extended = list.filter((candidate) => candidate.toLowerCase().startsWith(typed));
  return extended.length === 1 ? extended[0] : undefined;
}
