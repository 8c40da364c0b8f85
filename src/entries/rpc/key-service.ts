import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Expiry } from "../../core/manage/key-input.js";
import type { KeyManager } from "../../core/manage/key-manager.js";
import type { ManageResult, Principal } from "../../core/manage/access.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";
import { kRequestIdValue } from "../../http/request-id.js";
import {
  CreatedKeySchema,
  DeletedKeySchema,
  KeyPageSchema,
  KeyService,
  ManageKeyResponseSchema,
  ResetAllResultSchema,
  type ManageKeyRequest,
  type ManageKeyResponse,
} from "../../../gen/keygate/v1/key_pb.js";
import { keyToProto } from "./convert.js";
import type { PrincipalOf } from "./principal.js";
import type { AnnounceKeyChange, KeyChange } from "../../core/keys/key-changes.js";

export interface KeyServiceDeps {
  keys: KeyManager;
  /**
   * Who calls (principal.ts): the local operator on the server's control
   * socket (a Unix socket in the 0700 data dir) and in the CLI's in-process
   * mode, as `msb server keygen`; else the key in the request headers.
   */
  principalOf: PrincipalOf;
  log: Logger;
  /**
   * Tells the other keygate processes on the same database what changed, so
   * their caches drop it at once (Postgres NOTIFY). Unset on PGlite, where
   * one process holds the data and its own cache is kept by the key manager.
   */
  announce?: AnnounceKeyChange;
}

const CODES = { invalid_argument: Code.InvalidArgument, not_found: Code.NotFound, permission_denied: Code.PermissionDenied, already_exists: Code.AlreadyExists } as const;

function unwrap<T>(result: ManageResult<T>): T {
  if (!result.ok) throw new ConnectError(result.message, CODES[result.code]);
  return result.value;
}

export function createKeyService({ keys, principalOf, log, announce }: KeyServiceDeps): ServiceImpl<typeof KeyService> {

  async function run(request: ManageKeyRequest, principal: Principal): Promise<ManageKeyResponse> {
    const action = request.action;
    switch (action.case) {
      case "create": {
        const { value } = action;
        const created = unwrap(
          await keys.create(principal, {
            name: value.name,
            org: value.org,
            namespace: value.namespace,
            roles: value.roles,
            rateLimit: value.rateLimit,
            ...(value.maxSandboxes !== undefined && { maxSandboxes: value.maxSandboxes }),
            ...(expiryOf(value.expiry) && { expiry: expiryOf(value.expiry)! }),
            ...(value.allowUnknownRoles && { allowUnknownRoles: true }),
          }),
        );
        return create(ManageKeyResponseSchema, {
          result: { case: "created", value: create(CreatedKeySchema, { key: keyToProto(created.key), plaintext: created.plaintext }) },
        });
      }
      case "get":
        return keyResponse(unwrap(await keys.get(principal, action.value.id)));
      case "list": {
        const { value } = action;
        const page = unwrap(
          await keys.list(principal, {
            org: value.org,
            namespace: value.namespace,
            ...(value.enabled !== undefined && { enabled: value.enabled }),
            pageSize: value.pageSize,
            pageToken: value.pageToken,
          }),
        );
        return create(ManageKeyResponseSchema, {
          result: { case: "page", value: create(KeyPageSchema, { keys: page.keys.map(keyToProto), nextPageToken: page.nextPageToken }) },
        });
      }
      case "update": {
        const { value } = action;
        const expiry = expiryOf(value.expiry);
        return keyResponse(
          unwrap(
            await keys.update(principal, {
              id: value.id,
              ...(value.name !== undefined && { name: value.name }),
              ...(value.enabled !== undefined && { enabled: value.enabled }),
              ...(expiry && { expiry }),
              ...(value.roles && { roles: value.roles.roles }),
              ...(value.rateLimitChange.case === "rateLimit" && { rateLimit: value.rateLimitChange.value }),
              ...(value.rateLimitChange.case === "noRateLimit" && value.rateLimitChange.value && { rateLimit: null }),
              ...(value.maxSandboxesChange.case === "maxSandboxes" && { maxSandboxes: value.maxSandboxesChange.value }),
              ...(value.maxSandboxesChange.case === "noMaxSandboxes" && value.maxSandboxesChange.value && { maxSandboxes: null }),
              ...(value.allowUnknownRoles && { allowUnknownRoles: true }),
            }),
          ),
        );
      }
      case "revoke":
        return keyResponse(unwrap(await keys.revoke(principal, action.value.id)));
      case "rotate": {
        const created = unwrap(await keys.rotate(principal, action.value.id, action.value.grace));
        return create(ManageKeyResponseSchema, {
          result: { case: "created", value: create(CreatedKeySchema, { key: keyToProto(created.key), plaintext: created.plaintext }) },
        });
      }
      case "delete": {
        const id = unwrap(await keys.delete(principal, action.value.id));
        return create(ManageKeyResponseSchema, { result: { case: "deleted", value: create(DeletedKeySchema, { id }) } });
      }
      case "resetAll": {
        const count = unwrap(await keys.resetAll(principal, action.value.org));
        return create(ManageKeyResponseSchema, { result: { case: "resetAll", value: create(ResetAllResultSchema, { revokedCount: count }) } });
      }
      case undefined:
        throw new ConnectError("no action: set one of create, get, list, update, revoke, rotate, delete, reset_all", Code.InvalidArgument);
    }
  }

  return {
    async manageKey(request, context) {
      const requestId = context.values.get(kRequestIdValue);
      try {
        const principal = await principalOf(context);
        // Postgres text cannot hold NUL: such a field would fail its query (or the refused
        // attempt's audit row) and look like an outage (UNAVAILABLE). It is the caller's error.
        const nul = nulField(request.action.value);
        if (nul !== undefined) throw new ConnectError(`${nul} contains a NUL character`, Code.InvalidArgument);
        const response = await run(request, principal);
        const change = changeOf(request);
        if (change && announce) {
          // The change is committed; failing to announce it only delays other
          // processes until their cache entries expire, so the caller still gets its answer.
          await announce(change).catch((error: unknown) => log.error("key change not announced to other processes", { action: request.action.case, request_id: requestId, ...errorFields(error) }));
        }
        log.info("key action", {
          action: request.action.case,
          request_id: requestId,
          actor: principal.kind === "local" ? "local" : principal.key.id,
          ...(response.result.case === "created" && { key_id: response.result.value.key?.id }),
          ...(response.result.case === "key" && { key_id: response.result.value.id }),
        });
        return response;
      } catch (error) {
        if (error instanceof ConnectError) throw error;
        log.error("key action failed", { action: request.action.case, request_id: requestId, ...errorFields(error) });
        throw new ConnectError("key store unavailable, nothing was changed", Code.Unavailable);
      }
    },
  };
}

/** The name of the first string field (at any depth) holding U+0000, if any. */
function nulField(value: unknown, name = "request"): string | undefined {
  if (typeof value === "string") return value.includes("\u0000") ? name : undefined;
  if (Array.isArray(value)) {
    for (const item of value) {
      const found = nulField(item, name);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (value !== null && typeof value === "object" && !(value instanceof Uint8Array)) {
    for (const [key, item] of Object.entries(value)) {
      if (key === "$typeName") continue;
      const found = nulField(item, key === "value" || key === "case" ? name : key);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/** What a successful action changed, for other processes' caches. */
function changeOf(request: ManageKeyRequest): KeyChange | undefined {
  const action = request.action;
  switch (action.case) {
    case "create":
      return { kind: "created" };
    case "update":
    case "revoke":
    case "rotate":
    case "delete":
      return { kind: "key", id: action.value.id };
    case "resetAll":
      return { kind: "all" };
    case "get":
    case "list":
    case undefined:
      return undefined;
  }
}

function keyResponse(key: Parameters<typeof keyToProto>[0]): ManageKeyResponse {
  return create(ManageKeyResponseSchema, { result: { case: "key", value: keyToProto(key) } });
}

type ExpiryOneof =
  | { case: "expiresIn"; value: string }
  | { case: "expiresAt"; value: Parameters<typeof timestampDate>[0] }
  | { case: "neverExpires"; value: boolean }
  | { case: undefined; value?: undefined };

function expiryOf(expiry: ExpiryOneof): Expiry | undefined {
  switch (expiry.case) {
    case "expiresIn":
      return { kind: "in", duration: expiry.value };
    case "expiresAt":
      return { kind: "at", at: timestampDate(expiry.value) };
    case "neverExpires":
      return expiry.value ? { kind: "never" } : undefined;
    default:
      return undefined;
  }
}
