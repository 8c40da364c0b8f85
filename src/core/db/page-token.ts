/**
 * Page tokens for keyset pagination: the (time, id) of the last row of a
 * page, opaque to clients (base64url of a JSON pair). A token that does not
 * decode to a valid time and an id of the expected shape is refused, so a
 * crafted token can never become an arbitrary query.
 */

export interface PageCursor {
  at: Date;
  id: string;
}

const MAX_TOKEN_LENGTH = 200;

export function encodePageToken({ at, id }: PageCursor): string {
  return Buffer.from(JSON.stringify([at.toISOString(), id])).toString("base64url");
}

/** The cursor in a token, or undefined when it is not one this server made (`idPattern`: the shape of a row id). */
export function decodePageToken(token: string, idPattern: RegExp): PageCursor | undefined {
  if (token.length > MAX_TOKEN_LENGTH) return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
    if (!Array.isArray(parsed) || parsed.length !== 2) return undefined;
    const [time, id] = parsed as [unknown, unknown];
    if (typeof time !== "string" || typeof id !== "string" || !idPattern.test(id)) return undefined;
    const at = new Date(time);
    return Number.isNaN(at.getTime()) ? undefined : { at, id };
  } catch {
    return undefined;
  }
}
