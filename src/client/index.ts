/**
 * keygate/client: what another service needs to call keygate from
 * TypeScript or JavaScript, without generating code of its own.
 *
 * - `createKeygateClient({ baseUrl, apiKey? })`: typed Connect clients for
 *   Authorize(Stream), ManageKey, ListAuditEvents and ResourceService.
 * - Everything generated from proto/keygate/v1 (services, message types and
 *   schemas, the `Reason` enum): those protos are the contract, so all of it
 *   is public, and nothing else under gen/ is.
 * - `Code` and `ConnectError`, to tell an outage (`Code.Unavailable`: keygate
 *   could not decide, so deny) from a refused ManageKey call; and the
 *   Timestamp helpers for key expiry and audit times. Taken from here, they
 *   are the copies keygate's own clients use.
 */
export * from "../../gen/keygate/v1/authorize_pb.js";
export * from "../../gen/keygate/v1/key_pb.js";
export * from "../../gen/keygate/v1/audit_pb.js";
export * from "../../gen/keygate/v1/resource_pb.js";
export { Code, ConnectError, type CallOptions, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
export { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
export {
  createKeygateClient,
  type KeygateClient,
  type KeygateClientCommonOptions,
  type KeygateClientOptions,
  type KeygateTransportOptions,
  type KeygateUrlOptions,
} from "./keygate-client.js";
