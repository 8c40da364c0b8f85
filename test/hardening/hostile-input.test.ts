import { create, toBinary, toJsonString } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeRequestSchema, AuthorizeResponseSchema, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { ManageKeyRequestSchema, type ManageKeyRequest } from "../../gen/keygate/v1/key_pb.js";
import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { KNOWN_METHODS, MAX_PATH_LENGTH, normalizeMethod, normalizePath } from "../../src/core/request/normalize.js";
import { cubeRequest, type CubeResponse, type RawHeaders } from "../support/cube-request.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { grpcClient, type GrpcClient } from "../support/grpc-js.js";
import { createKey, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { startLeakWatch, type LeakWatch } from "../support/leak-watch.js";

/**
 * Hostile input, by property: fast-check throws requests at a real
 * `keygate serve` (Cube callback over raw sockets, Authorize over Connect
 * JSON/binary and gRPC, ManageKey) and at the pure normalizers. The oracle is
 * built by construction: start from a request that is allowed (a reader key,
 * GET or HEAD, a route the reader may read), mutate it, and require an allow
 * exactly when the mutation is a no-op once normalized. Never a 5xx (there is
 * no outage here), never a hang, never a crash: after each property the
 * server is alive and still allows a known-good request.
 */

let watch: LeakWatch;
let data: TestDataDir;
let server: ServerProcess;
let authorizeGrpc: GrpcClient;
let reader: CreatedKeyJson;
let admin: CreatedKeyJson;

const figures = { properties: 0, runs: 0, requests: 0, allowsForMalformed: 0, crashes: 0 };
/** Connect's own answer (Code.Internal, HTTP 500) to a binary message that does not parse; see the report. */
let unparseableBinary = 0;
const E2E_RUNS = 150;
const PURE_RUNS = 20_000;
const ANSWER_WITHIN_MS = 5_000;

beforeAll(async () => {
  watch = await startLeakWatch();
  data = await createTestDataDir();
  const options = { cwd: data.dir, env: { ...data.env, ...watch.env } };
  server = await startServerProcess(["--auth-fail-limit", "off"], options);
  reader = await createKey(["--org", "acme", "--role", "reader", "--name", "hostile-reader"], options);
  admin = await createKey(["--org", "acme", "--role", "admin", "--name", "hostile-admin"], options);
  watch.key(reader.key);
  watch.key(admin.key);
  authorizeGrpc = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
});

afterAll(async () => {
  authorizeGrpc?.close();
  const code = await server?.stop();
  if (server) watch.text("keygate serve output", server.output());
  if (code !== 0) console.log(server?.output().split("\n").slice(-15).join("\n"));
  await data?.dispose();
  await watch?.close();
  console.log("[hardening] hostile-input:", JSON.stringify({ ...figures, unparseableBinary500: unparseableBinary }));
  expect(code).toBe(0);
});

// --- what is allowed, by construction --------------------------------------------------------

const ID = fc.stringMatching(/^[A-Za-z0-9_-]{1,24}$/);
/** Routes the default policy lets a reader GET and HEAD. */
const ALLOWED_PATH = fc.oneof(
  fc.constantFrom("/sandboxes", "/v2/sandboxes", "/templates", "/snapshots", "/volumes"),
  ID.map((id) => `/sandboxes/${id}`),
  ID.map((id) => `/sandboxes/${id}/logs`),
  ID.map((id) => `/templates/${id}`),
  fc.tuple(ID, ID).map(([t, b]) => `/templates/${t}/builds/${b}/status`),
  ID.map((id) => `/volumes/${id}`),
);
const ALLOWED_METHOD = fc.constantFrom("GET", "HEAD");
/** The oracle for a method: GET or HEAD in any ASCII case, with HTTP whitespace around it at most. */
const isReaderMethod = (method: string) => /^[ \t]*(get|head)[ \t]*$/i.test(method);

/** Path edits that change nothing once normalized (the upstream serves the same resource). */
const NOOP_PATH_EDITS: readonly ((path: string) => string)[] = [
  (p) => `${p}/`,
  (p) => `/${p}`,
  (p) => p.replace(/\//g, "//"),
  (p) => `${p}?q=/../../admin`,
  (p) => `${p}?x=%2f..%2f`,
  (p) => p.replace(/a/g, "%61"),
];
/** Path edits that must be refused (or land on a path the reader may not read). */
const BREAKING_PATH_TRICKS = [
  "/..",
  "/.",
  "/%2e%2e",
  "/%2E%2e",
  "/.%2e",
  "%2f..%2fadmin",
  "%2F",
  "%5c",
  "\\",
  ";",
  ";/x",
  "/..;/admin",
  "%00",
  "%c0%ae%c0%ae",
  "/%e0%80%ae",
  "%252e",
  "%25%32%65",
  "#/../admin",
  " ",
  "\t",
  "%0a",
  "%ff",
  "%",
  "%zz",
  "/\uff0e\uff0e",
  "\uff0fadmin",
  "/\u2024",
] as const;

// --- the entries -------------------------------------------------------------------------------

async function timed<T>(what: string, promise: Promise<T>): Promise<T> {
  figures.requests++;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer in ${ANSWER_WITHIN_MS} ms: ${what}`)), ANSWER_WITHIN_MS)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** A Cube callback answer, classified: 200 allows; 401/403/429 deny; a 400/431 from Node's parser denies too. */
function shimVerdict(response: CubeResponse): "allow" | "deny" {
  expect(response.status, `status ${response.status}: ${response.body.slice(0, 200)}`).not.toBeGreaterThanOrEqual(500);
  watch.text("shim body", response.body);
  if (response.status === 200) return "allow";
  expect([400, 401, 403, 429, 431]).toContain(response.status);
  return "deny";
}

async function shim(headers: RawHeaders): Promise<"allow" | "deny"> {
  return shimVerdict(await timed("shim", cubeRequest(server.url, headers)));
}

type RpcVerdict = "allow" | "deny";

function authorizeBody(fields: MessageInitShape<typeof AuthorizeRequestSchema>, format: "json" | "binary"): Buffer {
  const message = create(AuthorizeRequestSchema, fields);
  return format === "json" ? Buffer.from(toJsonString(AuthorizeRequestSchema, message)) : Buffer.from(toBinary(AuthorizeRequestSchema, message));
}

/** POST a Connect unary body; a 200 is decoded as AuthorizeResponse, anything else must be a 4xx (or connect's 500 for unparseable binary). */
async function connectAuthorize(body: Uint8Array, contentType: string): Promise<RpcVerdict> {
  const response = await timed(
    "connect",
    fetch(`${server.url}/keygate.v1.AuthorizeService/Authorize`, { method: "POST", headers: { "content-type": contentType }, body, signal: AbortSignal.timeout(ANSWER_WITHIN_MS) }),
  );
  const bytes = Buffer.from(await response.arrayBuffer());
  watch.text("connect body", bytes.toString("utf8"));
  if (response.status === 200) {
    const type = response.headers.get("content-type") ?? "";
    let decoded: { allowed?: boolean; reason?: string | Reason };
    if (type.startsWith("application/grpc-web")) {
      // gRPC-Web: a data frame (flag 0) holds the message, if any; an error is in the trailer frame.
      const frame = bytes.length >= 5 && bytes[0] === 0 ? bytes.subarray(5, 5 + bytes.readUInt32BE(1)) : undefined;
      decoded = frame ? fromBinary(AuthorizeResponseSchema, frame) : {};
    } else if (type.startsWith("application/json")) {
      decoded = JSON.parse(bytes.toString("utf8")) as { allowed?: boolean; reason?: string };
    } else {
      expect(type).toMatch(/^application\/proto/);
      decoded = fromBinary(AuthorizeResponseSchema, bytes);
    }
    const allowed = decoded.allowed === true;
    if (allowed) expect(decoded.reason === "REASON_ALLOWED" || decoded.reason === Reason.ALLOWED).toBe(true);
    return allowed ? "allow" : "deny";
  }
  if (response.status === 500) {
    // Connect's serialization answers Code.Internal to a binary message that does not parse (not UTF-8, truncated).
    const error = JSON.parse(bytes.toString("utf8")) as { code: string; message: string };
    expect(error.code).toBe("internal");
    expect(error.message).toMatch(/^parse binary: /);
    unparseableBinary++;
    return "deny";
  }
  expect(response.status, bytes.toString("utf8").slice(0, 200)).toBeLessThan(500);
  expect(response.status).toBeGreaterThanOrEqual(400);
  return "deny";
}

function grpcAuthorize(body: Buffer): Promise<RpcVerdict> {
  return timed(
    "grpc",
    new Promise((resolve, reject) => {
      authorizeGrpc.makeUnaryRequest<Buffer, Buffer>(
        "/keygate.v1.AuthorizeService/Authorize",
        (b) => b,
        (b) => b,
        body,
        new grpc.Metadata(),
        { deadline: Date.now() + ANSWER_WITHIN_MS },
        (error, response) => {
          if (error) {
            watch.text("grpc error", error.details);
            // Never UNAVAILABLE (no outage here) or UNKNOWN; INTERNAL only for a message that does not parse.
            if (error.code === grpc.status.INTERNAL && /^parse binary: /.test(error.details)) unparseableBinary++;
            else if (![grpc.status.INVALID_ARGUMENT, grpc.status.RESOURCE_EXHAUSTED].includes(error.code)) {
              reject(new Error(`gRPC error ${grpc.status[error.code]}: ${error.details}`));
              return;
            }
            resolve("deny");
            return;
          }
          resolve(fromBinary(AuthorizeResponseSchema, response!).allowed ? "allow" : "deny");
        },
      );
    }),
  );
}

async function knownGoodStillAllowed(): Promise<void> {
  expect(server.child.exitCode, "the server process exited").toBeNull();
  expect(await shim([["Authorization", `Bearer ${reader.key}`], ["X-Request-Path", "/sandboxes/known-good"], ["X-Request-Method", "GET"]])).toBe("allow");
  expect(await connectAuthorize(authorizeBody({ credential: reader.key, path: "/sandboxes", method: "GET" }, "binary"), "application/proto")).toBe("allow");
}

async function property<T>(arbitrary: fc.Arbitrary<T>, predicate: (value: T) => Promise<void>, numRuns = E2E_RUNS): Promise<void> {
  figures.properties++;
  await fc.assert(
    fc.asyncProperty(arbitrary, async (value) => {
      figures.runs++;
      await predicate(value);
    }),
    { numRuns },
  );
  await knownGoodStillAllowed();
}

/** An allow for a request the oracle says is malformed is counted (it must stay 0) and fails the property. */
function judge(verdict: "allow" | "deny", shouldAllow: boolean, what: unknown): void {
  if (verdict === "allow" && !shouldAllow) figures.allowsForMalformed++;
  expect(verdict, JSON.stringify(what).slice(0, 400)).toBe(shouldAllow ? "allow" : "deny");
}

// --- arbitraries for hostile bytes ----------------------------------------------------------------

/** Header values Node will carry byte for byte (no CR/LF, which end the line; the corpus covers those). */
const headerValue = (maxLength: number) =>
  fc.oneof(
    fc.string({ maxLength }),
    fc.string({ unit: "binary", maxLength }).map((s) => s.replace(/[\r\n]/g, "")),
    fc.array(fc.integer({ min: 0, max: 255 }), { maxLength }).map((bytes) => Buffer.from(bytes.filter((b) => b !== 10 && b !== 13)).toString("latin1")),
  );
/** Values Node's parser accepts in a header (tab, visible ASCII, obs-text): a no-op mutation must not be refused for its bytes. */
const validHeaderValue = (maxLength: number) =>
  fc.array(fc.oneof(fc.constant(9), fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff })), { maxLength }).map((b) => Buffer.from(b).toString("latin1"));
const headerName = fc.stringMatching(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}$/);
const caseVariant = (name: string) => fc.array(fc.boolean(), { minLength: name.length, maxLength: name.length }).map((flips) => [...name].map((c, i) => (flips[i] ? c.toUpperCase() : c.toLowerCase())).join(""));

type ShimMutation =
  | { kind: "none" }
  | { kind: "header-case"; names: string[] }
  | { kind: "extra-headers"; headers: [string, string][] }
  | { kind: "noop-path"; edit: number }
  | { kind: "method-case"; method: string }
  | { kind: "also-x-api-key"; value: string }
  | { kind: "duplicate"; header: "Authorization" | "X-Request-Path" | "X-Request-Method" | "X-API-Key-valid"; value: string }
  | { kind: "path-trick"; trick: string; atEnd: boolean }
  | { kind: "method"; method: string }
  | { kind: "credential"; value: string }
  | { kind: "credential-edit"; at: number; char: string }
  | { kind: "huge"; header: string; size: number }
  | { kind: "raw-bytes-in-path"; bytes: number[] }
  | { kind: "x-api-key-only-bearer-garbage"; garbage: string };

const shimMutation: fc.Arbitrary<ShimMutation> = fc.oneof(
  fc.constant({ kind: "none" } as const),
  fc.tuple(caseVariant("authorization"), caseVariant("x-request-path"), caseVariant("x-request-method")).map((names) => ({ kind: "header-case" as const, names })),
  fc
    .array(fc.tuple(headerName, validHeaderValue(200)), { maxLength: 8 })
    .map((headers) => ({ kind: "extra-headers" as const, headers: headers.filter(([n]) => !/^(authorization|x-api-key|x-request-(path|method|namespace|org)|host|connection|content-length|transfer-encoding|expect|upgrade)$/i.test(n)) })),
  fc.nat({ max: NOOP_PATH_EDITS.length - 1 }).map((edit) => ({ kind: "noop-path" as const, edit })),
  caseVariant("get").map((method) => ({ kind: "method-case" as const, method })),
  validHeaderValue(100).map((value) => ({ kind: "also-x-api-key" as const, value })),
  fc.tuple(fc.constantFrom("Authorization", "X-Request-Path", "X-Request-Method", "X-API-Key-valid") , headerValue(50)).map(([header, value]) => ({ kind: "duplicate" as const, header, value })),
  fc.tuple(fc.constantFrom(...BREAKING_PATH_TRICKS), fc.boolean()).map(([trick, atEnd]) => ({ kind: "path-trick" as const, trick, atEnd })),
  headerValue(20).map((method) => ({ kind: "method" as const, method })),
  headerValue(300).map((value) => ({ kind: "credential" as const, value })),
  fc.tuple(fc.nat(), fc.string({ minLength: 1, maxLength: 1, unit: "binary" })).map(([at, char]) => ({ kind: "credential-edit" as const, at, char })),
  // Sizes well inside Node's 16 KiB header limit, and over it (431).
  fc.tuple(fc.constantFrom("Authorization", "X-Request-Path", "X-Request-Method", "X-API-Key"), fc.constantFrom(5_000, 9_000, 12_000, 17_000, 40_000)).map(([header, size]) => ({ kind: "huge" as const, header, size })),
  fc.array(fc.integer({ min: 0x80, max: 0xff }), { minLength: 1, maxLength: 6 }).map((bytes) => ({ kind: "raw-bytes-in-path" as const, bytes })),
  headerValue(60).map((garbage) => ({ kind: "x-api-key-only-bearer-garbage" as const, garbage })),
);

/** The request after the mutation, and whether the oracle says it is the same allowed request. */
function applyShimMutation(key: string, path: string, method: string, m: ShimMutation): { headers: RawHeaders; allow: boolean } {
  const base = (auth = "Authorization", p = "X-Request-Path", meth = "X-Request-Method"): [string, string][] => [
    [auth, `Bearer ${key}`],
    [p, path],
    [meth, method],
  ];
  switch (m.kind) {
    case "none":
      return { headers: base(), allow: true };
    case "header-case":
      return { headers: base(m.names[0], m.names[1], m.names[2]), allow: true };
    case "extra-headers":
      return { headers: [...base(), ...m.headers.map(([n, v]) => [`X-Extra-${n}`, v] as [string, string])], allow: true };
    case "noop-path":
      return { headers: [["Authorization", `Bearer ${key}`], ["X-Request-Path", NOOP_PATH_EDITS[m.edit]!(path)], ["X-Request-Method", method]], allow: true };
    case "method-case":
      return { headers: [["Authorization", `Bearer ${key}`], ["X-Request-Path", path], ["X-Request-Method", m.method]], allow: true };
    case "also-x-api-key":
      // Both credential headers, different values: Authorization wins (Cube's order, documented).
      return { headers: [...base(), ["X-API-Key", m.value]], allow: true };
    case "duplicate": {
      // A header sent twice: never one value. A second identical Authorization is still two credentials.
      if (m.header === "X-API-Key-valid") return { headers: [["X-API-Key", key], ["X-API-Key", key], ["X-Request-Path", path], ["X-Request-Method", method]], allow: false };
      const second: [string, string] = m.header === "Authorization" ? ["authorization", `Bearer ${key}`] : [m.header, m.header === "X-Request-Path" ? path : method];
      return { headers: [...base(), second], allow: false };
    }
    case "path-trick": {
      // Right after the leading "/" (the first segment is a route's literal, so whatever the trick
      // becomes, no rule names it) or at the end, as the last segment (there only where Node keeps
      // it: OWS at the end of a header value is dropped by the parser).
      const atEnd = m.atEnd && !/^[ \t]+$/.test(m.trick);
      const mutated = atEnd ? path + m.trick : `/${m.trick}${path.slice(1)}`;
      return { headers: [["Authorization", `Bearer ${key}`], ["X-Request-Path", mutated], ["X-Request-Method", method]], allow: false };
    }
    case "method": {
      const sent = m.method;
      // Node drops OWS around a header value; what is left must be GET or HEAD for an allow. Empty = not given: every method, which a reader lacks.
      return { headers: [["Authorization", `Bearer ${key}`], ["X-Request-Path", path], ["X-Request-Method", sent]], allow: isReaderMethod(sent) };
    }
    case "credential": {
      const sent = m.value;
      return { headers: [["Authorization", `Bearer ${sent}`], ["X-Request-Path", path], ["X-Request-Method", method]], allow: sent.replace(/^[ \t]+|[ \t]+$/g, "") === key };
    }
    case "credential-edit": {
      const at = m.at % (key.length + 1);
      const edited = key.slice(0, at) + m.char + key.slice(at + 1);
      // Node drops space and tab at the ends of a header value: a tab appended to the key is no change.
      return { headers: [["Authorization", `Bearer ${edited}`], ["X-Request-Path", path], ["X-Request-Method", method]], allow: edited.replace(/^[ \t]+|[ \t]+$/g, "") === key };
    }
    case "huge": {
      const filler = "A".repeat(m.size);
      const headers = base().map(([n, v]): [string, string] => (n === m.header ? [n, `${v}${filler}`] : [n, v]));
      if (m.header === "X-API-Key") headers.push(["X-API-Key", filler]);
      // An over-long X-API-Key next to a valid Authorization changes nothing, unless the whole head is too large (431).
      return { headers, allow: m.header === "X-API-Key" && m.size <= 12_000 };
    }
    case "raw-bytes-in-path": {
      const raw = Buffer.from(m.bytes).toString("latin1");
      // Bytes 0x80–0xFF appended to the last segment: invalid UTF-8 is refused; valid UTF-8 is more of that segment's name.
      return { headers: [["Authorization", `Bearer ${key}`], ["X-Request-Path", `${path}${raw}`], ["X-Request-Method", method]], allow: isOneMoreLetter(path, m.bytes) };
    }
    case "x-api-key-only-bearer-garbage":
      // Authorization (first by priority) holds garbage: the valid X-API-Key behind it is never read.
      return { headers: [["Authorization", `Bearer x${m.garbage}`], ["X-API-Key", key], ["X-Request-Path", path], ["X-Request-Method", method]], allow: false };
  }
}

/** Valid UTF-8 appended to the last segment keeps the route only where that segment is an ":id". */
function isOneMoreLetter(path: string, bytes: number[]): boolean {
  const text = Buffer.from(bytes).toString("utf8");
  // The spec's rules: invalid UTF-8 (U+FFFD), C1 controls, and look-alikes of / \ ; are refused.
  if (text.includes("\ufffd") || /[\u0080-\u009f]/.test(text) || /[/\\;]/.test(text.normalize("NFKC"))) return false;
  return /^\/(sandboxes|templates|volumes)\/[^/]+$/.test(path);
}

// --- the properties --------------------------------------------------------------------------------

describe("pure normalizers under fast-check", () => {
  const pathAlphabet = fc.constantFrom(
    "/", "//", ".", "..", "a", "b", "sandboxes", "%2e", "%2E", "%2f", "%2F", "%5c", "%25", "%", "%41", "%c0%ae", "%e0%80%ae", "%ff", "%00",
    ";", "\\", "?", "#", " ", "\t", "\u0000", "\u007f", "\u0085", "\uff0e", "\uff0f", "é", "%C3%A9", "\ufffd", "~", "-", "_", ":",
  );
  const pathLike = fc.oneof(
    fc.array(pathAlphabet, { maxLength: 30 }).map((parts) => `/${parts.join("")}`),
    fc.string({ unit: "binary", maxLength: 200 }),
    fc.string({ unit: "grapheme", maxLength: 100 }).map((s) => `/${s}`),
  );

  it(`normalizePath (${PURE_RUNS} runs): never throws; an accepted path is canonical, a fixed point, without dot or empty segments, backslash, ';' or controls`, () => {
    figures.properties++;
    fc.assert(
      fc.property(pathLike, (raw) => {
        figures.runs++;
        const result = normalizePath(raw);
        if (!result.ok) {
          expect(result.error).not.toMatch(/[\u0000-\u001f\u007f-\u009f]/);
          return;
        }
        const path = result.value;
        expect(path.startsWith("/")).toBe(true);
        expect(path).not.toMatch(/[\u0000-\u001f\u007f-\u009f\\;]/);
        if (path !== "/") {
          expect(path.endsWith("/")).toBe(false);
          for (const segment of path.slice(1).split("/")) expect(["", ".", ".."]).not.toContain(segment);
        }
        // A fixed point wherever the output cannot be read as new syntax (a decoded %, ?, # or space).
        if (!/[%?# ]/.test(path)) expect(normalizePath(path)).toEqual({ ok: true, value: path });
      }),
      { numRuns: PURE_RUNS },
    );
  });

  it(`normalizePath (${PURE_RUNS} runs): a percent-encoded segment is decoded exactly once, or refused`, () => {
    figures.properties++;
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }), (segment) => {
        figures.runs++;
        const result = normalizePath(`/sandboxes/${encodeURIComponent(segment)}`);
        // Decoding twice would turn an encoded "%2e%2e" back into ".."; once gives the segment itself.
        if (result.ok) expect(result.value).toBe(`/sandboxes/${segment}`);
      }),
      { numRuns: PURE_RUNS },
    );
  });

  it(`normalizeMethod (${PURE_RUNS} runs): a known upper-case method or a refusal; only ASCII case and space/tab ignored`, () => {
    figures.properties++;
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: "binary", maxLength: 20 }), fc.constantFrom(...KNOWN_METHODS).chain((m) => caseVariant(m)), fc.string()), (method) => {
        figures.runs++;
        const result = normalizeMethod(method);
        const expected = method === "" ? "" : /^[ \t]*[A-Za-z]+[ \t]*$/.test(method) ? method.trim().toUpperCase() : undefined;
        if (expected !== undefined && (expected === "" || (KNOWN_METHODS as readonly string[]).includes(expected))) {
          expect(result).toEqual({ ok: true, value: expected });
        } else {
          expect(result.ok).toBe(false);
        }
      }),
      { numRuns: PURE_RUNS },
    );
  });

  it("long hostile paths are answered quickly (no backtracking)", () => {
    const started = performance.now();
    for (const raw of ["/" + "%2".repeat(MAX_PATH_LENGTH / 2 - 1), "/" + "\uff0e/".repeat(MAX_PATH_LENGTH / 2 - 1), "/" + "é".repeat(MAX_PATH_LENGTH - 1)]) normalizePath(raw);
    normalizeMethod(" ".repeat(100_000) + "x");
    expect(performance.now() - started).toBeLessThan(500);
  });
});

describe("the Cube callback under hostile headers (raw sockets)", () => {
  it("allowed exactly when a mutation of an allowed request is a no-op; never 5xx, never a hang", async () => {
    await property(fc.tuple(ALLOWED_PATH, ALLOWED_METHOD, shimMutation), async ([path, method, mutation]) => {
      const { headers, allow } = applyShimMutation(reader.key, path, method, mutation);
      judge(await shim(headers), allow, { path, method, mutation });
    });
  });

  it("arbitrary header sets without a well-formed key are never allowed", async () => {
    const anyHeaders = fc.array(
      fc.tuple(fc.oneof(headerName, fc.constantFrom("authorization", "X-API-KEY", "x-request-path", "X-Request-Method", "x-request-namespace", "X-Request-Org")), headerValue(400)),
      { maxLength: 12 },
    );
    await property(anyHeaders, async (headers) => {
      const safe = headers.filter(([n]) => !/^(host|connection|content-length|transfer-encoding|expect|upgrade)$/i.test(n));
      judge(await shim(safe), false, safe);
    });
  });
});

describe("Authorize (Connect JSON and binary, gRPC) under hostile messages", () => {
  type Fields = { credential: string; path: string; method: string; namespace: string; org: string };
  const field = fc.oneof(fc.string({ maxLength: 50 }), fc.string({ unit: "binary", maxLength: 300 }), fc.constantFrom("", "acme", "*", "default", "\u0000"));
  const request = fc.record({
    credential: fc.oneof(fc.constant("VALID"), field, fc.tuple(fc.nat(), fc.string({ minLength: 1, maxLength: 1, unit: "binary-ascii" })).map(([at, c]) => `EDIT:${at}:${c}`)),
    path: fc.oneof(ALLOWED_PATH, fc.tuple(ALLOWED_PATH, fc.nat({ max: NOOP_PATH_EDITS.length - 1 })).map(([p, e]) => `NOOP:${NOOP_PATH_EDITS[e]!(p)}`), fc.tuple(ALLOWED_PATH, fc.constantFrom(...BREAKING_PATH_TRICKS)).map(([p, t]) => `TRICK:${p}${t}`), field),
    method: fc.oneof(ALLOWED_METHOD, caseVariant("head"), field),
    namespace: fc.oneof(fc.constant(""), field),
    org: fc.oneof(fc.constant(""), fc.constant("acme"), field),
  });

  /** The concrete message and the oracle's verdict. */
  function concrete(r: { credential: string; path: string; method: string; namespace: string; org: string }): { fields: Fields; allow: boolean } {
    let credential = r.credential;
    let credentialOk = false;
    if (credential === "VALID") {
      credential = reader.key;
      credentialOk = true;
    } else if (credential.startsWith("EDIT:")) {
      const [, at] = credential.split(":");
      const c = credential.slice(`EDIT:${at}:`.length);
      const i = Number(at) % reader.key.length;
      credential = reader.key.slice(0, i) + c + reader.key.slice(i + 1);
      credentialOk = credential === reader.key;
    }
    let path = r.path;
    let pathOk: boolean;
    if (path.startsWith("NOOP:")) {
      // An allowed path with a no-op edit (trailing or doubled slashes, a query, %61 for "a").
      path = path.slice(5);
      pathOk = true;
    } else if (path.startsWith("TRICK:")) {
      path = path.slice(6);
      pathOk = false;
    } else {
      // Generated as an allowed path, or a random field that is one only if it has exactly that shape.
      pathOk = isReaderRoute(path);
    }
    const methodOk = r.method !== "" && isReaderMethod(r.method);
    const orgOk = r.org === "" || r.org === "acme";
    // A namespace the reader key (namespace "*") may name: a valid name that is not "*".
    const namespaceOk = r.namespace === "" || /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/.test(r.namespace);
    return { fields: { credential, path, method: r.method, namespace: r.namespace, org: r.org }, allow: credentialOk && pathOk && methodOk && orgOk && namespaceOk };
  }

  it("Connect JSON and binary: an allow only for a valid key, an allowed path and GET/HEAD", async () => {
    await property(fc.tuple(request, fc.constantFrom("json", "binary" as const)), async ([r, format]) => {
      const { fields, allow } = concrete(r);
      const verdict = await connectAuthorize(authorizeBody(fields, format), format === "json" ? "application/json" : "application/proto");
      judge(verdict, allow, { fields: { ...fields, credential: fields.credential === reader.key ? "VALID" : fields.credential }, format });
    });
  });

  it("gRPC: the same oracle", async () => {
    await property(request, async (r) => {
      const { fields, allow } = concrete(r);
      judge(await grpcAuthorize(authorizeBody(fields, "binary")), allow, { ...fields, credential: fields.credential === reader.key ? "VALID" : fields.credential });
    });
  });

  it("unknown fields: ignored in binary and JSON (same decision); garbage, truncated bytes and wrong content types never allow", async () => {
    const good = authorizeBody({ credential: reader.key, path: "/sandboxes", method: "GET" }, "binary");
    const unknownField = fc.tuple(fc.integer({ min: 7, max: 10_000 }), fc.uint8Array({ maxLength: 40 })).map(([number, payload]) => {
      const tag = Buffer.from(varint((number << 3) | 2));
      return Buffer.concat([tag, Buffer.from(varint(payload.length)), Buffer.from(payload)]);
    });
    const hostile = fc.oneof(
      unknownField.map((extra) => ({ kind: "binary-unknown" as const, body: Buffer.concat([good, extra]), type: "application/proto", allow: true })),
      fc.string({ maxLength: 20 }).map((name) => ({
        kind: "json-unknown" as const,
        body: Buffer.from(JSON.stringify({ credential: reader.key, path: "/sandboxes", method: "GET", [`x${name}`]: 1 })),
        type: "application/json",
        // Connect's JSON ignores unknown fields (as binary does): the same request.
        allow: true,
      })),
      fc.nat({ max: good.length - 1 }).map((cut) => ({ kind: "truncated" as const, body: good.subarray(0, cut), type: "application/proto", allow: cutIsWholeFields(good, cut) })),
      fc.uint8Array({ maxLength: 500 }).map((bytes) => ({ kind: "garbage" as const, body: Buffer.from(bytes), type: "application/proto", allow: false })),
      fc.uint8Array({ maxLength: 200 }).map((bytes) => ({ kind: "garbage-json" as const, body: Buffer.from(bytes), type: "application/json", allow: false })),
      fc.constantFrom("text/plain", "application/xml", "application/grpc-web+proto", "application/connect+proto", "", "application/proto; charset=binary").map((type) => ({
        kind: "content-type" as const,
        body: good,
        type,
        allow: false,
      })),
    );
    await property(hostile, async (h) => {
      // A truncation that drops whole fields can still be a well-formed allowed request only if it kept all three.
      judge(await connectAuthorize(h.body, h.type), h.allow, { kind: h.kind, bytes: h.body.toString("hex").slice(0, 200), type: h.type });
    });
  });
});

/** The reader's routes in the default policy, as plain paths (no encoding, no extra slashes). */
function isReaderRoute(path: string): boolean {
  const seg = "[A-Za-z0-9_-]+";
  return new RegExp(`^/(sandboxes|v2/sandboxes|templates|snapshots|volumes|sandboxes/${seg}|sandboxes/${seg}/logs|templates/${seg}|templates/${seg}/builds/${seg}/status|volumes/${seg})$`).test(path);
}

/** Whether `good` cut at `cut` still holds credential, path and method whole (then it is the same request). */
function cutIsWholeFields(good: Buffer, cut: number): boolean {
  // Fields are written in order 1, 2, 3; a cut is harmless only past the last byte.
  return cut >= good.length;
}

function varint(value: number): number[] {
  const out: number[] = [];
  let v = value >>> 0;
  while (v > 0x7f) {
    out.push((v & 0x7f) | 0x80);
    v >>>= 7;
  }
  out.push(v);
  return out;
}

describe("ManageKey under hostile messages", () => {
  const text = fc.oneof(fc.string({ maxLength: 40 }), fc.string({ unit: "binary", maxLength: 80 }), fc.constantFrom("", "*", "acme", "admin", "key_AAAAAAAAAAAAAAAAAAAA", "\u0000", "key_\u0000", "acme\u0000"));
  const action: fc.Arbitrary<NonNullable<MessageInitShape<typeof ManageKeyRequestSchema>["action"]>> = fc.oneof(
    fc.record({ name: text, org: text, namespace: text, roles: fc.array(text, { maxLength: 3 }), rateLimit: text }).map((value) => ({ case: "create" as const, value })),
    text.map((id) => ({ case: "get" as const, value: { id } })),
    fc.record({ org: text, namespace: text, pageSize: fc.integer({ min: 0, max: 4_000_000_000 }), pageToken: text }).map((value) => ({ case: "list" as const, value })),
    fc.record({ id: text, name: text }).map((value) => ({ case: "update" as const, value })),
    text.map((id) => ({ case: "revoke" as const, value: { id } })),
    fc.record({ id: text, grace: text }).map((value) => ({ case: "rotate" as const, value })),
    text.map((id) => ({ case: "delete" as const, value: { id } })),
    text.map((org) => ({ case: "resetAll" as const, value: { org } })),
  );
  const caller = fc.oneof(fc.constant("none"), fc.constant("reader"), fc.constant("admin"), text.map((t) => `raw:${t}`));

  it("no caller but an admin key ever changes anything; random ids are never found; never 5xx or a hang", async () => {
    await property(fc.tuple(caller, action, fc.constantFrom("json", "binary" as const), fc.boolean()), async ([who, act, format, unknown]) => {
      // An admin may not reset or create here (that would change the keys the other properties use); it reads and touches random ids.
      if (who === "admin" && (act.case === "resetAll" || act.case === "create")) return;
      const message: ManageKeyRequest = create(ManageKeyRequestSchema, { action: act });
      let body = format === "json" ? Buffer.from(toJsonString(ManageKeyRequestSchema, message)) : Buffer.from(toBinary(ManageKeyRequestSchema, message));
      if (unknown && format === "binary") body = Buffer.concat([body, Buffer.from([0xfa, 0x3e, 0x01, 0x00])]);
      const headers: Record<string, string> = { "content-type": format === "json" ? "application/json" : "application/proto" };
      if (who === "reader") headers["authorization"] = `Bearer ${reader.key}`;
      if (who === "admin") headers["authorization"] = `Bearer ${admin.key}`;
      if (who.startsWith("raw:")) headers["x-api-key"] = Buffer.from(who.slice(4), "utf8").toString("latin1").replace(/[\r\n\0]/g, "") || "x";
      const response = await timed(
        "manage",
        fetch(`${server.url}/keygate.v1.KeyService/ManageKey`, { method: "POST", headers, body, signal: AbortSignal.timeout(ANSWER_WITHIN_MS) }).catch((error: unknown) => {
          // fetch refuses some header values itself (a client-side error): nothing reached the server.
          if (error instanceof TypeError && /header/i.test(String((error as Error & { cause?: unknown }).cause ?? error.message))) return undefined;
          throw error;
        }),
      );
      if (response === undefined) return;
      const answer = await response.text();
      watch.text("manage body", answer);
      if (response.status === 500) {
        expect(answer).toMatch(/"code":"internal","message":"parse binary: /);
        unparseableBinary++;
        return;
      }
      expect(response.status, answer.slice(0, 300)).toBeLessThan(500);
      const succeeded = response.status === 200;
      // Success only for an admin's read (get of a real id cannot happen: random ids; list may succeed).
      const mayRead = who === "admin" && act.case === "list";
      if (succeeded && !mayRead) figures.allowsForMalformed++;
      expect(succeeded && !mayRead, `${who} ${act.case} ${format}: ${answer.slice(0, 300)}`).toBe(false);
      // No key: unauthenticated, unless the message itself is refused first (JSON out of range: 400).
      if (who === "none" || who.startsWith("raw:")) expect([400, 401], answer.slice(0, 200)).toContain(response.status);
    });
  });
});

describe("the end", () => {
  it("the server never crashed and no key appears in any output, body or trace", async () => {
    await knownGoodStillAllowed();
    expect(server.child.exitCode).toBeNull();
    expect(server.output()).not.toMatch(/"level":"(error|fatal)"/);
    await new Promise((resolve) => setTimeout(resolve, 400));
    watch.text("keygate serve output (so far)", server.output());
    expect(watch.leaks()).toEqual([]);
    expect(figures.allowsForMalformed).toBe(0);
    expect(figures.crashes).toBe(0);
  });
});
