import type { ConnectRouter } from "@connectrpc/connect";
import type { CredentialSource } from "../config/config.js";
import type { Runtime } from "../runtime/runtime.js";
import type { Logger } from "../runtime/logger.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { createAuthorizeService } from "./authorize-service.js";
import { createKeyService } from "./key-service.js";

export function createRoutes(runtime: Runtime, credentialPriority: readonly CredentialSource[], log: Logger, localOperator = false) {
  return (router: ConnectRouter) => {
    router.service(AuthorizeService, createAuthorizeService(runtime.authorize));
    router.service(
      KeyService,
      createKeyService({ keys: runtime.keys, lookupKey: runtime.lookupKey, credentialPriority, dev: runtime.dev, localOperator, log }),
    );
  };
}
