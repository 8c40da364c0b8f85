import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { MESSAGES } from "../../core/authorize/decision.js";
import type { CredentialSource } from "../../config/config.js";
import type { LookupKey } from "../../core/keys/key-lookup.js";
import type { Principal } from "../../core/manage/access.js";
import { credentialFromHeaders } from "../../http/credentials.js";

export interface PrincipalDeps {
  lookupKey: LookupKey;
  credentialPriority: readonly CredentialSource[];
  dev: boolean;
  /** Every caller is the local operator (control socket, in-process CLI). */
  localOperator: boolean;
}

export type PrincipalOf = (context: HandlerContext) => Promise<Principal>;

/** Who calls a management RPC: the local operator, or the key in its request headers. */
export function createPrincipalOf({ lookupKey, credentialPriority, dev, localOperator }: PrincipalDeps): PrincipalOf {
  return async (context) => {
    if (localOperator || dev) return { kind: "local" };
    const credential = credentialFromHeaders((name) => context.requestHeader.get(name) ?? undefined, credentialPriority);
    if (credential === "") throw new ConnectError(MESSAGES.missing_credential, Code.Unauthenticated);
    const found = await lookupKey(credential);
    switch (found.status) {
      case "ok":
        return { kind: "key", key: found.key };
      case "invalid":
        throw new ConnectError(MESSAGES.invalid_key, Code.Unauthenticated);
      case "revoked":
        throw new ConnectError(MESSAGES.revoked, Code.Unauthenticated);
      case "expired":
        throw new ConnectError(MESSAGES.expired, Code.Unauthenticated);
    }
  };
}
