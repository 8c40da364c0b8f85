import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  DEFAULT_KEY_PREFIX,
  KEY_ID_PATTERN,
  MAX_CREDENTIAL_LENGTH,
  displayPrefix,
  generateKey,
  generateKeyId,
  hashKey,
  isValidKeyPrefix,
  isWellFormedKey,
} from "../../src/core/keys/key-format.js";

const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE62_BODY = /^[0-9A-Za-z]+$/;

/** A fixed, real key (generated once) so failures are reproducible. */
const KEY = generateKey();
const BODY = KEY.slice(DEFAULT_KEY_PREFIX.length);

function replaceAt(text: string, index: number, char: string): string {
  return text.slice(0, index) + char + text.slice(index + 1);
}

describe("generateKey (SPEC: Keys — sk-sb- + ≥32 base62 from a CSPRNG, with a checksum)", () => {
  it("uses the sk-sb- prefix by default", () => {
    expect(DEFAULT_KEY_PREFIX).toBe("sk-sb-");
    expect(KEY.startsWith("sk-sb-")).toBe(true);
  });

  it("has at least 32 base62 characters after the prefix", () => {
    expect(BODY.length).toBeGreaterThanOrEqual(32);
    expect(BODY).toMatch(BASE62_BODY);
  });

  it("always has the same length, so a length check is meaningful", () => {
    const lengths = new Set(Array.from({ length: 200 }, () => generateKey().length));
    expect([...lengths]).toEqual([KEY.length]);
  });

  it("passes its own well-formedness check", () => {
    expect(isWellFormedKey(KEY)).toBe(true);
    expect(isWellFormedKey(KEY, DEFAULT_KEY_PREFIX)).toBe(true);
  });

  it("never repeats across 1000 generations (nor do the parts a listing shows and the database stores)", () => {
    const keys = Array.from({ length: 1000 }, () => generateKey());
    expect(new Set(keys).size).toBe(1000);
    expect(new Set(keys.map(hashKey)).size).toBe(1000);
    for (const key of keys) expect(isWellFormedKey(key)).toBe(true);
  });

  it("draws characters from the whole base62 alphabet, roughly uniformly", () => {
    const counts = new Map<string, number>();
    for (let i = 0; i < 4000; i++) {
      // the random part only: the checksum is not uniform
      for (const c of generateKey().slice(DEFAULT_KEY_PREFIX.length, DEFAULT_KEY_PREFIX.length + 32)) {
        counts.set(c, (counts.get(c) ?? 0) + 1);
      }
    }
    expect(counts.size).toBe(62);
    // 128 000 draws: ~2065 per character (σ ≈ 45); bounds are ±5σ. A `byte % 62`
    // source would give the first eight characters ~2500 each.
    for (const [c, n] of counts) {
      expect(n, `count of ${c}`).toBeGreaterThan(1840);
      expect(n, `count of ${c}`).toBeLessThan(2290);
    }
  });

  it.each([
    ["kg_", "kg_"],
    ["acme-", "acme-"],
    ["X", "X"],
    ["sk-live-", "sk-live-"],
    ["sixteen_chars_ab", "sixteen_chars_ab"],
  ])("a custom prefix %j works end to end", (prefix) => {
    const key = generateKey(prefix);
    expect(key.startsWith(prefix)).toBe(true);
    expect(key.slice(prefix.length)).toMatch(BASE62_BODY);
    expect(key.length - prefix.length).toBeGreaterThanOrEqual(32);
    expect(isWellFormedKey(key, prefix)).toBe(true);
    // and it is not a key for the default prefix
    expect(isWellFormedKey(key)).toBe(false);
    expect(displayPrefix(key, prefix)).toBe(key.slice(0, prefix.length + 4));
  });

  it("a default key is not well formed under another prefix", () => {
    expect(isWellFormedKey(KEY, "sk-")).toBe(false);
    expect(isWellFormedKey(KEY, "sk-sb")).toBe(false);
    expect(isWellFormedKey(KEY, "SK-SB-")).toBe(false);
    expect(isWellFormedKey(KEY, "pk-sb-")).toBe(false);
  });
});

describe("isValidKeyPrefix", () => {
  it.each([
    ["sk-sb-", true],
    ["kg_", true],
    ["A", true],
    ["a".repeat(16), true],
    ["", false],
    ["a".repeat(17), false],
    ["sk sb", false],
    ["sk.sb", false],
    ["sk/sb", false],
    ["sk\nsb", false],
    ["sk-sb-\n", false],
    ["clé", false],
    ["sk:", false],
  ])("%j → %s", (prefix, valid) => {
    expect(isValidKeyPrefix(prefix)).toBe(valid);
  });
});

describe("isWellFormedKey: typos and made-up keys are rejected without a database hit", () => {
  it("every one-character substitution anywhere in the key fails (prefix, random part and checksum)", () => {
    const failures: string[] = [];
    for (const key of [KEY, generateKey(), generateKey()]) {
      for (let i = 0; i < key.length; i++) {
        for (const c of BASE62 + "-_") {
          if (c === key[i]) continue;
          const typo = replaceAt(key, i, c);
          if (isWellFormedKey(typo)) failures.push(`${i}:${c}`);
        }
      }
    }
    expect(failures).toEqual([]);
  });

  it("swapping two different adjacent characters fails", () => {
    for (let i = DEFAULT_KEY_PREFIX.length; i < KEY.length - 1; i++) {
      if (KEY[i] === KEY[i + 1]) continue;
      const swapped = KEY.slice(0, i) + KEY[i + 1] + KEY[i] + KEY.slice(i + 2);
      expect(isWellFormedKey(swapped), `swap at ${i}`).toBe(false);
    }
  });

  it("changing the case of any letter fails", () => {
    for (let i = 0; i < KEY.length; i++) {
      const c = KEY[i]!;
      const flipped = c === c.toUpperCase() ? c.toLowerCase() : c.toUpperCase();
      if (flipped === c) continue;
      expect(isWellFormedKey(replaceAt(KEY, i, flipped)), `case flip at ${i}`).toBe(false);
    }
  });

  it.each([
    ["empty", ""],
    ["prefix only", "sk-sb-"],
    ["no prefix", BODY],
    ["wrong prefix", `sk-sc-${BODY}`],
    ["upper-case prefix", `SK-SB-${BODY}`],
    ["prefix without the dash", `sk-sb${BODY}`],
    ["prefix twice", `sk-sb-${KEY}`],
    ["one character short", KEY.slice(0, -1)],
    ["one character long", `${KEY}0`],
    ["first body character dropped", `sk-sb-${BODY.slice(1)}`],
    ["checksum missing", KEY.slice(0, -6)],
    ["a second checksum appended", KEY + KEY.slice(-6)],
    ["Bearer prefix left on", `Bearer ${KEY}`],
    ["leading space", ` ${KEY.slice(0, -1)}`],
    ["trailing space", `${KEY.slice(0, -1)} `],
    ["trailing newline", `${KEY.slice(0, -1)}\n`],
    ["NUL inside", replaceAt(KEY, 20, "\u0000")],
    ["non-base62 '-' in body", replaceAt(KEY, 20, "-")],
    ["non-base62 '_' in body", replaceAt(KEY, 20, "_")],
    ["non-base62 '+' in body", replaceAt(KEY, 20, "+")],
    ["non-base62 '/' in body", replaceAt(KEY, 20, "/")],
    ["non-base62 '=' in body", replaceAt(KEY, 20, "=")],
    ["non-ASCII letter in body", replaceAt(KEY, 20, "é")],
    ["full-width digit in body", replaceAt(KEY, 20, "\uff10")],
    ["look-alike Cyrillic 'а' in body", replaceAt(KEY, 20, "\u0430")],
    ["all zeros", `sk-sb-${"0".repeat(BODY.length)}`],
    ["all 'A'", `sk-sb-${"A".repeat(BODY.length)}`],
    ["the key twice", KEY + KEY],
    ["much too long", `sk-sb-${"a".repeat(MAX_CREDENTIAL_LENGTH * 100)}`],
    ["the key hash instead of the key", hashKey(KEY)],
  ])("%s → invalid", (_label, credential) => {
    expect(isWellFormedKey(credential)).toBe(false);
  });

  it("a made-up key of the right shape fails the checksum (only ~1 in 5e10 would pass)", () => {
    let passed = 0;
    for (let i = 0; i < 2000; i++) {
      let body = "";
      for (let j = 0; j < BODY.length; j++) body += BASE62[Math.floor(Math.random() * 62)];
      if (isWellFormedKey(`sk-sb-${body}`)) passed++;
    }
    expect(passed).toBe(0);
  });
});

describe("hashKey: what the database stores instead of the key", () => {
  it("is SHA-256 over the UTF-8 key, as lower-case hex", () => {
    expect(hashKey(KEY)).toBe(createHash("sha256").update(KEY, "utf8").digest("hex"));
    expect(hashKey(KEY)).toMatch(/^[0-9a-f]{64}$/);
  });

  it.each([
    ["abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"],
    ["", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"],
  ])("matches the published SHA-256 test vector for %j", (input, expected) => {
    expect(hashKey(input)).toBe(expected);
  });

  it("never equals, contains or starts like the key", () => {
    for (let i = 0; i < 100; i++) {
      const key = generateKey();
      const hash = hashKey(key);
      expect(hash).not.toBe(key);
      expect(hash).not.toContain(key.slice(DEFAULT_KEY_PREFIX.length, DEFAULT_KEY_PREFIX.length + 8));
      expect(hash.startsWith(DEFAULT_KEY_PREFIX)).toBe(false);
    }
  });

  it("is deterministic and sensitive to a one-character change", () => {
    expect(hashKey(KEY)).toBe(hashKey(KEY));
    expect(hashKey(replaceAt(KEY, KEY.length - 1, KEY.endsWith("0") ? "1" : "0"))).not.toBe(hashKey(KEY));
  });
});

describe("displayPrefix: the only part of a key that is ever shown again", () => {
  it("is the prefix and four more characters, nothing else", () => {
    const shown = displayPrefix(KEY);
    expect(shown).toBe(KEY.slice(0, DEFAULT_KEY_PREFIX.length + 4));
    expect(shown).toMatch(/^sk-sb-[0-9A-Za-z]{4}$/);
    expect(shown.length).toBe(10);
  });

  it("never reveals the fifth random character or the checksum", () => {
    for (let i = 0; i < 100; i++) {
      const key = generateKey();
      const shown = displayPrefix(key);
      expect(key.startsWith(shown)).toBe(true);
      expect(shown.length).toBe(DEFAULT_KEY_PREFIX.length + 4);
      expect(shown).not.toContain(key.slice(-6));
    }
  });

  it("with a custom prefix, shows that prefix and four more characters", () => {
    const key = generateKey("kg_");
    expect(displayPrefix(key, "kg_")).toMatch(/^kg_[0-9A-Za-z]{4}$/);
  });
});

describe("generateKeyId: non-secret ids for logs and X-Auth-User", () => {
  it("matches KEY_ID_PATTERN (key_ + 20 base62)", () => {
    for (let i = 0; i < 200; i++) expect(generateKeyId()).toMatch(KEY_ID_PATTERN);
  });

  it.each([
    ["key_ABCDEFGHIJklmnopqrst", true],
    ["key_01234567890123456789", true],
    ["key_0123456789012345678", false],
    ["key_012345678901234567890", false],
    ["KEY_01234567890123456789", false],
    ["key-01234567890123456789", false],
    ["key_0123456789012345678_", false],
    ["key_0123456789012345678\n", false],
    ["", false],
  ])("KEY_ID_PATTERN: %j → %s", (id, matches) => {
    expect(KEY_ID_PATTERN.test(id)).toBe(matches);
  });

  it("is unique across 1000 generations and never looks like a key", () => {
    const ids = Array.from({ length: 1000 }, () => generateKeyId());
    expect(new Set(ids).size).toBe(1000);
    for (const id of ids) expect(isWellFormedKey(id)).toBe(false);
  });
});
