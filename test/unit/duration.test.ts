import { describe, expect, it } from "vitest";
import { parseDuration, parseExpiry, printable } from "../../src/core/time/duration.js";

const SECOND = 1_000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

function ms(text: string): number {
  const result = parseDuration(text);
  if (!result.ok) throw new Error(`expected "${text}" to parse, got: ${result.error}`);
  return result.ms;
}

function error(result: ReturnType<typeof parseDuration>): string {
  if (result.ok) throw new Error(`expected an error, got ${result.ms} ms`);
  return result.error;
}

describe("parseDuration: microsandbox-style durations (SPEC: Keys)", () => {
  it.each([
    // the examples the spec lists, one per unit
    ["30s", 30 * SECOND],
    ["15m", 15 * MINUTE],
    ["24h", 24 * HOUR],
    ["7d", 7 * DAY],
    ["2w", 14 * DAY],
    ["3mo", 90 * DAY],
    ["1y", 365 * DAY],
    // "m" is minutes, never months
    ["1m", MINUTE],
    ["60m", HOUR],
    // "mo" is exactly 30 days, "y" exactly 365 days (no calendar arithmetic)
    ["1mo", 30 * DAY],
    ["12mo", 360 * DAY],
    ["2y", 730 * DAY],
    ["1w", 7 * DAY],
    ["1s", SECOND],
    ["1h", HOUR],
    ["1d", DAY],
    // zero is a duration (only an expiry refuses it)
    ["0s", 0],
    // leading zeros are only digits
    ["007d", 7 * DAY],
    // the upper bound: 100 years is accepted
    ["100y", 100 * 365 * DAY],
    ["36500d", 100 * 365 * DAY],
    ["1216mo", 1216 * 30 * DAY],
  ])("%s is %d ms", (text, expected) => {
    expect(parseDuration(text)).toEqual({ ok: true, ms: expected });
  });

  it("m and mo differ by the factor between a minute and 30 days", () => {
    expect(ms("1mo") / ms("1m")).toBe(30 * 24 * 60);
  });

  it("surrounding spaces are tolerated (but a space inside is not)", () => {
    expect(ms(" 7d ")).toBe(7 * DAY);
    expect(ms("   30s")).toBe(30 * SECOND);
    expect(parseDuration("7 d").ok).toBe(false);
  });

  it.each(["7d\n", "\t7d", "7d\r", "\u000b7d", "7d\f", "\u00a07d", "7d\u2028", "\ufeff7d"])(
    "a control or non-ASCII space character around the value is refused: %j",
    (text) => {
      const message = error(parseDuration(text));
      expect(message).toMatch(/^invalid duration "/);
      expect(message).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
    },
  );

  it.each([
    ["", "empty"],
    ["5", "number without a unit"],
    ["d", "unit without a number"],
    ["mo", "unit without a number"],
    ["1x", "unknown unit"],
    ["1ms", "milliseconds are not a unit"],
    ["1min", "minutes are spelled m"],
    ["1month", "months are spelled mo"],
    ["1yr", "years are spelled y"],
    ["1M", "units are lower case (M could be minutes or months)"],
    ["1D", "units are lower case"],
    ["1H", "units are lower case"],
    ["1Y", "units are lower case"],
    ["1MO", "units are lower case"],
    ["-1d", "negative"],
    ["+1d", "explicit sign"],
    ["1.5h", "fraction"],
    [".5h", "fraction"],
    ["1,5h", "decimal comma"],
    ["1e3s", "exponent"],
    ["0x10s", "hex"],
    ["1 d", "space between number and unit"],
    ["1\td", "tab between number and unit"],
    ["1d2h", "compound durations"],
    ["1d 2h", "two durations"],
    ["1dd", "unit twice"],
    ["d1", "unit first"],
    ["Infinityd", "Infinity"],
    ["NaNs", "NaN"],
    ["\u0661d", "non-ASCII (Arabic-Indic) digit"],
    ["\uff17d", "full-width digit"],
    ["7\u0000d", "NUL inside"],
    ["\u001b[31m7d", "terminal escape sequence"],
    ["7d\u0000", "trailing NUL"],
    ["7\u200bd", "zero-width space"],
    ["9999999999s", "more than nine digits"],
    ["99999999999999999999999999999y", "astronomically large"],
    ["101y", "longer than 100 years"],
    ["36501d", "longer than 100 years"],
    ["5215w", "longer than 100 years"],
    ["1217mo", "longer than 100 years"],
    ["999999999y", "nine digits, but far beyond 100 years"],
    ["999999999mo", "nine digits, but far beyond 100 years"],
  ])("%j is refused (%s)", (text) => {
    const result = parseDuration(text);
    expect(result.ok).toBe(false);
    expect(parseExpiry(text).ok).toBe(false);
  });

  it.each(["", "5", "1x", "-1d", "1.5h", "1 d", "1M", "1d2h"])(
    "the error for %j names the input and says what is accepted",
    (text) => {
      const message = error(parseDuration(text));
      expect(message).toContain(`"${text}"`);
      expect(message).toMatch(/invalid duration/);
      // tells the user which units exist
      expect(message).toContain("s m h d w mo y");
    },
  );

  it.each(["101y", "999999999y", "36501d"])("the error for %j names the input and the 100y limit", (text) => {
    const message = error(parseDuration(text));
    expect(message).toContain(`"${text}"`);
    expect(message).toContain("100y");
  });

  it.each([
    ["7\u0000d", "7?d"],
    ["\u001b[31m7d", "?[31m7d"],
    ["7d\u007f", "7d?"],
    ["1\u0085d", "1?d"],
  ])("the error for %j does not echo control characters (shows %j)", (text, shown) => {
    const message = error(parseDuration(text));
    expect(message).toContain(`"${shown}"`);
    expect(message).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  });

  it.each(["101y\n", "\t999999999y", "0s\n", "0s\u0000", "\u001b1d"])("no error message echoes a control character (input %j)", (text) => {
    const message = error(parseExpiry(text));
    expect(message).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
  });

  it("the error for a huge input is cut short instead of echoing it all", () => {
    const text = "9".repeat(100_000) + "d";
    const message = error(parseDuration(text));
    expect(message.length).toBeLessThan(400);
    expect(message).toContain("…");
  });

  it("a huge input is refused (a backtracking pattern would hang here)", () => {
    for (const text of ["1".repeat(1_000_000), "1".repeat(500_000) + "m".repeat(500_000), " ".repeat(1_000_000) + "x"]) {
      expect(parseDuration(text).ok).toBe(false);
    }
  });

  it("every result is a finite, non-negative, whole number of milliseconds", () => {
    for (const unit of ["s", "m", "h", "d", "w", "mo", "y"]) {
      for (const n of [0, 1, 9, 10, 99]) {
        const result = parseDuration(`${n}${unit}`);
        expect(result.ok).toBe(true);
        if (result.ok) {
          expect(Number.isSafeInteger(result.ms)).toBe(true);
          expect(result.ms).toBeGreaterThanOrEqual(0);
        }
      }
    }
  });
});

describe("parseExpiry: an expiry must be in the future", () => {
  it.each(["0s", "0m", "0h", "0d", "0w", "0mo", "0y", "00d", "000000000y"])("%s is refused as zero", (text) => {
    const message = error(parseExpiry(text));
    expect(message).toContain(`"${text}"`);
    expect(message).toBe(`duration must be positive (e.g. 30d, 12h), not "${text}"`);
  });

  it.each(["-1h", "-0s", "-30d", " -1h"])("%j is refused as negative, not as an unknown format", (text) => {
    expect(error(parseExpiry(text))).toBe(`duration must be positive (e.g. 30d, 12h), not "${text}"`);
  });

  it.each([
    ["1s", SECOND],
    ["30s", 30 * SECOND],
    ["15m", 15 * MINUTE],
    ["24h", 24 * HOUR],
    ["7d", 7 * DAY],
    ["2w", 14 * DAY],
    ["3mo", 90 * DAY],
    ["1y", 365 * DAY],
    ["100y", 36_500 * DAY],
  ])("%s is accepted as %d ms, the same as parseDuration", (text, expected) => {
    expect(parseExpiry(text)).toEqual({ ok: true, ms: expected });
    expect(parseExpiry(text)).toEqual(parseDuration(text));
  });

  it.each(["", "5", "1x", "1.5h", "1 d", "1M", "101y"])("passes parseDuration's error through for %j", (text) => {
    expect(parseExpiry(text)).toEqual(parseDuration(text));
  });
});

describe("printable: quoting user input in messages", () => {
  it.each([
    ["plain", "plain"],
    ["a\u0000b", "a?b"],
    ["tab\there", "tab?here"],
    ["line\r\nbreak", "line??break"],
    ["del\u007f", "del?"],
    ["c1\u0085\u009f", "c1??"],
    ["café", "café"],
  ])("%j is shown as %j", (text, shown) => {
    expect(printable(text)).toBe(shown);
  });

  it("cuts long input at the limit and marks the cut", () => {
    expect(printable("x".repeat(65))).toBe(`${"x".repeat(64)}…`);
    expect(printable("x".repeat(64))).toBe("x".repeat(64));
    expect(printable("abcdef", 3)).toBe("abc…");
  });
});
