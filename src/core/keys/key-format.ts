import { createHash, randomInt } from "node:crypto";

/**
 * Key format: PREFIX + 36 random base62 characters + a 6-character base62
 * CRC-32 checksum of the random part. The checksum lets keygate reject a
 * mistyped or made-up key without touching the database, and lets secret
 * scanners recognise a real key (the same idea as GitHub's token format).
 */
export const DEFAULT_KEY_PREFIX = "sk-sb-";
const BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/** The secret part of a key, after its prefix (the checksum after it follows from it). */
export const RANDOM_LENGTH = 36;
const CHECKSUM_LENGTH = 6;
/** How many characters of the key a listing shows: the prefix and four more. */
const DISPLAY_EXTRA = 4;
/** Longest credential worth examining; anything longer is invalid at once. */
export const MAX_CREDENTIAL_LENGTH = 256;

const PREFIX_PATTERN = /^[A-Za-z0-9_-]{1,16}$/;

export function isValidKeyPrefix(prefix: string): boolean {
  return PREFIX_PATTERN.test(prefix);
}

function toBase62(n: number, width: number): string {
  let out = "";
  let rest = n;
  for (let i = 0; i < width; i++) {
    out = BASE62[rest % 62] + out;
    rest = Math.floor(rest / 62);
  }
  return out;
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

const IS_BASE62 = (() => {
  const table = new Uint8Array(128);
  for (const char of BASE62) table[char.charCodeAt(0)] = 1;
  return table;
})();

function crc32(text: string): number {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) {
    crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff]! ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

function checksum(random: string): string {
  return toBase62(crc32(random), CHECKSUM_LENGTH);
}

/** A new key from the CSPRNG (rejection-free: randomInt is uniform). */
export function generateKey(prefix: string = DEFAULT_KEY_PREFIX): string {
  let random = "";
  for (let i = 0; i < RANDOM_LENGTH; i++) random += BASE62[randomInt(62)];
  return prefix + random + checksum(random);
}

/**
 * True when the credential has the key shape and a correct checksum. Cheap,
 * constant work for any input length up to MAX_CREDENTIAL_LENGTH.
 */
export function isWellFormedKey(credential: string, prefix: string = DEFAULT_KEY_PREFIX): boolean {
  if (credential.length !== prefix.length + RANDOM_LENGTH + CHECKSUM_LENGTH) return false;
  if (!credential.startsWith(prefix)) return false;
  const start = prefix.length;
  let crc = 0xffffffff;
  for (let i = start; i < credential.length; i++) {
    const code = credential.charCodeAt(i);
    if (code > 127 || !IS_BASE62[code]) return false;
    if (i < start + RANDOM_LENGTH) crc = CRC_TABLE[(crc ^ code) & 0xff]! ^ (crc >>> 8);
  }
  return credential.endsWith(toBase62((crc ^ 0xffffffff) >>> 0, CHECKSUM_LENGTH));
}

/** A key without its prefix: the random part and its checksum. */
export const KEY_BODY_LENGTH = RANDOM_LENGTH + CHECKSUM_LENGTH;

/**
 * True when text[start, start + KEY_BODY_LENGTH) is base62 whose last six
 * characters are the checksum of the rest: the body of a real key, whatever
 * prefix stood before it (or none). Lets a log scrubber find a key whose
 * prefix was mangled (URL-encoded, cut off) without masking other long words.
 */
export function isKeyBodyAt(text: string, start: number): boolean {
  if (start < 0 || start + KEY_BODY_LENGTH > text.length) return false;
  let crc = 0xffffffff;
  for (let i = start; i < start + KEY_BODY_LENGTH; i++) {
    const code = text.charCodeAt(i);
    if (code > 127 || !IS_BASE62[code]) return false;
    if (i < start + RANDOM_LENGTH) crc = CRC_TABLE[(crc ^ code) & 0xff]! ^ (crc >>> 8);
  }
  return text.startsWith(toBase62((crc ^ 0xffffffff) >>> 0, CHECKSUM_LENGTH), start + RANDOM_LENGTH);
}

/** What the database stores in place of the key: SHA-256, hex. */
export function hashKey(credential: string): string {
  return createHash("sha256").update(credential, "utf8").digest("hex");
}

/** The part of a key that may be shown again after creation. */
export function displayPrefix(key: string, prefix: string = DEFAULT_KEY_PREFIX): string {
  return key.slice(0, prefix.length + DISPLAY_EXTRA);
}

/** Key ids: "key_" + 20 base62 characters. Not secret; used in logs and X-Auth-User. */
export function generateKeyId(): string {
  // randomInt draws without modulo bias (a byte % 62 would favour the first 8 characters).
  let id = "key_";
  for (let i = 0; i < 20; i++) id += BASE62[randomInt(62)];
  return id;
}

export const KEY_ID_PATTERN = /^key_[0-9A-Za-z]{20}$/;
