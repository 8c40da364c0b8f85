import { fail, type ManageFailure } from "./access.js";
import type { KeyManager } from "./key-manager.js";
import type { ResourceManager } from "./resource-manager.js";

/**
 * Dev mode allows every request and takes every management caller for the
 * operator, so nothing it does may outlive it: a key made or changed in dev
 * mode would keep working after a restart without it (issue 14, item 4).
 * Every door of a dev process (the public port, its control socket, the
 * CLI's in-process runtime) gets managers that read but never write.
 */
export const DEV_MODE_REFUSAL = "dev mode: keys cannot be created or changed (start without --dev/KEYGATE_DEV to manage keys)";
export const DEV_MODE_RESOURCE_REFUSAL = "dev mode: resources cannot be claimed or released (start without --dev/KEYGATE_DEV to manage them)";

const refuse = (message: string) => async (): Promise<ManageFailure> => fail("permission_denied", message);

/** The key manager with every changing action refused; get and list still answer. */
export function withoutKeyChanges(keys: KeyManager): KeyManager {
  const refused = refuse(DEV_MODE_REFUSAL);
  return { ...keys, create: refused, update: refused, revoke: refused, rotate: refused, delete: refused, resetAll: refused };
}

/** The resource manager with claim and release refused; get and list still answer. */
export function withoutResourceChanges(resources: ResourceManager): ResourceManager {
  const refused = refuse(DEV_MODE_RESOURCE_REFUSAL);
  return { ...resources, claim: refused, release: refused };
}
