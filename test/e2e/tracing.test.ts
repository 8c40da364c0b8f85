import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { bearer, cubeRequest } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { startOtlpReceiver as startReceiver, type OtlpExport as Export, type OtlpReceiver as Receiver } from "../support/otlp-receiver.js";
import { createKey, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * Traces from a real `keygate serve` to an in-process OTLP/HTTP receiver (a
 * node:http server recording what is POSTed to /v1/traces): one
 * `keygate.authorize` span per decision, with `keygate.key_lookup` and
 * `keygate.policy_decision` inside it, their attributes, never the
 * credential or a raw path; both protocols (http/json, decoded; the default
 * http/protobuf, by its bytes). And with no OTEL_* set: nothing sent, and no
 * OpenTelemetry SDK module even loaded (an ESM resolve hook watches).
 */

interface JsonSpan {
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  attributes: { key: string; value: { stringValue?: string; boolValue?: boolean; intValue?: string } }[];
  status?: { code?: number };
}

function spansOf(exports: Export[]): { service: string | undefined; span: JsonSpan }[] {
  return exports.flatMap((e) => {
    const body = JSON.parse(e.body.toString("utf8")) as {
      resourceSpans: { resource: { attributes: JsonSpan["attributes"] }; scopeSpans: { spans: JsonSpan[] }[] }[];
    };
    return body.resourceSpans.flatMap((rs) => {
      const service = rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue;
      return rs.scopeSpans.flatMap((ss) => ss.spans.map((span) => ({ service, span })));
    });
  });
}

function attributes(span: JsonSpan): Record<string, string | boolean | undefined> {
  return Object.fromEntries(span.attributes.map((a) => [a.key, a.value.stringValue ?? a.value.boolValue ?? a.value.intValue]));
}

async function waitFor<T>(what: string, probe: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

let data: TestDataDir;
let hooksDir: string;
let reader: CreatedKeyJson;

beforeAll(async () => {
  data = await createTestDataDir();
  reader = await createKey(["--org", "acme", "--role", "reader", "--name", "traced"], { cwd: data.dir, env: data.env });
  // Reports every OpenTelemetry SDK or exporter module the process resolves.
  hooksDir = await mkdtemp(join(tmpdir(), "keygate-otel-hooks-"));
  await writeFile(
    join(hooksDir, "hooks.mjs"),
    `export async function resolve(specifier, context, next) {
  if (/@opentelemetry\\/(sdk-|exporter-|resources)/.test(specifier)) process.stderr.write("OTEL-SDK-LOADED " + specifier + "\\n");
  return next(specifier, context);
}\n`,
  );
  await writeFile(join(hooksDir, "register.mjs"), `import { register } from "node:module";\nregister(${JSON.stringify(pathToFileURL(join(hooksDir, "hooks.mjs")).href)});\n`);
});

afterAll(async () => {
  await data?.dispose();
  await rm(hooksDir, { recursive: true, force: true });
});

const watchModules = () => ({ NODE_OPTIONS: `--import ${pathToFileURL(join(hooksDir, "register.mjs")).href}` });

describe("OTLP http/json", () => {
  let receiver: Receiver;
  let server: ServerProcess;

  beforeAll(async () => {
    receiver = await startReceiver();
    server = await startServerProcess([], {
      cwd: data.dir,
      env: {
        ...data.env,
        ...watchModules(),
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
        OTEL_SERVICE_NAME: "keygate-test",
        OTEL_RESOURCE_ATTRIBUTES: "deployment.environment=test",
        OTEL_BSP_SCHEDULE_DELAY: "100",
      },
    });
  });

  afterAll(async () => {
    expect(await server?.stop()).toBe(0);
    await receiver?.close();
  });

  it("logs that tracing is on, and loads the SDK", () => {
    expect(server.output()).toMatch(/"msg":"tracing on".*"endpoint":"http:\/\/127\.0\.0\.1:\d+\/v1\/traces".*"protocol":"http\/json"/);
    expect(server.output()).toContain("OTEL-SDK-LOADED @opentelemetry/exporter-trace-otlp-http");
  });

  it("one span per decision, the key lookup and the policy decision inside it, with keygate.* attributes", async () => {
    expect((await cubeRequest(server.url, bearer(reader.key, "/sandboxes//sbx-trace-1/", "GET"))).status).toBe(200);
    expect((await cubeRequest(server.url, bearer(reader.key, "/sandboxes/sbx-trace-2", "DELETE"))).status).toBe(403);
    expect((await cubeRequest(server.url, bearer("sk-sb-wrong", "/sandboxes", "GET"))).status).toBe(401);
    expect((await cubeRequest(server.url, bearer(reader.key, "/sandboxes/%2e%2e/raw-secret-path", "GET"))).status).toBe(403);
    const rpc = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    expect((await rpc.authorize({ credential: reader.key, path: "/templates/tpl-trace", method: "GET" })).reason).toBe(Reason.ALLOWED);

    const roots = await waitFor("five keygate.authorize spans", () => {
      const found = spansOf(receiver.exports).filter((s) => s.span.name === "keygate.authorize");
      return found.length >= 5 ? found : undefined;
    });
    const all = spansOf(receiver.exports);
    expect(new Set(all.map((s) => s.service))).toEqual(new Set(["keygate-test"]));
    const byPath = (path: string) => roots.find((r) => attributes(r.span)["keygate.request.path"] === path)!.span;

    // Allowed through the callback: the normalized path, the key, the rule; both steps inside it.
    const allowed = byPath("/sandboxes/sbx-trace-1");
    expect(attributes(allowed)).toMatchObject({
      "keygate.entry": "shim",
      "keygate.allowed": true,
      "keygate.reason": "allowed",
      "keygate.key_id": reader.id,
      "keygate.request.method": "GET",
    });
    expect(attributes(allowed)["keygate.matched_rule"]).toMatch(/^policy\.csv:\d+$/);
    const children = all.filter((s) => s.span.parentSpanId === allowed.spanId).map((s) => s.span);
    expect(children.map((c) => c.name).sort()).toEqual(["keygate.key_lookup", "keygate.policy_decision"]);
    for (const child of children) expect(child.traceId).toBe(allowed.traceId);
    expect(attributes(children.find((c) => c.name === "keygate.key_lookup")!)).toMatchObject({ "keygate.lookup.status": "ok", "keygate.key_id": reader.id });
    expect(attributes(children.find((c) => c.name === "keygate.policy_decision")!)).toMatchObject({ "keygate.allowed": true, "keygate.reason": "allowed" });

    expect(attributes(byPath("/sandboxes/sbx-trace-2"))).toMatchObject({ "keygate.allowed": false, "keygate.reason": "forbidden", "keygate.key_id": reader.id, "keygate.request.method": "DELETE" });
    expect(attributes(byPath("/templates/tpl-trace"))).toMatchObject({ "keygate.entry": "rpc", "keygate.allowed": true });

    // An invalid key: looked up (malformed, so no database), no key id.
    const invalid = roots.find((r) => attributes(r.span)["keygate.reason"] === "invalid_key")!.span;
    expect(attributes(invalid)["keygate.key_id"]).toBeUndefined();
    expect(all.find((s) => s.span.parentSpanId === invalid.spanId && s.span.name === "keygate.key_lookup")).toBeDefined();

    // A path that fails normalization is never recorded; nor is any credential.
    const bad = roots.find((r) => attributes(r.span)["keygate.reason"] === "bad_request")!.span;
    expect(attributes(bad)["keygate.request.path"]).toBeUndefined();
    expect(all.filter((s) => s.span.parentSpanId === bad.spanId)).toEqual([]);
    const everything = receiver.exports.map((e) => e.body.toString("utf8")).join("\n");
    expect(everything).not.toContain(reader.key);
    expect(everything).not.toContain("sk-sb-wrong");
    expect(everything).not.toContain("raw-secret-path");
    expect(everything).not.toContain("//sbx-trace-1/");
    for (const { contentType } of receiver.exports) expect(contentType).toBe("application/json");
  });
});

describe("OTLP http/protobuf (the default protocol)", () => {
  it("exports protobuf with the span names, and flushes at shutdown", async () => {
    const receiver = await startReceiver();
    try {
      const server = await startServerProcess([], {
        cwd: data.dir,
        // Only OTEL_TRACES_EXPORTER=otlp and the per-signal endpoint; a long batch delay, so shutdown must flush.
        env: { ...data.env, OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/v1/traces`, OTEL_BSP_SCHEDULE_DELAY: "60000" },
      });
      expect((await cubeRequest(server.url, bearer(reader.key, "/sandboxes", "GET"))).status).toBe(200);
      expect(receiver.exports).toEqual([]);
      expect(await server.stop()).toBe(0);
      expect(receiver.exports.length).toBeGreaterThan(0);
      const bytes = Buffer.concat(receiver.exports.map((e) => e.body));
      for (const { contentType } of receiver.exports) expect(contentType).toBe("application/x-protobuf");
      for (const text of ["keygate.authorize", "keygate.key_lookup", "keygate.policy_decision", "keygate.key_id", reader.id, "service.name", "keygate"]) {
        expect(bytes.includes(Buffer.from(text)), text).toBe(true);
      }
      expect(bytes.includes(Buffer.from(reader.key))).toBe(false);
    } finally {
      await receiver.close();
    }
  });
});

describe("tracing off (no OTEL_* asking for it)", () => {
  it("sends nothing, logs nothing about it, and loads no OpenTelemetry SDK module", async () => {
    const receiver = await startReceiver();
    try {
      const server = await startServerProcess([], {
        cwd: data.dir,
        // OTEL_SERVICE_NAME alone does not turn tracing on; an endpoint with OTEL_TRACES_EXPORTER=none does not either.
        env: { ...data.env, ...watchModules(), OTEL_SERVICE_NAME: "keygate-off", OTEL_TRACES_EXPORTER: "none", OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url },
      });
      expect((await cubeRequest(server.url, bearer(reader.key, "/sandboxes", "GET"))).status).toBe(200);
      expect(await server.stop()).toBe(0);
      expect(receiver.exports).toEqual([]);
      expect(server.output()).not.toContain("tracing on");
      expect(server.output()).not.toContain("OTEL-SDK-LOADED");
    } finally {
      await receiver.close();
    }
  });
});
