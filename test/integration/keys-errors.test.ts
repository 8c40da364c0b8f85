import { describe, expect, it } from "vitest";
import type { Expiry } from "../../src/core/manage/key-input.js";
import type { ManageResult } from "../../src/core/manage/access.js";
import { testDatabaseKind, type TestDatabase } from "../support/database.js";
import { check, createKey, LOCAL, unwrap, type Core, useCoreDatabase } from "./test-core.js";

/**
 * Key lifecycle, the error paths: every refusal is a clear invalid_argument
 * or not_found naming what was wrong, and a refused change changes nothing.
 */

let database: TestDatabase;
let core: Core;

useCoreDatabase((c, d) => {
  core = c;
  database = d;
});

function failure<T>(result: ManageResult<T>): { code: string; message: string } {
  if (result.ok) return expect.fail(`expected a failure, got ${JSON.stringify(result.value)}`);
  return { code: result.code, message: result.message };
}

async function countIn(org: string): Promise<number> {
  return unwrap(await core.keys.list(LOCAL, { org, pageSize: 1000 })).keys.length;
}

const USE_UNITS = "use a whole number and a unit, one of s m h d w mo y";

describe(`durations on ${testDatabaseKind}`, () => {
  it.each([
    ["5x", USE_UNITS],
    ["10 days", USE_UNITS],
    ["1.5h", USE_UNITS],
    ["1M", USE_UNITS],
    ["h", USE_UNITS],
    ["", USE_UNITS],
    ["7d\n", USE_UNITS],
    ["101y", "longer than 100y"],
  ])("create with expiry %j is refused, naming the duration, and creates no key", async (duration, why) => {
    const before = await countIn("bad-durations");
    const { code, message } = failure(await core.keys.create(LOCAL, { org: "bad-durations", expiry: { kind: "in", duration } }));
    expect(code).toBe("invalid_argument");
    expect(message).toContain(`invalid duration "${duration.replace(/\n/g, "?")}"`);
    expect(message).toContain(why);
    expect(await countIn("bad-durations")).toBe(before);
  });

  it.each(["0s", "-1h"])("create with expiry %j is refused as not positive and creates no key", async (duration) => {
    const before = await countIn("bad-durations");
    const { code, message } = failure(await core.keys.create(LOCAL, { org: "bad-durations", expiry: { kind: "in", duration } }));
    expect(code).toBe("invalid_argument");
    expect(message).toBe(`duration must be positive (e.g. 30d, 12h), not "${duration}"`);
    expect(await countIn("bad-durations")).toBe(before);
  });

  it("update with a bad duration is refused and changes nothing, not even the fields that were valid", async () => {
    const { key, plaintext } = await createKey(core, { name: "before", org: "errors" });
    const { code, message } = failure(await core.keys.update(LOCAL, { id: key.id, name: "after", expiry: { kind: "in", duration: "soon" } }));
    expect(code).toBe("invalid_argument");
    expect(message).toContain('invalid duration "soon"');
    expect(unwrap(await core.keys.get(LOCAL, key.id))).toMatchObject({ name: "before", expiresAt: null });
    expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(true);
  });

  it("rotate with a bad grace period is refused, says it is the grace, and mints no key", async () => {
    const { key, plaintext } = await createKey(core, { org: "errors-rotate" });
    const { code, message } = failure(await core.keys.rotate(LOCAL, key.id, "an hour"));
    expect(code).toBe("invalid_argument");
    expect(message).toMatch(/^grace: invalid duration "an hour"/);
    expect(await countIn("errors-rotate")).toBe(1);
    expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(true);
  });

  it("rotating an expired key is refused rather than minting a key that is born expired", async () => {
    const { key } = await createKey(core, { org: "errors-expired", expiry: { kind: "in", duration: "1h" } });
    core.clock.advance(2 * 3_600_000);
    const { code, message } = failure(await core.keys.rotate(LOCAL, key.id, ""));
    expect(code).toBe("invalid_argument");
    expect(message).toContain(`key ${key.id} has expired`);
    expect(await countIn("errors-expired")).toBe(1);
    // Given a new expiry first, it rotates, and the new key works.
    unwrap(await core.keys.update(LOCAL, { id: key.id, expiry: { kind: "in", duration: "1d" } }));
    const rotated = unwrap(await core.keys.rotate(LOCAL, key.id, ""));
    expect((await check(core, rotated.plaintext, "GET", "/sandboxes")).allowed).toBe(true);
  });

  it.each<[string, Expiry, string]>([
    ["in the past", { kind: "at", at: new Date("2020-01-01T00:00:00Z") }, "expiry time must be in the future"],
    ["not a date", { kind: "at", at: new Date("not a date") }, "invalid expiry time"],
  ])("an absolute expiry %s is refused", async (_, expiry, message) => {
    expect(failure(await core.keys.create(LOCAL, { org: "errors", expiry }))).toEqual({ code: "invalid_argument", message });
  });

  it("an absolute expiry of exactly now is refused (the key would be born expired)", async () => {
    const result = await core.keys.create(LOCAL, { org: "errors", expiry: { kind: "at", at: core.clock.now() } });
    expect(failure(result)).toEqual({ code: "invalid_argument", message: "expiry time must be in the future" });
  });
});

describe("invalid fields", () => {
  it.each([
    ["org with a space", { org: "acme corp" }, 'invalid org "acme corp"'],
    ["org with a comma (would break a policy CSV)", { org: "acme,evil" }, 'invalid org "acme,evil"'],
    ["namespace with a slash", { namespace: "team/alpha" }, 'invalid namespace "team/alpha"'],
    ["role with a space", { roles: ["super user"] }, 'invalid role "super user"'],
    ["too many roles", { roles: Array.from({ length: 33 }, (_, i) => `role-${i}`) }, "at most 32 roles"],
    ["name with a control character", { name: "bad\u0007name" }, "key name contains control characters"],
    ["name of 201 characters", { name: "n".repeat(201) }, "key name longer than 200 characters"],
  ])("create with %s is refused", async (_, input, message) => {
    const { code, message: got } = failure(await core.keys.create(LOCAL, input));
    expect(code).toBe("invalid_argument");
    expect(got).toContain(message);
  });

  it("update to no roles is refused: a key needs at least one", async () => {
    const { key } = await createKey(core, { org: "errors", roles: ["reader"] });
    expect(failure(await core.keys.update(LOCAL, { id: key.id, roles: [] }))).toEqual({ code: "invalid_argument", message: "a key needs at least one role" });
    expect(unwrap(await core.keys.get(LOCAL, key.id)).roles).toEqual(["reader"]);
  });

  it("reset-all with an invalid org is refused and revokes nothing", async () => {
    const { plaintext } = await createKey(core, { org: "errors" });
    const { code, message } = failure(await core.keys.resetAll(LOCAL, "no such org!"));
    expect(code).toBe("invalid_argument");
    expect(message).toContain('invalid org "no such org!"');
    expect((await check(core, plaintext, "GET", "/sandboxes")).allowed).toBe(true);
  });
});

describe("unknown and malformed ids", () => {
  const unknown = "key_00000000000000000000";
  const actions: Record<string, (id: string) => Promise<ManageResult<unknown>>> = {
    get: (id: string) => core.keys.get(LOCAL, id),
    update: (id: string) => core.keys.update(LOCAL, { id, name: "x" }),
    revoke: (id: string) => core.keys.revoke(LOCAL, id),
    rotate: (id: string) => core.keys.rotate(LOCAL, id, ""),
    delete: (id: string) => core.keys.delete(LOCAL, id),
  };

  it.each(Object.keys(actions))("%s of an unknown id is not_found", async (action) => {
    expect(failure(await actions[action]!(unknown))).toEqual({ code: "not_found", message: `key ${unknown} not found` });
  });

  it.each(Object.keys(actions))("%s of a malformed id is invalid_argument, never echoing control characters", async (action) => {
    const { code, message } = failure(await actions[action]!("sk-sb-\u001b[31mnot-an-id"));
    expect(code).toBe("invalid_argument");
    expect(message).toContain("invalid key id");
    expect(message).not.toContain("\u001b");
  });

  it("delete twice: the second is not_found", async () => {
    const { key } = await createKey(core, { org: "errors" });
    unwrap(await core.keys.delete(LOCAL, key.id));
    expect(failure(await core.keys.delete(LOCAL, key.id)).code).toBe("not_found");
  });
});

describe("page tokens", () => {
  const message = "invalid page_token: pass the next_page_token of a previous page";

  it.each([
    ["garbage", "not a token"],
    ["base64 of something else", Buffer.from('{"page":2}').toString("base64url")],
    ["a cursor with a bad id", Buffer.from(JSON.stringify(["2031-01-01T00:00:00.000Z", "key_'; drop table api_keys"])).toString("base64url")],
    ["a cursor with a bad time", Buffer.from(JSON.stringify(["yesterday", "key_00000000000000000000"])).toString("base64url")],
    ["an oversized token", "A".repeat(5000)],
  ])("%s is refused with invalid_argument", async (_, pageToken) => {
    expect(failure(await core.keys.list(LOCAL, { pageToken }))).toEqual({ code: "invalid_argument", message });
  });

  it("a token from another filter still pages, it never errors or leaks", async () => {
    for (let i = 0; i < 3; i++) await createKey(core, { org: "tok-a" });
    const first = unwrap(await core.keys.list(LOCAL, { org: "tok-a", pageSize: 1 }));
    const other = unwrap(await core.keys.list(LOCAL, { org: "tok-b", pageToken: first.nextPageToken }));
    expect(other.keys).toEqual([]);
  });
});
