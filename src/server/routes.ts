import type { ConnectRouter } from "@connectrpc/connect";
import type { CredentialSource } from "../config/config.js";
import type { Runtime } from "../runtime/runtime.js";
import type { Logger } from "../runtime/logger.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { AuditService } from "../../gen/keygate/v1/audit_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { createAuditLog } from "../audit/audit-log.js";
import { createAuditService } from "./audit-service.js";
import { createAuthorizeService } from "./authorize-service.js";
import { createKeyChangeAnnouncer } from "./key-changes.js";
import { createKeyService } from "./key-service.js";
import { createPrincipalOf } from "./principal.js";

export function createRoutes(runtime: Runtime, credentialPriority: readonly CredentialSource[], log: Logger, localOperator = false) {
  // Over Postgres other processes may cache the same keys: tell them about every change.
  const announce = runtime.store.kind === "postgres" ? createKeyChangeAnnouncer(runtime.store.db) : undefined;
  return (router: ConnectRouter) => {
    router.service(AuthorizeService, createAuthorizeService(runtime.authorize, localOperator));
    router.service(
      KeyService,
      createKeyService({ keys: runtime.keys, lookupKey: runtime.lookupKey, credentialPriority, dev: runtime.dev, localOperator, log, ...(announce && { announce }) }),
    );
    router.service(
      AuditService,
      createAuditService({
        audit: createAuditLog({ db: runtime.store.db, policy: runtime.policy, now: () => new Date() }),
        principalOf: createPrincipalOf({ lookupKey: runtime.lookupKey, credentialPriority, dev: runtime.dev, localOperator }),
        log,
      }),
    );
  };
}
