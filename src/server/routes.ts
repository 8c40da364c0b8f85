import type { ConnectRouter } from "@connectrpc/connect";
import type { DescService } from "@bufbuild/protobuf";
import type { CredentialSource, ServeConfig } from "../config/config.js";
import type { Handler } from "../http/listener.js";
import { CUBE_WEBHOOK_PATH, cubeWebhookHandler } from "../entries/webhooks/cube-webhook.js";
import type { Runtime } from "./runtime.js";
import type { Logger } from "../telemetry/logger.js";
import { errorFields } from "../telemetry/logger.js";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { AuditService } from "../../gen/keygate/v1/audit_pb.js";
import { KeyService } from "../../gen/keygate/v1/key_pb.js";
import { ResourceService } from "../../gen/keygate/v1/resource_pb.js";
import { Authorization } from "../../gen/envoy/service/auth/v3/external_auth_pb.js";
import { Health } from "../../gen/grpc/health/v1/health_pb.js";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { createAuditLog } from "../core/manage/audit-log.js";
import { createResourceManager, type ResourceManager } from "../core/manage/resource-manager.js";
import { withoutResourceChanges } from "../core/manage/dev-mode.js";
import { createResourceService } from "../entries/rpc/resource-service.js";
import { createExtAuthzService } from "../entries/extauthz/ext-authz.js";
import { createAuditService } from "../entries/rpc/audit-service.js";
import { createAuthorizeService } from "../entries/rpc/authorize-service.js";
import type { ClientIpRules } from "../config/config.js";
import { createHealthService } from "../entries/rpc/health-service.js";
import { createKeyChangeAnnouncer } from "../core/keys/key-changes.js";
import { createKeyService } from "../entries/rpc/key-service.js";
import { createPrincipalOf } from "../entries/rpc/principal.js";
import { createReadinessCheck } from "../core/authorize/readiness.js";
import { createReflectionIndex, createReflectionService, createReflectionServiceV1alpha } from "../entries/rpc/reflection-service.js";

/** Every service createRoutes registers: what reflection lists and gRPC health knows by name. */
export const SERVED_SERVICES: readonly DescService[] = [
  AuthorizeService,
  KeyService,
  AuditService,
  ResourceService,
  Authorization,
  Health,
  ServerReflection,
  ServerReflectionV1alpha,
];

export interface RouteOptions {
  /** Whose word is taken for a client's address; ext_authz believes Envoy's source attribute only from a trusted peer. */
  clientIp?: ClientIpRules;
  /** Aborted when the server begins to shut down: gRPC health turns NOT_SERVING, Watch and reflection streams end. */
  shutdown?: AbortSignal;
}

/**
 * ManageKey, AuditService and ResourceService requests are a few names and
 * ids (a key's 32 roles of 64 characters are 2 KiB): a body larger than this
 * is refused (RESOURCE_EXHAUSTED) before it is read or decoded, so a flood of
 * oversized management calls costs no parsing, lookup or audit row.
 */
export const MANAGEMENT_READ_MAX_BYTES = 16 * 1024;
const MANAGEMENT_LIMITS = { readMaxBytes: MANAGEMENT_READ_MAX_BYTES };

export function createRoutes(runtime: Runtime, credentialPriority: readonly CredentialSource[], log: Logger, localOperator = false, options: RouteOptions = {}) {
  // Over Postgres other processes may cache the same keys: tell them about every change.
  const announce = runtime.store.kind === "postgres" ? createKeyChangeAnnouncer(runtime.store.db) : undefined;
  const reflection = createReflectionIndex(SERVED_SERVICES);
  // ManageKey, AuditService and ResourceService calls by a key go through the failed-auth guard and count against its budgets, as decisions do.
  const principalOf = createPrincipalOf({
    lookupKey: runtime.lookupKey,
    knownKey: runtime.knownKey,
    ...(runtime.guard && { guard: runtime.guard }),
    credentialPriority,
    dev: runtime.dev,
    localOperator,
    consumeBudgets: runtime.consumeBudgets,
  });
  return (router: ConnectRouter) => {
    router.service(
      AuthorizeService,
      createAuthorizeService({
        authorize: runtime.authorize,
        allowExplain: localOperator,
        onError: (error, requestId) => log.error("authorize error", { ...errorFields(error), request_id: requestId }),
      }),
    );
    router.service(
      KeyService,
      createKeyService({ keys: runtime.keys, principalOf, log, ...(announce && { announce }) }),
      MANAGEMENT_LIMITS,
    );
    router.service(
      AuditService,
      createAuditService({
        audit: createAuditLog({ db: runtime.store.db, policy: runtime.policy, now: () => new Date(), recorder: runtime.auditRecorder }),
        principalOf,
        log,
      }),
      MANAGEMENT_LIMITS,
    );
    router.service(
      ResourceService,
      createResourceService({
        resources: devGuarded(runtime, createResourceManager({ ledger: runtime.resources, db: runtime.store.db, policy: runtime.policy, now: () => new Date(), recorder: runtime.auditRecorder })),
        principalOf,
        log,
      }),
      MANAGEMENT_LIMITS,
    );
    router.service(
      Authorization,
      createExtAuthzService({
        authorize: runtime.authorize,
        credentialPriority,
        ...(options.clientIp && { clientIp: options.clientIp }),
        onError: (error) => log.error("ext_authz error", errorFields(error)),
      }),
    );
    router.service(
      Health,
      createHealthService({
        services: SERVED_SERVICES.map((s) => s.typeName),
        readiness: createReadinessCheck({ db: runtime.store.db, policyHolder: runtime.policyHolder }),
        ...(options.shutdown && { shutdown: options.shutdown }),
      }),
    );
    router.service(ServerReflection, createReflectionService(reflection, options.shutdown));
    router.service(ServerReflectionV1alpha, createReflectionServiceV1alpha(reflection, options.shutdown));
  };
}

/** In dev mode every caller is the operator: ResourceService reads, but claims and releases nothing. */
function devGuarded(runtime: Runtime, resources: ResourceManager): ResourceManager {
  return runtime.dev ? withoutResourceChanges(resources) : resources;
}

/**
 * The webhooks the public port receives, by path: Cube's sandbox lifecycle
 * events (off, answering 404, without KEYGATE_CUBE_WEBHOOK_SECRET). They read
 * a body, so serve.ts leaves their size to them.
 */
export function webhookEndpoints(runtime: Runtime, config: Partial<Pick<ServeConfig, "cubeWebhookSecret">>, log: Logger): [string, Handler][] {
  const resources = createResourceManager({ ledger: runtime.resources, db: runtime.store.db, policy: runtime.policy, now: () => new Date(), recorder: runtime.auditRecorder });
  return [[CUBE_WEBHOOK_PATH, cubeWebhookHandler({ secret: config.cubeWebhookSecret, releaseFromEvent: resources.releaseFromEvent, log })]];
}
