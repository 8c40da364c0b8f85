import http from "node:http";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { createGrpcWebTransport as createFetchGrpcWebTransport } from "@connectrpc/connect-web";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason, type AuthorizeResponse, type AuthorizeStreamRequest } from "../../gen/keygate/v1/authorize_pb.js";
import { generateKey } from "../../src/core/keys/key-format.js";
import { grpcClient, streamReader } from "../support/grpc-js.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";

/**
 * AuthorizeStream as clients call it, against one real server on port 0:
 * thousands of requests pipelined on one stream get, id for id, the answer
 * unary Authorize gives; cancellation leaves the server healthy; HTTP/1.1
 * and browsers get the refusal the proto documents.
 */

const PIPELINED = 2_000;
const PATH = "/keygate.v1.AuthorizeService/AuthorizeStream";

let data: TestDataDir;
let server: ServerProcess;
let h2: Http2SessionManager;
let grpcJs: GrpcAuthorizeClient;
const keys = {} as Record<"admin" | "writer" | "reader" | "alphaWriter" | "revoked", CreatedKeyJson>;

beforeAll(async () => {
  data = await createTestDataDir();
  const cli = { cwd: data.dir, env: data.env };
  server = await startServerProcess([], cli);
  keys.admin = await createKey(["--org", "acme", "--role", "admin", "--name", "stream-admin"], cli);
  keys.writer = await createKey(["--org", "acme", "--role", "writer", "--name", "stream-writer"], cli);
  keys.reader = await createKey(["--org", "acme", "--role", "reader", "--name", "stream-reader"], cli);
  keys.alphaWriter = await createKey(["--org", "acme", "--namespace", "team-alpha", "--role", "writer", "--name", "stream-alpha"], cli);
  keys.revoked = await createKey(["--org", "acme", "--role", "reader", "--name", "stream-gone"], cli);
  const revoked = await runCli(["keys", "revoke", keys.revoked.id], cli);
  expect(revoked.code, revoked.stderr).toBe(0);
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

// --- the requests -------------------------------------------------------------------

interface Request {
  credential: string;
  path: string;
  method: string;
  namespace: string;
  org: string;
  explain: boolean;
}

/** One of each kind of answer; the stream sends them over and over, interleaved. */
function requestKinds(): Request[] {
  const request = (credential: string, path: string, method: string, more: Partial<Request> = {}): Request => ({ credential, path, method, namespace: "", org: "", explain: false, ...more });
  return [
    request(keys.reader.key, "/sandboxes/abc", "GET"), // allowed
    request(keys.reader.key, "/sandboxes/abc", "DELETE"), // forbidden
    request(keys.reader.key, "/sandboxes/abc", "DELETE", { explain: true }), // forbidden; explain ignored on the public port
    request(keys.writer.key, "/sandboxes/abc", "DELETE"), // allowed
    request(keys.admin.key, "/sandboxes/abc/pause", "POST"), // allowed
    request(keys.admin.key, "/anything/at/all", "PUT"), // forbidden: no route, and admin has no catch-all
    request(keys.admin.key, "/sandboxes/abc", ""), // forbidden: not every method
    request(keys.admin.key, "/sandboxes/abc", "GET", { org: "globex" }), // forbidden: wrong org
    request(keys.alphaWriter.key, "/sandboxes/abc", "DELETE", { namespace: "team-alpha" }), // allowed
    request(keys.alphaWriter.key, "/sandboxes/abc", "DELETE", { namespace: "team-beta" }), // forbidden: wrong namespace
    request(keys.revoked.key, "/sandboxes/abc", "GET"), // revoked
    request("hunter2", "/sandboxes/abc", "GET"), // invalid: not a key
    request(generateKey(), "/sandboxes/abc", "GET"), // invalid: well formed, unknown (a database lookup)
    request(generateKey(), "/sandboxes/abc", "GET"),
    request("", "/sandboxes/abc", "GET"), // missing credential
    request(keys.admin.key, "/sandboxes/../templates", "GET"), // bad request
    request(keys.admin.key, "/sandboxes/abc", "TRACE"), // bad request
  ];
}

/** Request i of the pipelined stream: kind i mod the number of kinds. */
const kindOf = (kinds: Request[], id: number) => id % kinds.length;

// --- clients ------------------------------------------------------------------------

type GrpcAuthorizeClient = grpc.Client & {
  authorize(request: object, callback: (error: grpc.ServiceError | null, response: object) => void): void;
  authorizeStream(): grpc.ClientDuplexStream<{ id: string; request: Request }, { id: string; response: object }>;
};

/** grpc-js with proto-loader on the .proto file: the client a non-TypeScript team would write. */
function createGrpcJsClient(port: number): GrpcAuthorizeClient {
  return grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", port) as unknown as GrpcAuthorizeClient;
}

/** Requests in, answers (id → response) out, and the unary answer to compare with. */
interface StreamClient {
  stream(requests: Request[]): Promise<{ id: string; response: unknown }[]>;
  unary(request: Request): Promise<unknown>;
}

const grpcJsClient: StreamClient = {
  stream: (requests) =>
    new Promise((done, fail) => {
      const answers: { id: string; response: unknown }[] = [];
      const call = grpcJs.authorizeStream();
      call.on("data", (answer: { id: string; response: unknown }) => answers.push(answer));
      call.on("error", fail);
      call.on("status", (status: grpc.StatusObject) => (status.code === grpc.status.OK ? done(answers) : fail(new Error(status.details))));
      for (const [id, request] of requests.entries()) call.write({ id: String(id), request });
      call.end();
    }),
  unary: (request) => new Promise((done, fail) => grpcJs.authorize(request, (error, response) => (error ? fail(error) : done(response)))),
};

function connectClient(transport: () => Transport): StreamClient {
  return {
    async stream(requests) {
      const answers: { id: string; response: unknown }[] = [];
      for await (const answer of createClient(AuthorizeService, transport()).authorizeStream(streamOf(requests))) {
        answers.push({ id: answer.id.toString(), response: answer.response });
      }
      return answers;
    },
    unary: (request) => createClient(AuthorizeService, transport()).authorize(request),
  };
}

async function* streamOf(requests: Request[]): AsyncGenerator<Omit<AuthorizeStreamRequest, "$typeName">> {
  for (const [id, request] of requests.entries()) yield { id: BigInt(id), request: { $typeName: "keygate.v1.AuthorizeRequest", ...request } };
}

const CLIENTS: [string, StreamClient][] = [
  ["grpc-js + proto-loader (h2c)", grpcJsClient],
  ["gRPC (connect-node createGrpcTransport)", connectClient(() => createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }))],
  ["Connect over HTTP/2 (h2c)", connectClient(() => createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 }))],
  ["gRPC-Web over HTTP/2 (connect-node)", connectClient(() => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 }))],
];

// --- the stream answers as Authorize does ----------------------------------------------------

describe.each(CLIENTS)("AuthorizeStream via %s", (_, client) => {
  it(`answers ${PIPELINED} pipelined requests, each id once, as unary Authorize does`, async () => {
    const kinds = requestKinds();
    const unary = await Promise.all(kinds.map((request) => client.unary(request)));
    const requests = Array.from({ length: PIPELINED }, (_, id) => kinds[kindOf(kinds, id)]!);

    const answers = await client.stream(requests);

    const ids = answers.map((answer) => Number(answer.id));
    expect(ids.length).toBe(PIPELINED);
    expect(new Set(ids).size).toBe(PIPELINED);
    expect(Math.min(...ids)).toBe(0);
    expect(Math.max(...ids)).toBe(PIPELINED - 1);
    for (const { id, response } of answers) expect(response, `id ${id}`).toEqual(unary[kindOf(kinds, Number(id))]);
  });

  it("an empty stream ends cleanly, with no answer", async () => {
    expect(await client.stream([])).toEqual([]);
  });
});

describe("AuthorizeStream decisions", () => {
  const client = () => createClient(AuthorizeService, createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }));
  const answer = async (request: Request) => {
    for await (const { response } of client().authorizeStream(streamOf([request]))) return response!;
    throw new Error("no answer");
  };

  it.each<[string, () => Request, Partial<AuthorizeResponse>]>([
    ["allowed", () => ({ credential: keys.reader.key, path: "/sandboxes/abc", method: "GET", namespace: "", org: "", explain: false }), { allowed: true, reason: Reason.ALLOWED }],
    ["forbidden", () => ({ credential: keys.reader.key, path: "/sandboxes/abc", method: "DELETE", namespace: "", org: "", explain: false }), { allowed: false, reason: Reason.FORBIDDEN, message: "API key is not allowed to DELETE /sandboxes/abc" }],
    ["revoked", () => ({ credential: keys.revoked.key, path: "/sandboxes/abc", method: "GET", namespace: "", org: "", explain: false }), { allowed: false, reason: Reason.REVOKED }],
    ["invalid", () => ({ credential: "hunter2", path: "/sandboxes/abc", method: "GET", namespace: "", org: "", explain: false }), { allowed: false, reason: Reason.INVALID_KEY }],
    ["bad request", () => ({ credential: keys.admin.key, path: "/sandboxes/abc", method: "TRACE", namespace: "", org: "", explain: false }), { allowed: false, reason: Reason.BAD_REQUEST }],
  ])("%s comes back as such", async (_, request, expected) => {
    expect(await answer(request())).toMatchObject(expected);
  });

  it("explain is ignored on the public port", async () => {
    const response = await answer({ credential: keys.reader.key, path: "/sandboxes/abc", method: "DELETE", namespace: "", org: "", explain: true });
    expect(response).toMatchObject({ allowed: false, reason: Reason.FORBIDDEN, explanation: [] });
  });

  it("a message over the 64 KiB limit fails the stream with RESOURCE_EXHAUSTED", async () => {
    const big = { credential: "x".repeat(70 * 1024), path: "/sandboxes/abc", method: "GET", namespace: "", org: "", explain: false };
    await expect(client().authorizeStream(streamOf([big]))[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: Code.ResourceExhausted });
  });
});

describe("AuthorizeStream via grpc-js with the README's loader options", () => {
  it("ids come back as decimal strings, exact up to uint64's maximum (longs: String); a deny as allowed: false", async () => {
    const call = grpcJs.authorizeStream();
    const answers = streamReader(call);
    const max = "18446744073709551615"; // 2^64 - 1: no JavaScript number holds it
    call.write({ id: max, request: requestKinds()[1]! }); // forbidden
    const answer = await answers.message();
    call.end();
    expect(answer.id).toBe(max);
    expect(answer.response).toMatchObject({ allowed: false, reason: "REASON_FORBIDDEN", message: "API key is not allowed to DELETE /sandboxes/abc" });
    expect(await answers.next()).toEqual({ end: true });
  });
});

// --- cancellation --------------------------------------------------------------------

describe("a caller that cancels", () => {
  async function* endless(credential: string) {
    for (let id = 0n; ; id++) yield { id, request: { credential, path: "/sandboxes/abc", method: "GET" } };
  }

  async function expectHealthy() {
    const transport = createGrpcTransport({ baseUrl: server.url, sessionManager: h2 });
    expect(await createClient(AuthorizeService, transport).authorize({ credential: keys.reader.key, path: "/sandboxes/abc", method: "GET" })).toMatchObject({ allowed: true });
    expect(await connectClient(() => transport).stream(requestKinds().slice(0, 3))).toHaveLength(3);
    expect(server.child.exitCode).toBeNull();
    expect(server.output()).not.toMatch(/"level":"error"|Unhandled|Error:/);
  }

  it.each([
    ["gRPC", () => createGrpcTransport({ baseUrl: server.url, sessionManager: h2 })],
    ["Connect over HTTP/2", () => createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: h2 })],
  ])("mid-stream (%s, endless sender) leaves the server healthy", async (_, transport) => {
    const controller = new AbortController();
    let answered = 0;
    const reading = (async () => {
      for await (const _answer of createClient(AuthorizeService, transport()).authorizeStream(endless(keys.reader.key), { signal: controller.signal })) {
        if (++answered === 500) controller.abort();
      }
    })();
    await expect(reading).rejects.toMatchObject({ code: Code.Canceled });
    // Answers already on their way may still be read after the abort.
    expect(answered).toBeGreaterThanOrEqual(500);
    await expectHealthy();
  });

  it("while the stream is idle, and by breaking out of the loop, leaves the server healthy", async () => {
    const controller = new AbortController();
    async function* oneThenSilence() {
      yield { id: 1n, request: { credential: keys.reader.key, path: "/sandboxes/abc", method: "GET" } };
      await new Promise(() => {});
    }
    const client = createClient(AuthorizeService, createGrpcTransport({ baseUrl: server.url, sessionManager: h2 }));
    const idle = (async () => {
      for await (const _answer of client.authorizeStream(oneThenSilence(), { signal: controller.signal })) controller.abort();
    })();
    await expect(idle).rejects.toMatchObject({ code: Code.Canceled });
    let answered = 0;
    for await (const _answer of client.authorizeStream(endless(keys.writer.key))) if (++answered === 100) break;
    await expectHealthy();
  });

  it("grpc-js call.cancel() mid-stream leaves the server healthy", async () => {
    const call = grpcJs.authorizeStream();
    const status = new Promise<grpc.StatusObject>((done) => call.on("status", done));
    call.on("error", () => {}); // the cancellation itself
    let answered = 0;
    call.on("data", () => {
      if (++answered === 200) call.cancel();
    });
    for (let id = 0; id < 1_000; id++) call.write({ id: String(id), request: requestKinds()[0]! });
    expect((await status).code).toBe(grpc.status.CANCELLED);
    await expectHealthy();
  });
});

// --- transports that cannot stream --------------------------------------------------

describe("without HTTP/2", () => {
  /** A plain HTTP/1.1 POST to AuthorizeStream: status and headers. */
  function postOverHttp1(contentType: string): Promise<http.IncomingMessage> {
    return new Promise((done, fail) => {
      const request = http.request(`${server.url}${PATH}`, { method: "POST", headers: { "content-type": contentType }, agent: false }, (response) => {
        response.resume();
        done(response);
      });
      request.on("error", fail);
      request.end();
    });
  }

  it.each(["application/connect+proto", "application/connect+json", "application/grpc-web+proto", "application/grpc-web-text"])(
    "an HTTP/1.1 request (%s) gets 505 HTTP Version Not Supported and Connection: close",
    async (contentType) => {
      const response = await postOverHttp1(contentType);
      expect(response.statusCode).toBe(505);
      expect(response.headers.connection).toBe("close");
    },
  );

  it.each([
    ["Connect", () => createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" })],
    ["gRPC-Web", () => createGrpcWebTransport({ baseUrl: server.url, httpVersion: "1.1" })],
  ])("connect-node %s over HTTP/1.1 fails the call: UNKNOWN \"HTTP 505\", or INTERNAL if it was still sending", async (_, transport) => {
    const client = createClient(AuthorizeService, transport());
    // Nothing to send: the 505 always arrives first.
    const empty = await collectError(client.authorizeStream(streamOf([])));
    expect({ code: empty.code, message: empty.rawMessage }).toEqual({ code: Code.Unknown, message: "HTTP 505" });
    // Requests to send: whichever comes first, the 505 or the closed connection.
    const busy = await collectError(client.authorizeStream(streamOf(requestKinds())));
    expect([Code.Unknown, Code.Internal]).toContain(busy.code);
    await expectAuthorizeStillWorks();
  });

  it("a browser transport (connect-web, fetch) refuses before sending anything", async () => {
    const client = createClient(AuthorizeService, createFetchGrpcWebTransport({ baseUrl: server.url }));
    const error = await collectError(client.authorizeStream(streamOf(requestKinds())));
    expect(error.rawMessage).toBe("The fetch API does not support streaming request bodies");
  });

  /** Reads a stream that must fail before any answer; returns its error. */
  async function collectError(answers: AsyncIterable<unknown>): Promise<ConnectError> {
    try {
      for await (const answer of answers) throw new Error(`unexpected answer ${JSON.stringify(answer)}`);
    } catch (error) {
      expect(error).toBeInstanceOf(ConnectError);
      return error as ConnectError;
    }
    throw new Error("the stream should have failed");
  }

  async function expectAuthorizeStillWorks() {
    const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    expect(await client.authorize({ credential: keys.reader.key, path: "/sandboxes/abc", method: "GET" })).toMatchObject({ allowed: true });
  }
});
