/**
 * Where the gateway endpoints live: fixed, never configurable, so every
 * gateway config in the docs stays right. KEYGATE_SHIM_PATH may not take them
 * (config.ts checks; this file imports nothing, so config.ts may import it).
 */
export const NGINX_AUTH_PATH = "/auth/nginx";
export const TRAEFIK_AUTH_PATH = "/auth/traefik";
export const FORWARD_AUTH_PATHS: readonly string[] = [NGINX_AUTH_PATH, TRAEFIK_AUTH_PATH];
