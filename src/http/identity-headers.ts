import type { KeyIdentity } from "../core/authorize/decision.js";

/**
 * Who an allow is for, as the answer's headers: X-Auth-User (the key id, for
 * gateways) and X-User-ID / X-User-Name (key id and name), which Cube's auth
 * middleware reads from a 200 into its audit log (CubeAPI/src/middleware/auth.rs:
 * each is optional; it trims the value and silently drops one that is not
 * visible ASCII). Without a key (dev mode) the id is "dev-mode" and no name
 * is sent; an empty name is not sent either.
 */
export function identityHeaders(key: KeyIdentity | undefined): Record<string, string> {
  if (key === undefined) return { "x-auth-user": "dev-mode", "x-user-id": "dev-mode" };
  const id = headerSafe(key.id);
  const headers: Record<string, string> = { "x-auth-user": id, "x-user-id": id };
  if (key.name !== "") headers["x-user-name"] = headerSafe(key.name);
  return headers;
}

/** Printable ASCII without "%"; a space only inside. */
const SAFE = /^(?! )[\x20-\x24\x26-\x7e]*(?<! )$/;

/**
 * A key name may hold any character but controls (key-input.ts): "é" would
 * reach Cube as bytes it drops, a character above U+00FF makes Node throw, and
 * a space at either end would be trimmed away. Such a value is sent as
 * percent-encoded UTF-8 (decodeURIComponent gives it back): every byte outside
 * printable ASCII, every "%", and a space at either end. Anything else passes
 * as it is, so "ci deploy" stays "ci deploy". The result never holds CR, LF or
 * NUL, so it can neither throw nor split the answer.
 */
export function headerSafe(value: string): string {
  if (SAFE.test(value)) return value;
  const bytes = Buffer.from(value, "utf8");
  let out = "";
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    const edgeSpace = byte === 0x20 && (i === 0 || i === bytes.length - 1);
    out += byte < 0x20 || byte > 0x7e || byte === 0x25 || edgeSpace ? `%${byte.toString(16).toUpperCase().padStart(2, "0")}` : String.fromCharCode(byte);
  }
  return out;
}
