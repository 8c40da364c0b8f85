/**
 * The operations endpoints on the public port: liveness, readiness and
 * Prometheus metrics. Fixed paths (what probes and scrape configs expect);
 * KEYGATE_SHIM_PATH may not take them (config.ts checks; this file imports
 * nothing, so config.ts may import it).
 */
export const HEALTHZ_PATH = "/healthz";
export const READYZ_PATH = "/readyz";
export const METRICS_PATH = "/metrics";
export const OPERATIONS_PATHS: readonly string[] = [HEALTHZ_PATH, READYZ_PATH, METRICS_PATH];
