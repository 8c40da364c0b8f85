import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { createGrpcWebTransport as createFetchGrpcWebTransport } from "@connectrpc/connect-web";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason, type AuthorizeResponse } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService, ManageKeyRequestSchema, type ManageKeyRequest, type ManageKeyResponse } from "../../gen/keygate/v1/key_pb.js";
import { grpcClient, unary, type GrpcClient } from "../support/grpc-js.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { policyLine } from "../support/policy-lines.js";

/**
 * Authorize and ManageKey as clients call them: one real server on port 0,
 * reached by grpc-js, Connect (HTTP/1.1 and h2c), gRPC and gRPC-Web, all on
 * the one port; keys made with the real CLI.
 */

let data: TestDataDir;
let server: ServerProcess;
let h2: Http2SessionManager;
let grpcJs: GrpcAuthorizeClient;

const keys = {} as Record<"admin" | "writer" | "reader" | "alphaWriter" | "revoked" | "revokedAdmin" | "globexAdmin" | "alphaAdmin", CreatedKeyJson>;

beforeAll(async () => {
  data = await createTestDataDir();
  const cli = { cwd: data.dir, env: data.env };
  server = await startServerProcess([], cli);
  // Made while the server runs: on PGlite the CLI goes through its control socket.
  keys.admin = await createKey(["--org", "acme", "--role", "admin", "--name", "acme-admin"], cli);
  keys.writer = await createKey(["--org", "acme", "--role", "writer", "--name", "acme-writer"], cli);
  keys.reader = await createKey(["--org", "acme", "--role", "reader", "--name", "acme-reader"], cli);
  keys.alphaWriter = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "writer", "--name", "alpha-writer"], cli);
  keys.alphaAdmin = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "admin", "--expire", "7d", "--name", "alpha-admin"], cli);
  keys.globexAdmin = await createKey(["--org", "globex", "--role", "admin", "--name", "globex-admin"], cli);
  keys.revoked = await createKey(["--org", "acme", "--role", "reader", "--name", "gone"], cli);
  keys.revokedAdmin = await createKey(["--org", "acme", "--role", "admin", "--name", "gone-admin"], cli);
  for (const key of [keys.revoked, keys.revokedAdmin]) {
    const revoked = await runCli(["keys", "revoke", key.id], cli);
    expect(revoked.code, revoked.stderr).toBe(0);
  }
  h2 = new Http2SessionManager(server.url);
  grpcJs = createGrpcJsClient(server.port);
});

afterAll(async () => {
  grpcJs?.close();
  h2?.abort();
  const code = await server?.stop();
  await data?.dispose();
  expect(code).toBe(0);
});

// --- clients --------------------------------------------------------------

/** A decision as it appears on the wire, whichever client read it. */
interface WireDecision {
  allowed: boolean;
  reason: string;
  message: string;
  key: { id: string; name: string; org: string; namespace: string; roles: string[] } | null;
  matched_rule: string;
}

interface AuthorizeInput {
  credential: string;
  path: string;
  method: string;
  namespace?: string;
  org?: string;
}

type GrpcAuthorizeResponse = WireDecision & { rate_limit: unknown; explanation: unknown };
type GrpcAuthorizeClient = grpc.Client & {
  authorize(request: object, callback: (error: grpc.ServiceError | null, response: GrpcAuthorizeResponse) => void): void;
};

/** grpc-js with proto-loader on the .proto file: the client a non-TypeScript team would write. */
function createGrpcJsClient(port: number): GrpcAuthorizeClient {
  return grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", port) as unknown as GrpcAuthorizeClient;
}

function fromProtobufEs(response: AuthorizeResponse): WireDecision {
  return {
    allowed: response.allowed,
    reason: `REASON_${Reason[response.reason]}`,
    message: response.message,
    key: response.key
      ? { id: response.key.id, name: response.key.name, org: response.key.org, namespace: response.key.namespace, roles: [...response.key.roles] }
      : null,
    matched_rule: response.matchedRule,
  };
}

type AuthorizeCall = (input: AuthorizeInput) => Promise<{ decision: WireDecision; raw: string }>;

function viaTransport(transport: () => Transport): AuthorizeCall {
  return async (input) => {
    const response = await createClient(AuthorizeService, transport()).authorize({ namespace: "", org: "", ...input });
    return { decision: fromProtobufEs(response), raw: JSON.stringify(response) };
  };
}

const CLIENTS: [string, AuthorizeCall][] = [
  [
    "grpc-js + proto-loader (h2c, insecure)",
    (input) =>
      new Promise((done, fail) =>
        grpcJs.authorize({ namespace: "", org: "", ...input }, (error, response) => {
          if (error) return fail(error);
          const { rate_limit: _, explanation: __, ...decision } = response;
          done({ decision: { ...decision, key: decision.key && { ...decision.key, roles: [...decision.key.roles] } }, raw: JSON.stringify(response) });
        }),
      ),
  ],
  ["Connect over HTTP/1.1", viaTransport(() => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }))],
  ["Connect over HTTP/2 (h2c)", viaTransport(() => createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 }))],
  ["gRPC (connect-node createGrpcTransport)", viaTransport(() => createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }))],
  ["gRPC-Web (connect-node, HTTP/1.1)", viaTransport(() => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" }))],
  ["gRPC-Web (connect-web, fetch)", viaTransport(() => createFetchGrpcWebTransport({ baseUrl: server.url }))],
];

// --- Authorize --------------------------------------------------------------

const RULE = {
  readerSandbox: () => policyLine("p, reader, *, *, /sandboxes/:id, ^(GET|HEAD)$"),
  writerDeleteSandbox: () => policyLine("p, writer, *, *, /sandboxes/:id, ^DELETE$"),
  writerPause: () => policyLine("p, writer, *, *, /sandboxes/:id/pause, ^POST$"),
};

type KeyName = keyof typeof keys;

interface AuthorizeCase {
  name: string;
  /** A key from `keys`, or a literal credential. */
  key: KeyName | { literal: string };
  input: Omit<AuthorizeInput, "credential">;
  allowed: boolean;
  reason: string;
  message: string;
  /** Whose identity comes back, if any. */
  identity: KeyName | null;
  /** The rule that decided. */
  rule: (() => string) | "";
}

const AUTHORIZE_CASES: AuthorizeCase[] = [
  { name: "reader may GET a sandbox", key: "reader", input: { path: "/sandboxes/abc", method: "GET" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "reader", rule: RULE.readerSandbox },
  { name: "reader may not DELETE a sandbox", key: "reader", input: { path: "/sandboxes/abc", method: "DELETE" }, allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to DELETE /sandboxes/abc", identity: "reader", rule: "" },
  { name: "writer may DELETE a sandbox", key: "writer", input: { path: "/sandboxes/abc", method: "DELETE" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "writer", rule: RULE.writerDeleteSandbox },
  { name: "writer inherits reader's GET", key: "writer", input: { path: "/sandboxes/abc", method: "GET" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "writer", rule: RULE.readerSandbox },
  { name: "a lower-case method is upper-cased", key: "writer", input: { path: "/sandboxes/abc", method: "delete" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "writer", rule: RULE.writerDeleteSandbox },
  { name: "admin inherits writer's pause", key: "admin", input: { path: "/sandboxes/abc/pause", method: "POST" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "admin", rule: RULE.writerPause },
  { name: "admin may not PUT where no route is (no catch-all)", key: "admin", input: { path: "/anything/at/all", method: "PUT" }, allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to PUT /anything/at/all", identity: "admin", rule: "" },
  { name: "no method: admin may not use every method either", key: "admin", input: { path: "/sandboxes/abc", method: "" }, allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to POST /sandboxes/abc", identity: "admin", rule: "" },
  { name: "no method: reader may not use every method", key: "reader", input: { path: "/sandboxes/abc", method: "" }, allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to POST /sandboxes/abc", identity: "reader", rule: "" },
  { name: "the query string is never matched", key: "reader", input: { path: "/sandboxes/abc?delete=/templates", method: "GET" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "reader", rule: RULE.readerSandbox },
  { name: "missing credential", key: { literal: "" }, input: { path: "/sandboxes/abc", method: "GET" }, allowed: false, reason: "REASON_MISSING_CREDENTIAL", message: "missing API key in Authorization header", identity: null, rule: "" },
  { name: "unknown key", key: { literal: "sk-sb-0000000000000000000000000000000000000000000000" }, input: { path: "/sandboxes/abc", method: "GET" }, allowed: false, reason: "REASON_INVALID_KEY", message: "invalid API key", identity: null, rule: "" },
  { name: "not a key at all", key: { literal: "hunter2" }, input: { path: "/sandboxes/abc", method: "GET" }, allowed: false, reason: "REASON_INVALID_KEY", message: "invalid API key", identity: null, rule: "" },
  { name: "revoked key", key: "revoked", input: { path: "/sandboxes/abc", method: "GET" }, allowed: false, reason: "REASON_REVOKED", message: "API key has been revoked", identity: "revoked", rule: "" },
  { name: "org given and equal to the key's", key: "reader", input: { path: "/sandboxes/abc", method: "GET", org: "acme" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "reader", rule: RULE.readerSandbox },
  { name: "org given and not the key's", key: "admin", input: { path: "/sandboxes/abc", method: "GET", org: "globex" }, allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to GET /sandboxes/abc", identity: "admin", rule: "" },
  { name: "namespace-scoped key in its namespace", key: "alphaWriter", input: { path: "/sandboxes/abc", method: "DELETE", namespace: "team-alpha" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "alphaWriter", rule: RULE.writerDeleteSandbox },
  { name: "namespace-scoped key, no namespace given", key: "alphaWriter", input: { path: "/sandboxes/abc", method: "DELETE" }, allowed: true, reason: "REASON_ALLOWED", message: "", identity: "alphaWriter", rule: RULE.writerDeleteSandbox },
  { name: "namespace-scoped key in another namespace", key: "alphaWriter", input: { path: "/sandboxes/abc", method: "DELETE", namespace: "team-beta" }, allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to DELETE /sandboxes/abc", identity: "alphaWriter", rule: "" },
  { name: "a .. segment is a bad request", key: "admin", input: { path: "/sandboxes/../templates", method: "GET" }, allowed: false, reason: "REASON_BAD_REQUEST", message: 'path contains a ".." segment', identity: null, rule: "" },
  { name: "an unknown method is a bad request", key: "admin", input: { path: "/sandboxes/abc", method: "TRACE" }, allowed: false, reason: "REASON_BAD_REQUEST", message: 'unknown HTTP method "TRACE"', identity: null, rule: "" },
];

describe.each(CLIENTS)("Authorize via %s", (_, call) => {
  it.each(AUTHORIZE_CASES)("$name", async ({ key, input, allowed, reason, message, identity, rule }) => {
    const credential = typeof key === "string" ? keys[key].key : key.literal;
    const { decision, raw } = await call({ credential, ...input });
    const who = identity && keys[identity];
    expect(decision).toEqual({
      allowed,
      reason,
      message,
      key: who ? { id: who.id, name: who.name, org: who.org, namespace: who.namespace, roles: who.roles } : null,
      matched_rule: rule === "" ? "" : rule(),
    });
    if (allowed) expect(decision.matched_rule).toMatch(/^policy\.csv:\d+$/);
    // The identity is never the secret.
    for (const created of Object.values(keys)) expect(raw).not.toContain(created.key);
  });
});

describe("grpc-js: what the README's loader options (GRPC_JS_LOADER_OPTIONS) change", () => {
  const deny = () => ({ credential: keys.reader.key, path: "/sandboxes/abc", method: "DELETE" });

  it("with them, a deny reads allowed: false, the reason by name, every field present", async () => {
    const response = await unary<Record<string, unknown>>(grpcJs as unknown as GrpcClient, "Authorize", deny());
    expect(response.allowed).toBe(false);
    expect(response).toMatchObject({ reason: "REASON_FORBIDDEN", message: "API key is not allowed to DELETE /sandboxes/abc", matched_rule: "", rate_limit: null, explanation: [] });
  });

  it("with proto-loader's own defaults, the same deny reads allowed: undefined and reason 6", async () => {
    // proto3 leaves a false bool and an empty string off the wire; only defaults: true puts them back.
    const bare = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port, {});
    try {
      const response = await unary<Record<string, unknown>>(bare, "Authorize", deny());
      expect(response.allowed).toBeUndefined();
      expect(response.reason).toBe(Reason.FORBIDDEN);
      expect(response).not.toHaveProperty("matched_rule");
    } finally {
      bare.close();
    }
  });
});

// --- ManageKey --------------------------------------------------------------

function keyClient(headers: Record<string, string>, transport: "connect" | "grpc" | "grpc-web" = "connect"): Client<typeof KeyService> {
  const auth: Interceptor = (next) => (req) => {
    for (const [name, value] of Object.entries(headers)) req.header.set(name, value);
    return next(req);
  };
  const interceptors = [auth];
  switch (transport) {
    case "connect":
      return createClient(KeyService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors }));
    case "grpc":
      return createClient(KeyService, createGrpcTransport({ baseUrl: server.url, sessionManager: h2, interceptors }));
    case "grpc-web":
      return createClient(KeyService, createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1", interceptors }));
  }
}

const bearer = (key: CreatedKeyJson) => ({ Authorization: `Bearer ${key.key}` });
const xApiKey = (key: CreatedKeyJson) => ({ "X-API-Key": key.key });

/** JSON of a protobuf-es message (timestamps hold bigints). */
function stringify(value: unknown): string {
  return JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
}

function manage(client: Client<typeof KeyService>, action: ManageKeyRequest["action"]): Promise<ManageKeyResponse> {
  return client.manageKey(create(ManageKeyRequestSchema, { action }));
}

async function authorizeOverConnect(credential: string, path = "/sandboxes/abc", method = "GET"): Promise<WireDecision> {
  const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
  return fromProtobufEs(await client.authorize({ credential, path, method, namespace: "", org: "" }));
}

async function expectRpcError(promise: Promise<unknown>, code: Code, message?: string | RegExp): Promise<ConnectError> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error, "the call should have failed").toBeInstanceOf(ConnectError);
  const connectError = error as ConnectError;
  expect(Code[connectError.code]).toBe(Code[code]);
  if (typeof message === "string") expect(connectError.rawMessage).toBe(message);
  else if (message) expect(connectError.rawMessage).toMatch(message);
  return connectError;
}

const list = { case: "list" as const, value: { $typeName: "keygate.v1.ListKeysAction" as const, org: "", namespace: "", pageSize: 0, pageToken: "" } };

describe.each([
  ["Authorization: Bearer, over Connect", bearer, "connect"],
  ["X-API-Key, over Connect", xApiKey, "connect"],
  ["Authorization: Bearer, over gRPC", bearer, "grpc"],
  ["X-API-Key, over gRPC-Web", xApiKey, "grpc-web"],
] as const)("ManageKey with an admin key in %s", (_, header, transport) => {
  let admin: Client<typeof KeyService>;
  let made: { id: string; plaintext: string };

  beforeAll(() => {
    admin = keyClient(header(keys.admin), transport);
  });

  it("create: returns the plaintext once; the key is in the caller's org and works at once", async () => {
    const response = await manage(admin, { case: "create", value: { $typeName: "keygate.v1.CreateKeyAction", name: "made-over-the-wire", org: "", namespace: "", roles: ["reader"], expiry: { case: undefined }, rateLimit: "" } });
    expect(response.result.case).toBe("created");
    if (response.result.case !== "created") return;
    const { key, plaintext } = response.result.value;
    expect(plaintext).toMatch(/^sk-sb-[0-9A-Za-z]{32,}$/);
    expect(key).toMatchObject({ name: "made-over-the-wire", org: "acme", namespace: "*", roles: ["reader"], enabled: true, createdBy: keys.admin.id });
    expect(plaintext.startsWith(key!.displayPrefix)).toBe(true);
    made = { id: key!.id, plaintext };
    expect(await authorizeOverConnect(plaintext)).toMatchObject({ allowed: true, key: { id: made.id } });
  });

  it("get: metadata only, never the secret", async () => {
    const response = await manage(admin, { case: "get", value: { $typeName: "keygate.v1.GetKeyAction", id: made.id } });
    expect(response.result.case).toBe("key");
    expect(response.result.value).toMatchObject({ id: made.id, org: "acme", roles: ["reader"] });
    expect(stringify(response)).not.toContain(made.plaintext);
  });

  it("list: the caller's org only", async () => {
    const response = await manage(admin, list);
    if (response.result.case !== "page") throw new Error(`expected a page, got ${response.result.case}`);
    const ids = response.result.value.keys.map((k) => k.id);
    expect(ids).toEqual(expect.arrayContaining([made.id, keys.admin.id, keys.reader.id]));
    expect(ids).not.toContain(keys.globexAdmin.id);
    expect(new Set(response.result.value.keys.map((k) => k.org))).toEqual(new Set(["acme"]));
    expect(stringify(response)).not.toMatch(/sk-sb-[0-9A-Za-z]{20,}/);
  });

  it("rotate: the new key works at once and the old one keeps working", async () => {
    const response = await manage(admin, { case: "rotate", value: { $typeName: "keygate.v1.RotateKeyAction", id: made.id, grace: "" } });
    if (response.result.case !== "created") throw new Error(`expected a created key, got ${response.result.case}`);
    const { key, plaintext } = response.result.value;
    expect(key).toMatchObject({ rotatedFrom: made.id, org: "acme", roles: ["reader"] });
    expect(plaintext).not.toBe(made.plaintext);
    expect(await authorizeOverConnect(plaintext)).toMatchObject({ allowed: true, key: { id: key!.id } });
    expect(await authorizeOverConnect(made.plaintext)).toMatchObject({ allowed: true, key: { id: made.id } });
    const cleanup = await manage(admin, { case: "delete", value: { $typeName: "keygate.v1.DeleteKeyAction", id: key!.id } });
    expect(cleanup.result.case).toBe("deleted");
  });

  it("revoke: the key stops working at once", async () => {
    const response = await manage(admin, { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", id: made.id } });
    expect(response.result.case).toBe("key");
    expect(response.result.value).toMatchObject({ id: made.id, enabled: false });
    expect(await authorizeOverConnect(made.plaintext)).toMatchObject({ allowed: false, reason: "REASON_REVOKED", message: "API key has been revoked" });
  });

  it("delete: gone for get, and invalid for Authorize", async () => {
    const response = await manage(admin, { case: "delete", value: { $typeName: "keygate.v1.DeleteKeyAction", id: made.id } });
    expect(response.result).toMatchObject({ case: "deleted", value: { id: made.id } });
    await expectRpcError(manage(admin, { case: "get", value: { $typeName: "keygate.v1.GetKeyAction", id: made.id } }), Code.NotFound, `key ${made.id} not found`);
    expect(await authorizeOverConnect(made.plaintext)).toMatchObject({ allowed: false, reason: "REASON_INVALID_KEY", message: "invalid API key" });
  });
});

describe("ManageKey refuses callers it cannot authenticate", () => {
  it.each([
    ["no credential header", {}, "missing API key in Authorization header"],
    ["an empty Bearer", { Authorization: "Bearer " }, "missing API key in Authorization header"],
    ["another Authorization scheme", { Authorization: "Basic YWRtaW46YWRtaW4=" }, "missing API key in Authorization header"],
    ["an unknown key in Authorization", { Authorization: "Bearer sk-sb-0000000000000000000000000000000000000000000000" }, "invalid API key"],
    ["an unknown key in X-API-Key", { "X-API-Key": "not-a-key" }, "invalid API key"],
  ])("%s → Unauthenticated", async (_, headers, message) => {
    await expectRpcError(manage(keyClient(headers), list), Code.Unauthenticated, message);
  });

  it("a revoked admin key → Unauthenticated, API key has been revoked", async () => {
    await expectRpcError(manage(keyClient(bearer(keys.revokedAdmin)), list), Code.Unauthenticated, "API key has been revoked");
  });

  it.each<[KeyName, string, ManageKeyRequest["action"]]>([
    ["writer", "list", list],
    ["writer", "create", { case: "create", value: { $typeName: "keygate.v1.CreateKeyAction", name: "", org: "", namespace: "", roles: ["reader"], expiry: { case: undefined }, rateLimit: "" } }],
    ["reader", "get", { case: "get", value: { $typeName: "keygate.v1.GetKeyAction", id: "key_00000000000000000000" } }],
    ["writer", "reset_all", { case: "resetAll", value: { $typeName: "keygate.v1.ResetAllAction", org: "" } }],
  ])("a %s key may not %s keys → PermissionDenied", async (who, _, action) => {
    await expectRpcError(manage(keyClient(bearer(keys[who])), action), Code.PermissionDenied, /^API key is not allowed to (GET|POST) keys/);
  });
});

describe("ManageKey keeps orgs apart and never escalates", () => {
  let acme: Client<typeof KeyService>;
  let alpha: Client<typeof KeyService>;
  let globex: Client<typeof KeyService>;
  const createAction = (fields: Partial<{ name: string; org: string; namespace: string; roles: string[]; expiresIn: string }>): ManageKeyRequest["action"] => ({
    case: "create",
    value: {
      $typeName: "keygate.v1.CreateKeyAction",
      name: fields.name ?? "",
      org: fields.org ?? "",
      namespace: fields.namespace ?? "",
      roles: fields.roles ?? [],
      expiry: fields.expiresIn ? { case: "expiresIn", value: fields.expiresIn } : { case: undefined },
      rateLimit: "",
    },
  });

  beforeAll(() => {
    acme = keyClient(bearer(keys.admin));
    alpha = keyClient(xApiKey(keys.alphaAdmin));
    globex = keyClient(bearer(keys.globexAdmin));
  });

  it("another org's key does not exist for get, update, revoke, rotate or delete", async () => {
    const id = keys.globexAdmin.id;
    const notFound = `key ${id} not found`;
    await expectRpcError(manage(acme, { case: "get", value: { $typeName: "keygate.v1.GetKeyAction", id } }), Code.NotFound, notFound);
    await expectRpcError(manage(acme, { case: "revoke", value: { $typeName: "keygate.v1.RevokeKeyAction", id } }), Code.NotFound, notFound);
    await expectRpcError(manage(acme, { case: "rotate", value: { $typeName: "keygate.v1.RotateKeyAction", id, grace: "0s" } }), Code.NotFound, notFound);
    await expectRpcError(manage(acme, { case: "delete", value: { $typeName: "keygate.v1.DeleteKeyAction", id } }), Code.NotFound, notFound);
    await expectRpcError(
      manage(acme, { case: "update", value: { $typeName: "keygate.v1.UpdateKeyAction", id, enabled: false, expiry: { case: undefined }, rateLimitChange: { case: undefined }, maxSandboxesChange: { case: undefined } } }),
      Code.NotFound,
      notFound,
    );
    expect(await authorizeOverConnect(keys.globexAdmin.key)).toMatchObject({ allowed: true, key: { id } });
  });

  it("listing or creating in another org is PermissionDenied", async () => {
    await expectRpcError(manage(acme, { ...list, value: { ...list.value, org: "globex" } }), Code.PermissionDenied);
    await expectRpcError(manage(acme, createAction({ org: "globex", roles: ["reader"] })), Code.PermissionDenied, /another org/);
    const globexList = await manage(globex, list);
    if (globexList.result.case !== "page") throw new Error("expected a page");
    expect(globexList.result.value.keys.map((k) => k.id)).toEqual([keys.globexAdmin.id]);
  });

  it("a namespace-scoped admin sees only its namespace", async () => {
    await expectRpcError(manage(alpha, { case: "get", value: { $typeName: "keygate.v1.GetKeyAction", id: keys.admin.id } }), Code.NotFound);
    const page = await manage(alpha, list);
    if (page.result.case !== "page") throw new Error("expected a page");
    expect(new Set(page.result.value.keys.map((k) => k.namespace))).toEqual(new Set(["team-alpha"]));
    await expectRpcError(manage(alpha, { ...list, value: { ...list.value, namespace: "team-beta" } }), Code.PermissionDenied);
  });

  it.each([
    ["every namespace", { namespace: "*" }, /namespace/],
    ["another namespace", { namespace: "team-beta" }, /namespace/],
    ["another org", { org: "globex" }, /another org/],
    ["a role it does not hold", { roles: ["superuser"] }, /roles it does not hold: superuser/],
    ["a later expiry than its own", { expiresIn: "1y" }, /expiry later than its own/],
  ])("a scoped, expiring admin may not mint a key with %s", async (_, fields, message) => {
    await expectRpcError(manage(alpha, createAction({ roles: ["reader"], ...fields })), Code.PermissionDenied, message);
  });

  it("what a scoped admin mints inherits its namespace and expiry, and cannot be raised later", async () => {
    const response = await manage(alpha, createAction({ name: "alpha-child", roles: ["reader"] }));
    if (response.result.case !== "created") throw new Error("expected a created key");
    const child = response.result.value.key!;
    expect(child).toMatchObject({ org: "acme", namespace: "team-alpha", roles: ["reader"], createdBy: keys.alphaAdmin.id });
    expect(child.expiresAt?.seconds).toBe(BigInt(Math.floor(Date.parse(keys.alphaAdmin.expires_at!) / 1000)));
    await expectRpcError(
      manage(alpha, { case: "update", value: { $typeName: "keygate.v1.UpdateKeyAction", id: child.id, expiry: { case: "neverExpires", value: true }, rateLimitChange: { case: undefined }, maxSandboxesChange: { case: undefined } } }),
      Code.PermissionDenied,
      /expiry later than its own/,
    );
    await expectRpcError(
      manage(alpha, { case: "update", value: { $typeName: "keygate.v1.UpdateKeyAction", id: child.id, roles: { $typeName: "keygate.v1.RoleList", roles: ["superuser"] }, expiry: { case: undefined }, rateLimitChange: { case: undefined }, maxSandboxesChange: { case: undefined } } }),
      Code.PermissionDenied,
      /superuser/,
    );
    await manage(alpha, { case: "delete", value: { $typeName: "keygate.v1.DeleteKeyAction", id: child.id } });
  });

  it("reset_all by a key resets its own org only", async () => {
    await expectRpcError(manage(acme, { case: "resetAll", value: { $typeName: "keygate.v1.ResetAllAction", org: "globex" } }), Code.PermissionDenied);
    const response = await manage(globex, { case: "resetAll", value: { $typeName: "keygate.v1.ResetAllAction", org: "" } });
    expect(response.result).toMatchObject({ case: "resetAll", value: { revokedCount: 1 } });
    expect(await authorizeOverConnect(keys.globexAdmin.key)).toMatchObject({ allowed: false, reason: "REASON_REVOKED" });
    expect(await authorizeOverConnect(keys.admin.key)).toMatchObject({ allowed: true });
  });
});
