import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import type { AuthorizeInput, Decision } from "../../src/core/authorize/decision.js";
import { createDecisionLog, decisionLine, MAX_RAW_LENGTH, type DecisionLogMode } from "../../src/telemetry/decision-log.js";
import { parseRequestLine } from "../../src/policy-tools/replay-diff.js";

const SECRET = "sk-sb-ksblvDKp3YAGCCW86uxMkrdPhqbjoVAg9RVc1RRAtV";
const KEY = { id: "key_abc", name: "demo", org: "acme", namespace: "*", roles: ["reader"] };
const input = (over: Partial<AuthorizeInput> = {}): AuthorizeInput => ({
  credential: SECRET,
  path: "//sandboxes//abc",
  method: "get",
  namespace: "",
  org: "",
  source: "203.0.113.7",
  entry: "shim",
  ...over,
});
const ALLOW: Decision = { allowed: true, reason: "allowed", message: "", matchedRule: "policy.csv:3", key: KEY };
const FORBID: Decision = { allowed: false, reason: "forbidden", message: "API key is not allowed to DELETE /sandboxes/abc", matchedRule: "", key: KEY };
const INVALID: Decision = { allowed: false, reason: "invalid_key", message: "invalid API key", matchedRule: "" };

/** A stream that keeps what it is given; `stall` holds every write (a disk that stopped). */
function sink(stall = false) {
  const chunks: string[] = [];
  const stream = new Writable({
    highWaterMark: 64,
    write(chunk: Buffer, _enc, done) {
      chunks.push(chunk.toString());
      if (!stall) done();
    },
  });
  return { stream, text: () => chunks.join(""), lines: () => chunks.join("").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>) };
}

describe("decision log lines", () => {
  it("one line per decision with the documented fields, the path normalized, never the credential", () => {
    const line = decisionLine(input(), ALLOW, new Date("2026-01-02T03:04:05Z"));
    expect(line).toEqual({
      time: "2026-01-02T03:04:05.000Z",
      entry: "shim",
      reason: "allowed",
      allowed: true,
      key_id: "key_abc",
      key_roles: ["reader"],
      key_org: "acme",
      key_namespace: "*",
      namespace: "",
      request_org: "",
      path: "/sandboxes/abc",
      method: "GET",
      matched_rule: "policy.csv:3",
      source: "203.0.113.7",
    });
    expect(JSON.stringify(line)).not.toContain(SECRET);
  });

  it("a malformed path is kept raw, truncated, with control characters escaped", () => {
    const raw = "/a\n\r\u0000\u007f\u0085\u2028b/" + "x".repeat(1000);
    const line = decisionLine(input({ path: raw, method: "GE\u0001T" }), { ...INVALID, reason: "bad_request" }, new Date());
    expect(line.path.startsWith("/a\\x0a\\x0d\\x00\\x7f\\x85\\u2028b/")).toBe(true);
    expect(line.path).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028]/);
    expect(line.path.length).toBeLessThanOrEqual(MAX_RAW_LENGTH * 6);
    expect(line.path.replace(/\\x[0-9a-f]{2}|\\u[0-9a-f]{4}/g, "_").length).toBe(MAX_RAW_LENGTH);
    expect(line.method).toBe("GE\\x01T");
  });

  it("a decision without a key has null key fields and is skipped by `policy diff`", () => {
    const line = JSON.stringify(decisionLine(input(), INVALID, new Date()));
    expect(JSON.parse(line)).toMatchObject({ key_id: null, key_roles: null, key_org: null, key_namespace: null });
    expect(parseRequestLine(line, 1)).toEqual({ kind: "skip" });
  });

  it("a decision with a key is read back by `policy diff` as the request it was", () => {
    const line = JSON.stringify(decisionLine(input({ namespace: "team-a", org: "acme" }), FORBID, new Date()));
    expect(parseRequestLine(line, 4)).toEqual({
      kind: "request",
      request: { roles: ["reader"], org: "acme", keyNamespace: "*", namespace: "team-a", requestOrg: "acme", path: "/sandboxes/abc", method: "GET", line: 4 },
    });
  });

  it("a request file line without roles is still an error (only decision-log lines are skipped)", () => {
    expect(parseRequestLine(JSON.stringify({ path: "/x", method: "GET" }), 2).kind).toBe("error");
    expect(parseRequestLine(JSON.stringify({ key_roles: null, path: "/x", method: "GET" }), 2).kind).toBe("error");
  });
});

describe("decision log writer", () => {
  const decisions = [ALLOW, FORBID, INVALID, ALLOW];

  it.each([
    ["none", 0.5, []],
    ["all", 0.5, ["allowed", "forbidden", "invalid_key", "allowed"]],
    ["denies", 0.5, ["forbidden", "invalid_key"]],
    // random() alternates 0.2, 0.8: the first allow is in the sample, the second not; every deny is logged.
    ["sampled", 0.5, ["allowed", "forbidden", "invalid_key"]],
    ["sampled", 0, ["forbidden", "invalid_key"]],
    ["sampled", 1, ["allowed", "forbidden", "invalid_key", "allowed"]],
  ] as const)("mode %s (sample %s)", (mode, sample, expected) => {
    const out = sink();
    let n = 0;
    const log = createDecisionLog({ mode: mode as DecisionLogMode, sample, stream: out.stream, random: () => (n++ % 2 === 0 ? 0.2 : 0.8) });
    for (const decision of decisions) log.record(input(), decision);
    expect(out.lines().map((l) => l.reason)).toEqual(expected);
    expect(out.text()).not.toContain(SECRET);
  });

  it("a stalled stream: lines beyond the buffer bound are dropped and counted, memory stays bounded", async () => {
    const out = sink(true);
    const dropped: number[] = [];
    const log = createDecisionLog({ mode: "all", sample: 1, stream: out.stream, maxBufferBytes: 4096, onDropped: (c) => dropped.push(c) });
    for (let i = 0; i < 1000; i++) log.record(input(), ALLOW);
    expect(out.stream.writableLength).toBeLessThanOrEqual(4096);
    expect(log.dropped()).toBeGreaterThan(900);
    expect(log.dropped()).toBeLessThan(1000);
  });

  it("a failing stream stops logging (counted as dropped) without throwing into the decision", async () => {
    const errors: unknown[] = [];
    const stream = new Writable({ write: (_c, _e, done) => done(new Error("disk full")) });
    const log = createDecisionLog({ mode: "all", sample: 1, stream, onError: (e) => errors.push(e) });
    log.record(input(), ALLOW);
    await new Promise((resolve) => setImmediate(resolve));
    expect(() => log.record(input(), ALLOW)).not.toThrow();
    expect(errors).toHaveLength(1);
    expect(log.dropped()).toBe(1);
    await log.close();
  });

  it("close flushes what is buffered", async () => {
    const out = sink();
    const log = createDecisionLog({ mode: "all", sample: 1, stream: out.stream });
    log.record(input(), ALLOW);
    await log.close();
    await log.close();
    expect(out.lines()).toHaveLength(1);
  });
});
