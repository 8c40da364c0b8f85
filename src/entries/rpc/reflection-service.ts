import { create, fromBinary, toBinary, type DescFile, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ServiceImpl } from "@connectrpc/connect";
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from "../../../gen/grpc/reflection/v1/reflection_pb.js";
import {
  ServerReflection as ServerReflectionV1alpha,
  ServerReflectionRequestSchema as ServerReflectionRequestSchemaV1alpha,
  ServerReflectionResponseSchema as ServerReflectionResponseSchemaV1alpha,
} from "../../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha), so grpcurl,
 * buf curl and grpc_cli work against keygate without its .proto files. The
 * descriptors are the ones protoc-gen-es embedded in gen/ (each GenFile's
 * `proto`), so what is described is exactly what is served.
 */

export interface ReflectionIndex {
  /** Fully-qualified names of the services served, sorted. */
  services: string[];
  /** A file by its name ("keygate/v1/authorize.proto"), with every file it imports, transitively. */
  file(name: string): DescFile | undefined;
  /** The file that declares a fully-qualified symbol: service, method, message, field, oneof, enum, enum value, extension. */
  fileContaining(symbol: string): DescFile | undefined;
  /** The file that declares extension `number` of message `extendee`. */
  fileContainingExtension(extendee: string, number: number): DescFile | undefined;
  /** The extension numbers known for a message type; undefined when the type is unknown. */
  extensionNumbers(extendee: string): number[] | undefined;
  /** A file's FileDescriptorProto, serialized (once). */
  bytes(file: DescFile): Uint8Array;
}

/** Indexes the files that define `services` and everything they import. */
export function createReflectionIndex(services: readonly DescService[]): ReflectionIndex {
  const files = new Map<string, DescFile>();
  const symbols = new Map<string, DescFile>();
  const messages = new Set<string>();
  const extensions = new Map<string, Map<number, DescFile>>();
  const serialized = new WeakMap<DescFile, Uint8Array>();

  function addMessage(file: DescFile, message: DescMessage): void {
    symbols.set(message.typeName, file);
    messages.add(message.typeName);
    for (const field of message.fields) symbols.set(`${message.typeName}.${field.name}`, file);
    for (const oneof of message.oneofs) symbols.set(`${message.typeName}.${oneof.name}`, file);
    for (const nested of message.nestedMessages) addMessage(file, nested);
    addEnums(file, message.nestedEnums);
    addExtensions(file, message.nestedExtensions);
  }

  function addEnums(file: DescFile, enums: DescFile["enums"]): void {
    for (const desc of enums) {
      symbols.set(desc.typeName, file);
      // Enum values are scoped as siblings of their enum (C++ rules).
      const scope = desc.typeName.slice(0, desc.typeName.length - desc.name.length);
      for (const value of desc.values) symbols.set(`${scope}${value.name}`, file);
    }
  }

  function addExtensions(file: DescFile, list: DescFile["extensions"]): void {
    for (const ext of list) {
      symbols.set(ext.typeName, file);
      let byNumber = extensions.get(ext.extendee.typeName);
      if (!byNumber) extensions.set(ext.extendee.typeName, (byNumber = new Map()));
      byNumber.set(ext.number, file);
    }
  }

  function addFile(file: DescFile): void {
    if (files.has(file.proto.name)) return;
    files.set(file.proto.name, file);
    for (const dependency of file.dependencies) addFile(dependency);
    for (const message of file.messages) addMessage(file, message);
    addEnums(file, file.enums);
    addExtensions(file, file.extensions);
    for (const service of file.services) {
      symbols.set(service.typeName, file);
      for (const method of service.methods) symbols.set(`${service.typeName}.${method.name}`, file);
    }
  }

  for (const service of services) addFile(service.file);

  return {
    services: [...new Set(services.map((s) => s.typeName))].sort(),
    file: (name) => files.get(name),
    fileContaining: (symbol) => symbols.get(symbol.startsWith(".") ? symbol.slice(1) : symbol),
    fileContainingExtension: (extendee, number) => extensions.get(extendee)?.get(number),
    extensionNumbers: (extendee) => (messages.has(extendee) ? [...(extensions.get(extendee)?.keys() ?? [])].sort((a, b) => a - b) : undefined),
    bytes(file) {
      let bytes = serialized.get(file);
      if (!bytes) serialized.set(file, (bytes = toBinary(FileDescriptorProtoSchema, file.proto)));
      return bytes;
    },
  };
}

/**
 * One answer on a reflection stream. `sent` holds the files already sent on
 * this stream: the file asked for is always sent (first), its imports
 * (transitively) only when not sent before, as grpc-go does; a client that
 * lacks one can still ask for it by name.
 */
export function answerReflection(index: ReflectionIndex, request: ServerReflectionRequest, sent: Set<string>): ServerReflectionResponse {
  const base = { validHost: request.host, originalRequest: request };
  const error = (code: Code, message: string) =>
    create(ServerReflectionResponseSchema, { ...base, messageResponse: { case: "errorResponse", value: { errorCode: code, errorMessage: message } } });
  const files = (file: DescFile | undefined, notFound: string) => {
    if (!file) return error(Code.NotFound, notFound);
    const out: Uint8Array[] = [];
    const visit = (f: DescFile, requested: boolean) => {
      if (!requested && sent.has(f.proto.name)) return;
      sent.add(f.proto.name);
      out.push(index.bytes(f));
      for (const dependency of f.dependencies) visit(dependency, false);
    };
    visit(file, true);
    return create(ServerReflectionResponseSchema, { ...base, messageResponse: { case: "fileDescriptorResponse", value: { fileDescriptorProto: out } } });
  };

  const { messageRequest } = request;
  switch (messageRequest.case) {
    case "listServices":
      return create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } },
      });
    case "fileByFilename":
      return files(index.file(messageRequest.value), `file not found: ${messageRequest.value}`);
    case "fileContainingSymbol":
      return files(index.fileContaining(messageRequest.value), `symbol not found: ${messageRequest.value}`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = messageRequest.value;
      return files(index.fileContainingExtension(containingType, extensionNumber), `extension not found: ${containingType} ${extensionNumber}`);
    }
    case "allExtensionNumbersOfType": {
      const numbers = index.extensionNumbers(messageRequest.value);
      if (!numbers) return error(Code.NotFound, `type not found: ${messageRequest.value}`);
      return create(ServerReflectionResponseSchema, {
        ...base,
        messageResponse: { case: "allExtensionNumbersResponse", value: { baseTypeName: messageRequest.value, extensionNumber: numbers } },
      });
    }
    case undefined:
      return error(Code.InvalidArgument, "empty reflection request: set one of message_request");
  }
}

/**
 * grpc.reflection.v1.ServerReflection: one answer per request, in order,
 * until the client half-closes, or the server begins to shut down (a tool
 * that leaves its reflection stream open must not hold the shutdown).
 */
export function createReflectionService(index: ReflectionIndex, shutdown?: AbortSignal): ServiceImpl<typeof ServerReflection> {
  return {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const request of until(requests, shutdown)) yield answerReflection(index, request, sent);
    },
  };
}

/**
 * grpc.reflection.v1alpha.ServerReflection, which older grpcurl and grpc_cli
 * ask for. Its messages are v1's field for field, so each one crosses over
 * through the wire format rather than a hand-written copy.
 */
export function createReflectionServiceV1alpha(index: ReflectionIndex, shutdown?: AbortSignal): ServiceImpl<typeof ServerReflectionV1alpha> {
  return {
    async *serverReflectionInfo(requests) {
      const sent = new Set<string>();
      for await (const request of until(requests, shutdown)) {
        const v1 = fromBinary(ServerReflectionRequestSchema, toBinary(ServerReflectionRequestSchemaV1alpha, request));
        yield fromBinary(ServerReflectionResponseSchemaV1alpha, toBinary(ServerReflectionResponseSchema, answerReflection(index, v1, sent)));
      }
    },
  };
}

/** The messages of `source` until it ends or `signal` is aborted, whichever comes first. */
async function* until<T>(source: AsyncIterable<T>, signal: AbortSignal | undefined): AsyncGenerator<T> {
  if (!signal) return yield* source;
  const iterator = source[Symbol.asyncIterator]();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<"aborted">((resolve) => {
    onAbort = () => resolve("aborted");
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort);
  });
  try {
    for (;;) {
      const next = await Promise.race([iterator.next(), aborted]);
      if (next === "aborted" || next.done) return;
      yield next.value;
    }
  } finally {
    signal.removeEventListener("abort", onAbort!);
    // The request stream may already be done or broken; nothing is owed to it.
    Promise.resolve(iterator.return?.()).catch(() => {});
  }
}
