import { describe, expect, it } from "vitest";
import { deny, httpStatusFor, type Decision, type Reason } from "../../src/core/authorize/decision.js";

describe("Decision", () => {
  it.each<[Reason, number]>([
    ["allowed", 200],
    ["missing_credential", 401],
    ["invalid_key", 401],
    ["revoked", 401],
    ["expired", 401],
    ["forbidden", 403],
    // nginx auth_request treats anything but 401/403 as an error.
    ["bad_request", 403],
    ["rate_limited", 429],
    ["unavailable", 503],
  ])("%s answers HTTP %i", (reason, status) => {
    expect(httpStatusFor(reason)).toBe(status);
  });

  it("allowed and reason agree, by type: an allow is only ever 'allowed', a deny never is", () => {
    // @ts-expect-error an allow with a deny's reason cannot be written
    const allowRevoked: Decision = { allowed: true, reason: "revoked", message: "", matchedRule: "" };
    // @ts-expect-error a deny with the allowed reason cannot be written
    const denyAllowed: Decision = { allowed: false, reason: "allowed", message: "", matchedRule: "" };
    expect([allowRevoked, denyAllowed]).toHaveLength(2);
    const denied = deny("revoked", "API key has been revoked");
    expect(denied).toEqual({ allowed: false, reason: "revoked", message: "API key has been revoked", matchedRule: "" });
  });
});
