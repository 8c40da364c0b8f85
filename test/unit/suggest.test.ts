import { describe, expect, it } from "vitest";
import { closest, editDistance } from "../../src/cli/suggest.js";

describe("editDistance: insertions, deletions, substitutions and adjacent swaps", () => {
  it.each([
    ["port", "port", 0],
    ["prot", "port", 1],
    ["rol", "role", 1],
    ["expir", "expire", 1],
    ["jsno", "json", 1],
    ["", "org", 3],
    ["bogus", "org", 4],
  ])("%j → %j: %d", (a, b, distance) => {
    expect(editDistance(a, b)).toBe(distance);
    expect(editDistance(b, a)).toBe(distance);
  });
});

describe("closest: a guess only when it is close", () => {
  const serve = ["port", "host", "policy-dir", "data-dir", "database-url", "dev", "json", "help"];
  it.each([
    ["prot", "port"],
    ["PORT", "port"],
    ["hots", "host"],
    ["data-dri", "data-dir"],
    ["policy-dirs", "policy-dir"],
    ["bogus", undefined],
    ["x", undefined],
    ["p", undefined],
    ["databse", undefined],
    ["database", "database-url"],
    ["pol", "policy-dir"],
    ["data", undefined], // data-dir or database-url: no guess
  ])("%j → %j", (typed, guess) => {
    expect(closest(typed, serve)).toBe(guess);
  });
});
