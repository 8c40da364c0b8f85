/**
 * The public port's fixed paths: the gateway endpoints and the operations
 * endpoints (liveness, readiness, Prometheus metrics). Never configurable, so
 * every gateway config, probe and scrape config in the docs stays right;
 * --shim-path may not take any of them (config.ts checks).
 */
export const NGINX_AUTH_PATH = "/auth/nginx";
export const TRAEFIK_AUTH_PATH = "/auth/traefik";
export const FORWARD_AUTH_PATHS: readonly string[] = [NGINX_AUTH_PATH, TRAEFIK_AUTH_PATH];

export const HEALTHZ_PATH = "/healthz";
export const READYZ_PATH = "/readyz";
export const METRICS_PATH = "/metrics";
export const OPERATIONS_PATHS: readonly string[] = [HEALTHZ_PATH, READYZ_PATH, METRICS_PATH];
