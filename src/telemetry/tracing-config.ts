/**
 * Which OTEL_* variables turn tracing on, and what they mean to keygate.
 * Tracing is off unless asked for: the OpenTelemetry default of exporting
 * to localhost:4318 would otherwise load an SDK and try a collector on every
 * install. It is on when
 *
 *   - OTEL_TRACES_EXPORTER lists `otlp`, or
 *   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT is set
 *     (and OTEL_TRACES_EXPORTER is unset),
 *
 * and off whatever else is set when OTEL_SDK_DISABLED=true or
 * OTEL_TRACES_EXPORTER=none. Only OTLP over HTTP is built in: protocol
 * `http/protobuf` (the default) or `http/json`; `grpc` is refused.
 *
 * This file reads an environment object handed to it (config.ts passes
 * process.env); the exporter and batch processor themselves still read
 * their own tuning variables (OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT,
 * _COMPRESSION, OTEL_BSP_*), as every OpenTelemetry SDK does.
 */

export type OtlpProtocol = "http/protobuf" | "http/json";

export const SAMPLERS = ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"] as const;
export type SamplerName = (typeof SAMPLERS)[number];

export interface TracingOn {
  enabled: true;
  /** Where spans are POSTed: the full URL, …/v1/traces. */
  endpoint: string;
  protocol: OtlpProtocol;
  serviceName: string;
  /** From OTEL_RESOURCE_ATTRIBUTES (service.name there is overridden by OTEL_SERVICE_NAME). */
  resourceAttributes: Record<string, string>;
  sampler: SamplerName;
  /** The ratio of the *traceidratio samplers (OTEL_TRACES_SAMPLER_ARG, default 1). */
  samplerRatio: number;
}

export type TracingConfig = { enabled: false } | TracingOn;

export const DEFAULT_SERVICE_NAME = "keygate";
/** The OTLP/HTTP default: a collector on this host. */
export const DEFAULT_TRACES_ENDPOINT = "http://localhost:4318/v1/traces";

type Env = Record<string, string | undefined>;

function value(env: Env, name: string): string | undefined {
  const text = env[name]?.trim();
  return text === undefined || text === "" ? undefined : text;
}

/** The tracing setting from the environment; problems are pushed onto `errors`, each naming its variable. */
export function readTracingConfig(env: Env, errors: string[]): TracingConfig {
  const off: TracingConfig = { enabled: false };
  if (value(env, "OTEL_SDK_DISABLED")?.toLowerCase() === "true") return off;

  const exportersText = value(env, "OTEL_TRACES_EXPORTER");
  const exporters = (exportersText ?? "").split(",").map((part) => part.trim().toLowerCase()).filter((part) => part !== "");
  const unsupported = exporters.filter((name) => name !== "otlp" && name !== "none");
  if (unsupported.length > 0) {
    errors.push(`OTEL_TRACES_EXPORTER: "${exportersText}": keygate exports traces over OTLP only (otlp, or none)`);
    return off;
  }
  if (exporters.includes("none")) return off;
  const tracesEndpoint = value(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
  const baseEndpoint = value(env, "OTEL_EXPORTER_OTLP_ENDPOINT");
  const asked = exporters.includes("otlp") || (exporters.length === 0 && (tracesEndpoint !== undefined || baseEndpoint !== undefined));
  if (!asked) return off;

  // The per-signal endpoint is used as given; the base one gets the signal's path (OTLP/HTTP spec).
  let endpoint = DEFAULT_TRACES_ENDPOINT;
  let endpointSource = "OTEL_EXPORTER_OTLP_ENDPOINT";
  if (tracesEndpoint !== undefined) {
    endpoint = tracesEndpoint;
    endpointSource = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
  } else if (baseEndpoint !== undefined) {
    endpoint = `${baseEndpoint.replace(/\/+$/, "")}/v1/traces`;
  }
  if (!isHttpUrl(endpoint)) errors.push(`${endpointSource}: "${tracesEndpoint ?? baseEndpoint}" is not an http:// or https:// URL`);

  const protocolSource = value(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") !== undefined ? "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" : "OTEL_EXPORTER_OTLP_PROTOCOL";
  const protocolText = value(env, protocolSource) ?? "http/protobuf";
  let protocol: OtlpProtocol = "http/protobuf";
  if (protocolText === "http/protobuf" || protocolText === "http/json") protocol = protocolText;
  else if (protocolText === "grpc") errors.push(`${protocolSource}: "grpc" is not built in: use http/protobuf (the default) or http/json, on the collector's OTLP/HTTP port (4318)`);
  else errors.push(`${protocolSource}: "${protocolText}" must be http/protobuf or http/json`);

  const resourceAttributes = parseResourceAttributes(value(env, "OTEL_RESOURCE_ATTRIBUTES"), errors);
  const serviceName = value(env, "OTEL_SERVICE_NAME") ?? resourceAttributes["service.name"] ?? DEFAULT_SERVICE_NAME;

  const samplerText = (value(env, "OTEL_TRACES_SAMPLER") ?? "parentbased_always_on").toLowerCase();
  let sampler: SamplerName = "parentbased_always_on";
  if ((SAMPLERS as readonly string[]).includes(samplerText)) sampler = samplerText as SamplerName;
  else errors.push(`OTEL_TRACES_SAMPLER: "${samplerText}" must be one of ${SAMPLERS.join(", ")}`);
  let samplerRatio = 1;
  const ratioText = value(env, "OTEL_TRACES_SAMPLER_ARG");
  if (ratioText !== undefined && sampler.endsWith("traceidratio")) {
    samplerRatio = Number(ratioText);
    if (!/^\d*\.?\d+$/.test(ratioText) || !(samplerRatio >= 0 && samplerRatio <= 1)) {
      errors.push(`OTEL_TRACES_SAMPLER_ARG: "${ratioText}" is not a ratio from 0 to 1 (e.g. 0.01)`);
      samplerRatio = 1;
    }
  }

  return { enabled: true, endpoint, protocol, serviceName, resourceAttributes, sampler, samplerRatio };
}

function isHttpUrl(text: string): boolean {
  try {
    const url = new URL(text);
    return (url.protocol === "http:" || url.protocol === "https:") && url.hostname !== "";
  } catch {
    return false;
  }
}

/** `key=value,key2=value2`, values percent-encoded (W3C Baggage style, as the spec says). */
function parseResourceAttributes(text: string | undefined, errors: string[]): Record<string, string> {
  const attributes: Record<string, string> = {};
  if (text === undefined) return attributes;
  for (const part of text.split(",")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    const key = eq === -1 ? "" : part.slice(0, eq).trim();
    let decoded: string | undefined;
    try {
      decoded = eq === -1 ? undefined : decodeURIComponent(part.slice(eq + 1).trim());
    } catch {
      decoded = undefined;
    }
    if (key === "" || decoded === undefined) {
      errors.push(`OTEL_RESOURCE_ATTRIBUTES: "${part.trim()}" is not key=value (values percent-encoded)`);
      continue;
    }
    attributes[key] = decoded;
  }
  return attributes;
}
