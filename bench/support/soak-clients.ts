import http from "node:http";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, Http2SessionManager } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { AuthorizeRequestSchema, AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { KeyService, ManageKeyRequestSchema, type ManageKeyRequest, type ManageKeyResponse } from "../../gen/keygate/v1/key_pb.js";

/**
 * The soak's clients of one keygate server, each the way a real caller
 * would talk to it:
 *
 *   - shim:    the Cube callback, POST /verify over HTTP/1.1 keep-alive
 *              (node:http, a pool of at most SHIM_SOCKETS sockets);
 *   - connect: Authorize over Connect on one HTTP/2 (h2c) session
 *              (connect-node, binary protobuf);
 *   - grpc:    Authorize over gRPC with @grpc/grpc-js, the service loaded
 *              from proto/ as a team without TypeScript would;
 *   - manage:  ManageKey over Connect HTTP/1.1 keep-alive, as an admin key.
 *
 * Every decision comes back as a DecisionAnswer, whatever the transport,
 * so that one expectation checks all three. Every call has a deadline;
 * a missed one rejects with a TimeoutError.
 */

export type Transport = "shim" | "connect" | "grpc";
export const TRANSPORTS: readonly Transport[] = ["shim", "connect", "grpc"];
export const TRANSPORT_LABEL: Record<Transport, string> = {
  shim: "Cube callback (HTTP/1.1)",
  connect: "Authorize, Connect h2c",
  grpc: "Authorize, gRPC (grpc-js)",
};

/** Sockets the callback client may open (requests beyond wait for one, and the wait counts as latency). */
const SHIM_SOCKETS = 64;
const PROTO_DIR = fileURLToPath(new URL("../../../proto/", import.meta.url));

export interface DecisionRequest {
  key: string;
  path: string;
  method: string;
  /** The org hint (X-Request-Org / `org`); empty: none. */
  org: string;
}

/** A decision as any transport reports it. */
export interface DecisionAnswer {
  allowed: boolean;
  /** The Reason enum's name without its prefix ("ALLOWED", "FORBIDDEN", …), or for the callback what its status and message say. */
  reason: string;
  message: string;
  /** The key that was checked (X-Auth-User on the callback, which only an allow carries). */
  keyId: string;
  /** The callback's HTTP status (0 for the RPC transports). */
  status: number;
}

export class TimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what}: no answer in ${ms} ms`);
    this.name = "TimeoutError";
  }
}

/** What the callback's status and message mean, in Reason names (see README, "Pointing Cube at keygate"). */
function shimReason(status: number, message: string): string {
  if (status === 200) return "ALLOWED";
  if (status === 401 && message === "invalid API key") return "INVALID_KEY";
  if (status === 401 && message === "API key has been revoked") return "REVOKED";
  if (status === 401 && message === "API key has expired") return "EXPIRED";
  if (status === 401 && message.startsWith("missing API key")) return "MISSING_CREDENTIAL";
  if (status === 403 && message.startsWith("API key is not allowed to ")) return "FORBIDDEN";
  if (status === 403) return "BAD_REQUEST";
  if (status === 429) return "RATE_LIMITED";
  if (status === 503) return "UNAVAILABLE";
  return `HTTP ${status}`;
}

type GrpcCallback = (error: grpc.ServiceError | null, response: GrpcAuthorizeResponse) => void;
interface GrpcAuthorizeResponse {
  allowed: boolean;
  reason: string;
  message: string;
  key: { id: string } | null;
}
interface GrpcAuthorizeClient extends grpc.Client {
  Authorize(request: object, options: grpc.CallOptions, callback: GrpcCallback): grpc.ClientUnaryCall;
}

export interface SoakClients {
  decide(transport: Transport, request: DecisionRequest, timeoutMs: number): Promise<DecisionAnswer>;
  manage(action: ManageKeyRequest["action"], timeoutMs: number): Promise<ManageKeyResponse>;
  close(): void;
}

export function openSoakClients(baseUrl: string, adminKey: string): SoakClients {
  const { hostname, port } = new URL(baseUrl);

  // --- the Cube callback
  const shimAgent = new http.Agent({ keepAlive: true, maxSockets: SHIM_SOCKETS });
  const shim = (request: DecisionRequest, timeoutMs: number) =>
    new Promise<DecisionAnswer>((resolve, reject) => {
      const headers: Record<string, string> = {
        authorization: `Bearer ${request.key}`,
        "x-request-path": request.path,
        "x-request-method": request.method,
        "content-length": "0",
      };
      if (request.org) headers["x-request-org"] = request.org;
      const req = http.request({ agent: shimAgent, host: hostname, port, path: "/verify", method: "POST", headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.once("error", reject);
        res.once("end", () => {
          clearTimeout(timer);
          const status = res.statusCode ?? 0;
          let message = "";
          try {
            message = String((JSON.parse(Buffer.concat(chunks).toString() || "{}") as { message?: unknown }).message ?? "");
          } catch {
            message = `unparsable body: ${Buffer.concat(chunks).toString().slice(0, 80)}`;
          }
          const user = res.headers["x-auth-user"];
          resolve({ allowed: status === 200, reason: shimReason(status, message), message, keyId: typeof user === "string" ? user : "", status });
        });
      });
      const timer = setTimeout(() => {
        req.destroy();
        reject(new TimeoutError("POST /verify", timeoutMs));
      }, timeoutMs);
      req.once("error", (error) => {
        clearTimeout(timer);
        reject(error);
      });
      req.end();
    });

  // --- Authorize over Connect, one h2c session
  const sessionManager = new Http2SessionManager(baseUrl);
  const connectClient = createClient(AuthorizeService, createConnectTransport({ baseUrl, httpVersion: "2", sessionManager }));
  const connect = async (request: DecisionRequest, timeoutMs: number): Promise<DecisionAnswer> => {
    try {
      const res = await connectClient.authorize(create(AuthorizeRequestSchema, { credential: request.key, path: request.path, method: request.method, namespace: "", org: request.org }), { timeoutMs });
      return { allowed: res.allowed, reason: Reason[res.reason] ?? String(res.reason), message: res.message, keyId: res.key?.id ?? "", status: 0 };
    } catch (error) {
      if (error instanceof ConnectError && error.code === Code.DeadlineExceeded) throw new TimeoutError("Connect Authorize", timeoutMs);
      throw error;
    }
  };

  // --- Authorize over gRPC, grpc-js with the .proto files
  const definition = protoLoader.loadSync("keygate/v1/authorize.proto", { includeDirs: [PROTO_DIR], keepCase: true, enums: String, longs: String, defaults: true, oneofs: true });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as { keygate: { v1: { AuthorizeService: new (address: string, credentials: grpc.ChannelCredentials) => GrpcAuthorizeClient } } };
  const grpcClient = new loaded.keygate.v1.AuthorizeService(`${hostname}:${port}`, grpc.credentials.createInsecure());
  const grpcCall = (request: DecisionRequest, timeoutMs: number) =>
    new Promise<DecisionAnswer>((resolve, reject) => {
      grpcClient.Authorize({ credential: request.key, path: request.path, method: request.method, namespace: "", org: request.org }, { deadline: Date.now() + timeoutMs }, (error, res) => {
        if (error) return reject(error.code === grpc.status.DEADLINE_EXCEEDED ? new TimeoutError("gRPC Authorize", timeoutMs) : error);
        resolve({ allowed: res.allowed, reason: res.reason.replace(/^REASON_/, ""), message: res.message, keyId: res.key?.id ?? "", status: 0 });
      });
    });

  // --- ManageKey over Connect HTTP/1.1, as the admin key
  const manageAgent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  const manageClient: Client<typeof KeyService> = createClient(
    KeyService,
    createConnectTransport({
      baseUrl,
      httpVersion: "1.1",
      nodeOptions: { agent: manageAgent },
      interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${adminKey}`), next(req))],
    }),
  );
  const manage = async (action: ManageKeyRequest["action"], timeoutMs: number) => {
    try {
      return await manageClient.manageKey(create(ManageKeyRequestSchema, { action }), { timeoutMs });
    } catch (error) {
      if (error instanceof ConnectError && error.code === Code.DeadlineExceeded) throw new TimeoutError(`ManageKey ${action.case}`, timeoutMs);
      throw error;
    }
  };

  return {
    decide(transport, request, timeoutMs) {
      switch (transport) {
        case "shim":
          return shim(request, timeoutMs);
        case "connect":
          return connect(request, timeoutMs);
        case "grpc":
          return grpcCall(request, timeoutMs);
      }
    },
    manage,
    close() {
      shimAgent.destroy();
      manageAgent.destroy();
      sessionManager.abort();
      grpcClient.close();
    },
  };
}
