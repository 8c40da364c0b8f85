import { sql, type Kysely } from "kysely";
import type { Database } from "../db/schema.js";
import type { PolicyHolder } from "../policy/policy-watcher.js";

/** Whether this instance can decide: its database answers and a policy is loaded. */
export interface Readiness {
  ready: boolean;
  checks: {
    database: { ok: boolean; error?: string };
    policy: { ok: boolean; version?: string; error?: string };
  };
}

/** How long a readiness probe waits for the database before calling it down. */
export const READINESS_DB_TIMEOUT_MS = 1_000;

/**
 * Readiness for probes (`/readyz`, gRPC health): one `select 1` with a
 * deadline, and the policy in force. A policy reload that failed keeps the
 * last good policy, which still decides: that is ready, with the error shown.
 */
export interface ReadinessDeps {
  db: Kysely<Database>;
  policyHolder: Pick<PolicyHolder, "current" | "status">;
}

export type ReadinessCheck = () => Promise<Readiness>;

export function createReadinessCheck({ db, policyHolder }: ReadinessDeps, timeoutMs = READINESS_DB_TIMEOUT_MS): ReadinessCheck {
  return async () => {
    const database = await pingDatabase(db, timeoutMs);
    let policy: Readiness["checks"]["policy"];
    try {
      const current = policyHolder.current();
      const lastError = policyHolder.status().lastError;
      policy = { ok: true, version: current.info.version, ...(lastError && { error: `last reload failed: ${lastError.message}` }) };
    } catch (error) {
      policy = { ok: false, error: error instanceof Error ? error.message : String(error) };
    }
    return { ready: database.ok && policy.ok, checks: { database, policy } };
  };
}

async function pingDatabase(db: Kysely<Database>, timeoutMs: number): Promise<{ ok: boolean; error?: string }> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
  });
  try {
    await Promise.race([sql`select 1`.execute(db), deadline]);
    return { ok: true };
  } catch (error) {
    return { ok: false, error: error instanceof Error ? error.message : String(error) };
  } finally {
    clearTimeout(timer);
  }
}
