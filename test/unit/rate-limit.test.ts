import { describe, expect, it } from "vitest";
import { formatRateLimit, isHigherRate, parseRateLimit } from "../../src/core/ratelimit/rate-limit.js";

describe("parseRateLimit: N/WINDOW", () => {
  it.each([
    ["100/1s", 100, 1],
    ["5000/1h", 5000, 3600],
    ["10/1m", 10, 60],
    ["1/1d", 1, 86_400],
    ["7/30s", 7, 30],
    ["1000/2w", 1000, 14 * 86_400],
    ["  60/1m  ", 60, 60],
    ["1000000000/24d", 1_000_000_000, 24 * 86_400],
  ])("%j → %d per %d s", (text, points, windowSeconds) => {
    expect(parseRateLimit(text)).toEqual({ ok: true, limit: { points, windowSeconds } });
  });

  it.each([
    ["", /use N\/WINDOW/],
    ["100", /use N\/WINDOW/],
    ["100/", /use N\/WINDOW/],
    ["/1s", /use N\/WINDOW/],
    ["0/1s", /from 1 to 1000000000/],
    ["-1/1s", /use N\/WINDOW/],
    ["1.5/1s", /use N\/WINDOW/],
    ["1000000001/1s", /from 1 to 1000000000/],
    ["100/0s", /longer than zero/],
    ["100/1x", /the window must be a duration/],
    ["100/s", /the window must be a duration/],
    ["100/1ms", /the window must be a duration/],
    ["100/25d", /at most 24d/],
    ["100/1mo", /at most 24d/],
    ["100 / 1s", /use N\/WINDOW/],
    ["100/1s\n", /use N\/WINDOW/],
  ])("%j is refused, naming the value", (text, why) => {
    const result = parseRateLimit(text);
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.error).toContain(`invalid rate limit "${text.replace(/\n/g, "?")}"`);
    expect(result.error).toMatch(why);
  });

  it.each([
    [{ points: 100, windowSeconds: 1 }, "100/1s"],
    [{ points: 5000, windowSeconds: 3600 }, "5000/1h"],
    [{ points: 10, windowSeconds: 90 }, "10/90s"],
    [{ points: 3, windowSeconds: 14 * 86_400 }, "3/14d"],
  ])("formats %j as %s, which parses back", (limit, text) => {
    expect(formatRateLimit(limit)).toBe(text);
    expect(parseRateLimit(text)).toEqual({ ok: true, limit });
  });

  it("compares rates in requests per second, whatever the windows", () => {
    expect(isHigherRate({ points: 61, windowSeconds: 60 }, { points: 1, windowSeconds: 1 })).toBe(true);
    expect(isHigherRate({ points: 60, windowSeconds: 60 }, { points: 1, windowSeconds: 1 })).toBe(false);
    expect(isHigherRate({ points: 3600, windowSeconds: 3600 }, { points: 60, windowSeconds: 60 })).toBe(false);
    expect(isHigherRate({ points: 2, windowSeconds: 1 }, { points: 100, windowSeconds: 60 })).toBe(true);
  });
});
