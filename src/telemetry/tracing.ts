import type { Attributes, Span, Tracer } from "@opentelemetry/api";
import type { ReadableSpan, Sampler, SpanExporter } from "@opentelemetry/sdk-trace-base";
import type { DecisionSpan, DecisionTracer } from "../core/authorize/authorizer.js";
import type { AuthorizeInput, Decision } from "../core/authorize/decision.js";
import type { TracingOn } from "./tracing-config.js";

/**
 * OpenTelemetry traces of decisions, exported over OTLP/HTTP. Everything
 * OpenTelemetry is imported here, on demand: with tracing off (the default)
 * no SDK module is loaded and the core gets no tracer, so a decision does no
 * tracing work at all.
 *
 * A decision is one span, `keygate.authorize`, with two children:
 * `keygate.key_lookup` (cache, then database) and `keygate.policy_decision`.
 * Attributes: keygate.entry, keygate.allowed, keygate.reason,
 * keygate.key_id, keygate.matched_rule, keygate.request.method and
 * keygate.request.path — the *normalized* path the policy matched (as the
 * decision log has it); a path that failed normalization is never recorded,
 * nor is the query string or the credential. Parents are passed explicitly
 * (no context manager, no async hooks); the spans start a trace of their own
 * (keygate does not read a caller's traceparent).
 */

export interface Tracing {
  tracer: DecisionTracer;
  /** Exports what is buffered, then stops. */
  shutdown(): Promise<void>;
}

/** Where export failures are reported (keygate's logger). */
export interface TracingLog {
  warn(message: string, fields?: Record<string, unknown>): void;
}

/** After one export failure is logged, further ones are only counted for this long. */
const FAILURE_LOG_INTERVAL_MS = 60_000;

export async function startTracing(config: TracingOn, log?: TracingLog): Promise<Tracing> {
  const [api, sdk, resources, otlp] = await Promise.all([
    import("@opentelemetry/api"),
    import("@opentelemetry/sdk-trace-base"),
    import("@opentelemetry/resources"),
    config.protocol === "http/json" ? import("@opentelemetry/exporter-trace-otlp-http") : import("@opentelemetry/exporter-trace-otlp-proto"),
  ]);
  const exporter = reportingFailures(new otlp.OTLPTraceExporter({ url: config.endpoint }), config.endpoint, log);
  const samplers: Record<TracingOn["sampler"], () => Sampler> = {
    always_on: () => new sdk.AlwaysOnSampler(),
    always_off: () => new sdk.AlwaysOffSampler(),
    traceidratio: () => new sdk.TraceIdRatioBasedSampler(config.samplerRatio),
    parentbased_always_on: () => new sdk.ParentBasedSampler({ root: new sdk.AlwaysOnSampler() }),
    parentbased_always_off: () => new sdk.ParentBasedSampler({ root: new sdk.AlwaysOffSampler() }),
    parentbased_traceidratio: () => new sdk.ParentBasedSampler({ root: new sdk.TraceIdRatioBasedSampler(config.samplerRatio) }),
  };
  const provider = new sdk.BasicTracerProvider({
    resource: resources.resourceFromAttributes({ ...config.resourceAttributes, "service.name": config.serviceName }),
    sampler: samplers[config.sampler](),
    // Batched off the request path; OTEL_BSP_* tune it.
    spanProcessors: [new sdk.BatchSpanProcessor(exporter)],
  });
  const tracer = provider.getTracer("keygate");
  return {
    tracer: createDecisionTracer(tracer, api),
    shutdown: () => provider.shutdown(),
  };
}

type Api = Pick<typeof import("@opentelemetry/api"), "trace" | "ROOT_CONTEXT" | "SpanStatusCode" | "SpanKind">;

/** The core's DecisionTracer over an OpenTelemetry tracer. */
export function createDecisionTracer(tracer: Tracer, api: Api): DecisionTracer {
  const { trace, ROOT_CONTEXT, SpanStatusCode, SpanKind } = api;
  const fail = (span: Span, error: unknown) => {
    span.recordException(error instanceof Error ? error : String(error));
    span.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
  };
  const decisionAttributes = (decision: Decision): Attributes => ({
    "keygate.allowed": decision.allowed,
    "keygate.reason": decision.reason,
    ...(decision.key && { "keygate.key_id": decision.key.id }),
    ...(decision.matchedRule !== "" && { "keygate.matched_rule": decision.matchedRule }),
  });

  return {
    start(input: AuthorizeInput): DecisionSpan {
      const root = tracer.startSpan("keygate.authorize", { kind: SpanKind.INTERNAL, attributes: { "keygate.entry": input.entry ?? "rpc" } });
      // A decision the sampler dropped costs nothing more.
      if (!root.isRecording()) return endOnly(root);
      const parent = trace.setSpan(ROOT_CONTEXT, root);
      let lookup: Span | undefined;
      let policy: Span | undefined;
      return {
        request(request) {
          root.setAttribute("keygate.request.path", request.path);
          if (request.methods.length === 1) root.setAttribute("keygate.request.method", request.methods[0]!);
        },
        lookupStarted() {
          lookup = tracer.startSpan("keygate.key_lookup", { kind: SpanKind.INTERNAL }, parent);
        },
        lookupEnded(found, error) {
          if (!lookup) return;
          if (found) {
            lookup.setAttribute("keygate.lookup.status", found.status);
            if (found.status !== "invalid") lookup.setAttribute("keygate.key_id", found.key.id);
          } else fail(lookup, error);
          lookup.end();
        },
        policyStarted() {
          policy = tracer.startSpan("keygate.policy_decision", { kind: SpanKind.INTERNAL }, parent);
        },
        policyEnded(decision, error) {
          if (!policy) return;
          if (decision) policy.setAttributes(decisionAttributes(decision));
          else fail(policy, error);
          policy.end();
        },
        end(decision, error) {
          if (decision) {
            root.setAttributes(decisionAttributes(decision));
            // A deny is an answer; only "could not decide" is an error.
            if (decision.reason === "unavailable") root.setStatus({ code: SpanStatusCode.ERROR, message: decision.message });
          } else fail(root, error);
          root.end();
        },
      };
    },
  };
}

const ignore = () => {};

function endOnly(root: Span): DecisionSpan {
  return {
    request: ignore,
    lookupStarted: ignore,
    lookupEnded: ignore,
    policyStarted: ignore,
    policyEnded: ignore,
    end: () => root.end(),
  };
}

/**
 * The exporter, with failed exports logged (a collector that is down or
 * refuses): the first at once, then at most one line a minute with the
 * count. OpenTelemetry itself would only tell its diag logger, off by default.
 */
function reportingFailures(exporter: SpanExporter, endpoint: string, log: TracingLog | undefined): SpanExporter {
  if (!log) return exporter;
  let lastLogged = -Infinity;
  let unlogged = 0;
  return {
    export(spans: ReadableSpan[], done) {
      exporter.export(spans, (result) => {
        if (result.code !== 0) {
          const now = Date.now();
          if (now - lastLogged >= FAILURE_LOG_INTERVAL_MS) {
            log.warn("traces not exported", { endpoint, spans: spans.length, failures_since_last_report: unlogged, error: result.error?.message ?? "unknown" });
            lastLogged = now;
            unlogged = 0;
          } else unlogged++;
        }
        done(result);
      });
    },
    shutdown: () => exporter.shutdown(),
    ...(exporter.forceFlush && { forceFlush: () => exporter.forceFlush!() }),
  };
}
