import type { CredentialSource } from "../config/config.js";
import { trimOws } from "../core/request/normalize.js";

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
      // HTTP's own whitespace only (space, tab): \s would also take no-break spaces,
      // line separators and BOMs around a key as if they were not there.
      const match = /^[ \t]*bearer[ \t]+(.*?)[ \t]*$/is.exec(value);
      if (match && match[1]) return match[1];
    } else {
      const key = trimOws(value);
      if (key !== "") return key;
    }
  }
  return "";
}
