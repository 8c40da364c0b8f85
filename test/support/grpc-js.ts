import { resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { REPO } from "./keygate-process.js";

/**
 * grpc-js clients loaded from the .proto files in proto/ (as a team without
 * TypeScript would write them), and small promise helpers around them.
 */

/**
 * The proto-loader options the README's grpc-js example uses, and every
 * grpc-js client of the suite (test/e2e/client-package.test.ts runs the
 * example with exactly these). Without them a deny reads `allowed:
 * undefined` (proto3 leaves false off the wire), `reason` is a number, and
 * an AuthorizeStream id is a Long object.
 */
export const GRPC_JS_LOADER_OPTIONS = {
  /** matched_rule, rate_limit: the field names of the .proto, as the README and the JSON API spell them. */
  keepCase: true,
  /** uint64 ids (AuthorizeStream's id) as decimal strings, not Long objects. */
  longs: String,
  /** reason as its name ("REASON_FORBIDDEN"), not its number. */
  enums: String,
  /** Fields at their default are present: a deny reads allowed: false, an empty message "". */
  defaults: true,
  /** A oneof's set case as a field of its own (ManageKeyRequest's action: "create"). */
  oneofs: true,
} as const satisfies protoLoader.Options;

type Callback = (error: grpc.ServiceError | null, response: unknown) => void;
/** A grpc-js client whose methods are called by name. */
export type GrpcClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

/**
 * A client for `service` ("grpc.health.v1.Health") from `file` ("grpc/health/v1/health.proto"), to 127.0.0.1:`port`.
 * `loaderOptions` other than the README's only to show what those change.
 */
export function grpcClient(file: string, service: string, port: number, loaderOptions: protoLoader.Options = GRPC_JS_LOADER_OPTIONS): GrpcClient {
  const loaded = grpc.loadPackageDefinition(protoLoader.loadSync(resolve(REPO, "proto", file), { ...loaderOptions, includeDirs: [resolve(REPO, "proto")] }));
  let node: unknown = loaded;
  for (const part of service.split(".")) node = (node as Record<string, unknown>)[part];
  const Client = node as grpc.ServiceClientConstructor;
  return new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as GrpcClient;
}

/** One unary call; rejects with the grpc-js ServiceError. */
export function unary<T>(client: GrpcClient, method: string, request: object, deadlineMs = 10_000): Promise<T> {
  return new Promise((done, fail) => {
    const callback: Callback = (error, response) => (error ? fail(error) : done(response as T));
    client[method]!(request, { deadline: Date.now() + deadlineMs }, callback);
  });
}

export type StreamEvent<T> = { data: T } | { end: true } | { error: grpc.ServiceError };

/** Reads a grpc-js stream one event at a time: a message, its end, or its error. */
export function streamReader<T>(call: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>) {
  const events: StreamEvent<T>[] = [];
  const waiters: ((event: StreamEvent<T>) => void)[] = [];
  const push = (event: StreamEvent<T>) => {
    const waiter = waiters.shift();
    if (waiter) waiter(event);
    else events.push(event);
  };
  call.on("data", (data: T) => push({ data }));
  call.on("end", () => push({ end: true }));
  call.on("error", (error: grpc.ServiceError) => push({ error }));
  return {
    /** The next event, or a rejection after `timeoutMs`. */
    next(timeoutMs = 10_000): Promise<StreamEvent<T>> {
      const queued = events.shift();
      if (queued) return Promise.resolve(queued);
      return new Promise((done, fail) => {
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(waiter), 1);
          fail(new Error(`no stream event in ${timeoutMs} ms`));
        }, timeoutMs);
        const waiter = (event: StreamEvent<T>) => {
          clearTimeout(timer);
          done(event);
        };
        waiters.push(waiter);
      });
    },
    /** The next message; fails on an end or an error. */
    async message(timeoutMs?: number): Promise<T> {
      const event = await this.next(timeoutMs);
      if ("data" in event) return event.data;
      throw new Error(`expected a message, got ${"end" in event ? "the end of the stream" : `error ${event.error.code}: ${event.error.details}`}`);
    },
  };
}
