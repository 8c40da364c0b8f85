import { describe, expect, it } from "vitest";
import { readServeConfig } from "../../src/config/config.js";
import { DEFAULT_TRACES_ENDPOINT, readTracingConfig, type TracingConfig } from "../../src/telemetry/tracing-config.js";

/** Which OTEL_* variables turn tracing on, and what keygate refuses. */

function read(env: Record<string, string>): { config: TracingConfig; errors: string[] } {
  const errors: string[] = [];
  return { config: readTracingConfig(env, errors), errors };
}

describe("on or off", () => {
  it.each<[string, Record<string, string>, boolean]>([
    ["nothing set", {}, false],
    ["an unrelated OTEL variable", { OTEL_SERVICE_NAME: "gate" }, false],
    ["OTEL_TRACES_EXPORTER=otlp", { OTEL_TRACES_EXPORTER: "otlp" }, true],
    ["OTEL_EXPORTER_OTLP_ENDPOINT", { OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }, true],
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://collector:4318/v1/traces" }, true],
    ["an endpoint but OTEL_TRACES_EXPORTER=none", { OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }, false],
    ["otlp but OTEL_SDK_DISABLED=true", { OTEL_SDK_DISABLED: "true", OTEL_TRACES_EXPORTER: "otlp" }, false],
    ["OTEL_SDK_DISABLED=TRUE (any case)", { OTEL_SDK_DISABLED: "TRUE", OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318" }, false],
    ["OTEL_SDK_DISABLED=false", { OTEL_SDK_DISABLED: "false", OTEL_TRACES_EXPORTER: "otlp" }, true],
    ["empty values are unset", { OTEL_TRACES_EXPORTER: "", OTEL_EXPORTER_OTLP_ENDPOINT: " " }, false],
  ])("%s", (_, env, enabled) => {
    const { config, errors } = read(env);
    expect(errors).toEqual([]);
    expect(config.enabled).toBe(enabled);
  });
});

describe("settings", () => {
  it("defaults: protobuf to the local collector, service keygate, parent-based always-on", () => {
    expect(read({ OTEL_TRACES_EXPORTER: "otlp" }).config).toEqual({
      enabled: true,
      endpoint: DEFAULT_TRACES_ENDPOINT,
      protocol: "http/protobuf",
      serviceName: "keygate",
      resourceAttributes: {},
      sampler: "parentbased_always_on",
      samplerRatio: 1,
    });
  });

  it.each<[Record<string, string>, string]>([
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }, "http://collector:4318/v1/traces"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" }, "http://collector:4318/v1/traces"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "https://otel.example/base" }, "https://otel.example/base/v1/traces"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://a:4318", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://b:9999/custom" }, "http://b:9999/custom"],
  ])("endpoint from %o", (env, endpoint) => {
    const { config } = read(env);
    expect(config.enabled && config.endpoint).toBe(endpoint);
  });

  it("protocol, service name, resource attributes and sampler", () => {
    const { config, errors } = read({
      OTEL_TRACES_EXPORTER: "otlp",
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf",
      OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json",
      OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=prod,service.name=ignored,team=a%2Cb",
      OTEL_SERVICE_NAME: "keygate-eu",
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.05",
    });
    expect(errors).toEqual([]);
    expect(config).toMatchObject({
      protocol: "http/json",
      serviceName: "keygate-eu",
      resourceAttributes: { "deployment.environment": "prod", "service.name": "ignored", team: "a,b" },
      sampler: "parentbased_traceidratio",
      samplerRatio: 0.05,
    });
    expect(read({ OTEL_TRACES_EXPORTER: "otlp", OTEL_RESOURCE_ATTRIBUTES: "service.name=from-attrs" }).config).toMatchObject({ serviceName: "from-attrs" });
  });

  it.each<[Record<string, string>, string]>([
    [{ OTEL_TRACES_EXPORTER: "zipkin" }, 'OTEL_TRACES_EXPORTER: "zipkin": keygate exports traces over OTLP only'],
    [{ OTEL_TRACES_EXPORTER: "otlp,console" }, "OTEL_TRACES_EXPORTER"],
    [{ OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" }, 'OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" is not built in'],
    [{ OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "thrift" }, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" }, 'OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" is not an http:// or https:// URL'],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "grpc://c:4317" }, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
    [{ OTEL_TRACES_EXPORTER: "otlp", OTEL_TRACES_SAMPLER: "sometimes" }, "OTEL_TRACES_SAMPLER"],
    [{ OTEL_TRACES_EXPORTER: "otlp", OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "1.5" }, "OTEL_TRACES_SAMPLER_ARG"],
    [{ OTEL_TRACES_EXPORTER: "otlp", OTEL_RESOURCE_ATTRIBUTES: "novalue" }, "OTEL_RESOURCE_ATTRIBUTES"],
  ])("refuses %o", (env, message) => {
    expect(read(env).errors.join("\n")).toContain(message);
  });

  it("settings that only matter to tracing are not checked while it is off", () => {
    expect(read({ OTEL_EXPORTER_OTLP_PROTOCOL: "grpc", OTEL_TRACES_SAMPLER: "sometimes" }).errors).toEqual([]);
  });
});

describe("serve config", () => {
  it("carries tracing and the metrics switch; refuses a shim path on an operations endpoint", () => {
    const ok = readServeConfig({}, { OTEL_TRACES_EXPORTER: "otlp", KEYGATE_METRICS: "false" }, process.cwd());
    expect(ok.ok && ok.config.tracing.enabled).toBe(true);
    expect(ok.ok && ok.config.metrics).toBe(false);
    const defaults = readServeConfig({}, {}, process.cwd());
    expect(defaults.ok && defaults.config.metrics).toBe(true);
    expect(defaults.ok && defaults.config.tracing).toEqual({ enabled: false });
    for (const path of ["/healthz", "/readyz", "/metrics"]) {
      const refused = readServeConfig({}, { KEYGATE_SHIM_PATH: path }, process.cwd());
      expect(refused.ok).toBe(false);
      expect(!refused.ok && refused.errors.join("\n")).toContain(`--shim-path/KEYGATE_SHIM_PATH: "${path}" is taken by a health or metrics endpoint`);
    }
    const badOtel = readServeConfig({}, { OTEL_TRACES_EXPORTER: "jaeger" }, process.cwd());
    expect(!badOtel.ok && badOtel.errors.join("\n")).toContain("OTEL_TRACES_EXPORTER");
  });
});
