import type { CredentialSource } from "../config/config.js";

/**
 * Reads the API key from request headers, in the configured priority
 * (Cube's order by default: "Authorization: Bearer" before "X-API-Key").
 * Header names are case-insensitive. `header` returns every value of a
 * header joined with ", " (the Fetch rule), so a duplicated credential header
 * yields a value that is not a well-formed key and is denied as invalid.
 * An Authorization header with another scheme (Basic, …) is not a key.
 */
export function credentialFromHeaders(header: (name: string) => string | undefined, priority: readonly CredentialSource[]): string {
  for (const source of priority) {
    const value = header(source);
    if (value === undefined) continue;
    if (source === "authorization") {
      const match = /^\s*bearer\s+(.*?)\s*$/is.exec(value);
      if (match && match[1]) return match[1];
    } else {
      const key = value.trim();
      if (key !== "") return key;
    }
  }
  return "";
}
