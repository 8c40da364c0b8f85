/**
 * Expiry durations in microsandbox's style: 30s 15m 24h 7d 2w 3mo 1y.
 * "m" is minutes, "mo" is 30 days and "y" is 365 days.
 */
const UNIT_MS: Record<string, number> = {
  s: 1_000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
  mo: 30 * 86_400_000,
  y: 365 * 86_400_000,
};

/** Longest accepted duration: 100 years, well inside Postgres timestamptz. */
const MAX_MS = 100 * UNIT_MS.y!;

export type DurationResult = { ok: true; ms: number } | { ok: false; error: string };

const PATTERN = /^(\d{1,9})(s|m|h|d|w|mo|y)$/;

export function parseDuration(text: string): DurationResult {
  // Only plain spaces around the value are tolerated: a control character
  // anywhere (even a trailing newline) makes the input invalid.
  let start = 0;
  let end = text.length;
  while (start < end && text[start] === " ") start++;
  while (end > start && text[end - 1] === " ") end--;
  const match = PATTERN.exec(text.slice(start, end));
  if (!match) {
    return {
      ok: false,
      error: `invalid duration "${printable(text)}": use a whole number and a unit, one of s m h d w mo y (e.g. 30s, 15m, 24h, 7d, 2w, 3mo, 1y)`,
    };
  }
  const ms = Number(match[1]) * UNIT_MS[match[2]!]!;
  if (ms > MAX_MS) return { ok: false, error: `invalid duration "${printable(text)}": longer than 100y` };
  return { ok: true, ms };
}

/** Like parseDuration, but a negative or zero duration is refused (an expiry must be in the future). */
export function parseExpiry(text: string): DurationResult {
  const result = parseDuration(text);
  if ((result.ok && result.ms === 0) || /^ *-\d/.test(text)) return { ok: false, error: `duration must be positive (e.g. 30d, 12h), not "${printable(text)}"` };
  return result;
}

/** Quote user input in an error message without echoing control characters or megabytes. */
export function printable(text: string, max = 64): string {
  const clean = text.replace(/[\u0000-\u001f\u007f-\u009f]/g, "?");
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

/** A duration as a user would write it, in the largest unit that divides it ("90d", "36h"); whole seconds. */
export function formatDuration(ms: number): string {
  for (const unit of ["y", "mo", "w", "d", "h", "m"]) {
    const size = UNIT_MS[unit]!;
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${Math.round(ms / 1000)}s`;
}
