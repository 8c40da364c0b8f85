import http from "node:http";
import net from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService } from "../../gen/keygate/v1/authorize_pb.js";
import { createTestDataDir, testDatabaseKind, type TestDataDir } from "../support/database.js";
import { grpcClient, unary } from "../support/grpc-js.js";
import { createKey, startServerProcess, type CreatedKeyJson } from "../support/keygate-process.js";
import { startLeakWatch, type LeakWatch } from "../support/leak-watch.js";
import { classifyConnectError, classifyGrpcError, classifyNodeError, httpRequest, LoadTally, loop, type Classified, type Outcome } from "../support/load.js";

/**
 * SIGTERM under load: HTTP/1.1 keep-alive Cube callbacks, Connect over h2
 * and gRPC (grpc-js) in sustained concurrent loops, plus slow requests in
 * flight (an AuthorizeStream that sends over a second, a Connect request
 * whose body is still arriving). Every request must be completed or refused
 * (never reached the server); none dropped; the slow ones finish; new
 * connections are refused at once; the process exits 0 well inside
 * KEYGATE_SHUTDOWN_TIMEOUT.
 */

const SHUTDOWN_TIMEOUT_MS = 10_000;
const CONCURRENCY = 8;
const LOAD_BEFORE_SIGTERM_MS = 800;

let watch: LeakWatch;
let data: TestDataDir;
let key: CreatedKeyJson;
const rounds: Record<string, unknown>[] = [];

beforeAll(async () => {
  watch = await startLeakWatch();
  data = await createTestDataDir();
  key = await createKey(["--org", "acme", "--role", "reader", "--name", "shutdown-load"], { cwd: data.dir, env: { ...data.env, ...watch.env } });
  watch.key(key.key);
});

afterAll(async () => {
  await data?.dispose();
  await watch?.close();
  for (const round of rounds) console.log("[hardening] shutdown:", JSON.stringify(round));
});

const refusedConnection = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = net.connect(port, "127.0.0.1");
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (error: NodeJS.ErrnoException) => resolve(error.code === "ECONNREFUSED"));
  });

/**
 * A Connect JSON Authorize over HTTP/1.1 whose body arrives in two halves: the
 * first at once, the rest when `sendRest` is called; `answer` resolves with
 * the raw answer.
 */
function slowBodyAuthorize(port: number, credential: string, onHalfSent: () => void): { answer: Promise<string>; sendRest: () => void } {
  const body = JSON.stringify({ credential, path: "/sandboxes/abc", method: "GET" });
  const head = `POST /keygate.v1.AuthorizeService/Authorize HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`;
  const socket = net.connect(port, "127.0.0.1");
  const answer = new Promise<string>((resolve, reject) => {
    let text = "";
    socket.on("connect", () => {
      socket.write(head + body.slice(0, 10));
      onHalfSent();
    });
    socket.on("data", (chunk: Buffer) => (text += chunk.toString("utf8")));
    socket.on("error", reject);
    socket.on("end", () => resolve(text));
  });
  return { answer, sendRest: () => socket.write(body.slice(10)) };
}

describe.each([
  ["direct Authorize", {}],
  ["adapter only", { KEYGATE_DIRECT_AUTHORIZE: "false" }],
])("SIGTERM under load (%s)", (label, extraEnv) => {
  it(
    "in-flight requests complete, new connections are refused, nothing is dropped, exit 0 in bounded time",
    async () => {
      const env = { ...data.env, ...watch.env, ...extraEnv, KEYGATE_SHUTDOWN_TIMEOUT: `${SHUTDOWN_TIMEOUT_MS / 1000}s` };
      const server = await startServerProcess(["--auth-fail-limit", "off"], { cwd: data.dir, env });
      const tally = new LoadTally();
      let running = true;
      const record = (error: string) => watch.text(`${label}: client error`, error);

      // HTTP/1.1 keep-alive Cube callbacks.
      const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });
      let closeAnswers = 0;
      const shimCall = async (): Promise<Outcome> => {
        const done = tally.start("h1 shim");
        let result: Classified;
        try {
          const answer = await httpRequest(agent, `${server.url}/verify`, {
            method: "POST",
            headers: { authorization: `Bearer ${key.key}`, "x-request-path": "/sandboxes/abc", "x-request-method": "GET" },
          });
          if (answer.headers.connection === "close") closeAnswers++;
          result = answer.status === 200 ? { outcome: "completed" } : { outcome: "dropped", detail: `status ${answer.status}: ${answer.body}` };
        } catch (error) {
          record((error as Error).message);
          result = classifyNodeError(error);
        }
        done(result);
        return result.outcome;
      };

      // Connect over h2, one session shared by every loop.
      const sessions = new Http2SessionManager(server.url);
      const connect = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "2", sessionManager: sessions }));
      const connectCall = async (): Promise<Outcome> => {
        const done = tally.start("connect h2");
        let result: Classified;
        try {
          const response = await connect.authorize({ credential: key.key, path: "/sandboxes/abc", method: "GET" });
          result = response.allowed ? { outcome: "completed" } : { outcome: "dropped", detail: `denied: ${response.message}` };
        } catch (error) {
          record((error as Error).message);
          result = classifyConnectError(error);
        }
        done(result);
        return result.outcome;
      };

      // gRPC (grpc-js), one channel.
      const grpcAuthorize = grpcClient("keygate/v1/authorize.proto", "keygate.v1.AuthorizeService", server.port);
      const grpcCall = async (): Promise<Outcome> => {
        const done = tally.start("grpc-js");
        let result: Classified;
        try {
          const response = await unary<{ allowed: boolean; message: string }>(grpcAuthorize, "Authorize", { credential: key.key, path: "/sandboxes/abc", method: "GET" });
          result = response.allowed ? { outcome: "completed" } : { outcome: "dropped", detail: `denied: ${response.message}` };
        } catch (error) {
          record((error as grpc.ServiceError).details ?? String(error));
          result = classifyGrpcError(error as grpc.ServiceError);
        }
        done(result);
        return result.outcome;
      };

      const loads = Promise.all([loop(CONCURRENCY, () => running, shimCall), loop(CONCURRENCY, () => running, connectCall), loop(CONCURRENCY, () => running, grpcCall)]);
      await sleep(LOAD_BEFORE_SIGTERM_MS);

      // Slow requests, in flight at SIGTERM: an AuthorizeStream sending 5 requests over a second,
      // and a Connect call over HTTP/1.1 whose body is half sent.
      const streamClient = createClient(AuthorizeService, createGrpcTransport({ baseUrl: server.url }));
      let streamOpened!: () => void;
      const streamOpen = new Promise<void>((resolve) => (streamOpened = resolve));
      const streamDone = (async () => {
        async function* requests() {
          for (let id = 1n; id <= 5n; id++) {
            yield { id, request: { credential: key.key, path: "/sandboxes/abc", method: "GET" } };
            await sleep(200);
          }
        }
        const answers: bigint[] = [];
        for await (const answer of streamClient.authorizeStream(requests())) {
          answers.push(answer.id);
          if (answers.length === 1) streamOpened();
        }
        return answers.sort();
      })();
      let halfSent!: () => void;
      const bodyHalfSent = new Promise<void>((resolve) => (halfSent = resolve));
      const slowBody = slowBodyAuthorize(server.port, key.key, halfSent);
      await Promise.all([streamOpen, bodyHalfSent]);
      await sleep(20); // the half body reaches the server

      const before = tally.total();
      const inFlightAtSigterm = tally.snapshot() + 2; // the stream and the slow body
      const sigtermAt = performance.now();
      server.child.kill("SIGTERM");
      let exitMs: number | undefined;
      const exited = server.exited.then((code) => {
        exitMs = performance.now() - sigtermAt;
        return code;
      });

      // The listener closes at once: a new connection is refused well before the process exits.
      let refusedMs: number | undefined;
      while (exitMs === undefined && refusedMs === undefined) {
        if (await refusedConnection(server.port)) refusedMs = performance.now() - sigtermAt;
        else await sleep(5);
      }
      // The rest of the slow body only now, once the server is draining (it refuses new connections):
      // its answer must say `Connection: close`, however long a busy machine took to get here.
      slowBody.sendRest();

      const code = await exited;
      running = false;
      await loads;
      const slowAnswer = await slowBody.answer;
      const streamAnswers = await streamDone;

      // After the exit, every client is refused, on a fresh connection each.
      const after = new LoadTally();
      const refusedAfter: Record<string, string | undefined> = {};
      for (const [kind, call] of [
        ["h1 shim", shimCall],
        ["connect h2", connectCall],
        ["grpc-js", grpcCall],
      ] as const) {
        const done = after.start(kind);
        const outcome = await call();
        done({ outcome });
        refusedAfter[kind] = outcome;
      }

      grpcAuthorize.close();
      sessions.abort();
      agent.destroy();
      watch.text(`${label}: keygate serve output`, server.output());
      watch.text(`${label}: slow body answer`, slowAnswer);

      const total = tally.total();
      const watched = tally.watchedOutcomes();
      const figures = {
        round: label,
        database: testDatabaseKind,
        completed: total.completed,
        refused: total.refused,
        dropped: total.dropped,
        completedAfterSigterm: total.completed - before.completed,
        h1ConnectionCloseAnswers: closeAnswers,
        inFlightAtSigterm,
        inFlightOutcomes: watched,
        msSigtermToRefused: Math.round(refusedMs ?? -1),
        msSigtermToExit: Math.round(exitMs ?? -1),
        byKind: Object.fromEntries(tally.byKind),
        refusedAs: [...tally.refusedDetails].slice(0, 6),
      };
      rounds.push(figures);

      expect(tally.droppedDetails.slice(0, 10)).toEqual([]);
      expect(total.dropped).toBe(0);
      expect(code).toBe(0);
      expect(server.output()).toMatch(/"msg":"stopped"/);
      // Bounded: well inside the forced-close timeout (the slow requests need about a second).
      expect(exitMs).toBeLessThan(SHUTDOWN_TIMEOUT_MS);
      expect(refusedMs).toBeDefined();
      expect(refusedMs!).toBeLessThan(exitMs!);
      // Every request in flight at SIGTERM was answered or (h2, not yet processed) refused; the slow ones answered.
      expect(watched.pending + watched.dropped).toBe(0);
      expect(streamAnswers).toEqual([1n, 2n, 3n, 4n, 5n]);
      expect(slowAnswer).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
      expect(slowAnswer.toLowerCase()).toContain("\r\nconnection: close\r\n");
      expect(slowAnswer).toContain('"allowed":true');
      // Load ran on every protocol before SIGTERM.
      for (const kind of ["h1 shim", "connect h2", "grpc-js"]) expect(tally.byKind.get(kind)?.completed ?? 0).toBeGreaterThan(10);
      expect(refusedAfter).toEqual({ "h1 shim": "refused", "connect h2": "refused", "grpc-js": "refused" });
    },
    45_000,
  );
});

it("no key in any output, error message or trace", () => {
  expect(watch.counts().texts).toBeGreaterThan(0);
  expect(watch.leaks()).toEqual([]);
});
