import { Code, ConnectError, createClient, createRouterTransport, type Interceptor } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import type { AuthorizeInput, Decision } from "../../src/core/authorize/decision.js";
import { createAuthorizeService } from "../../src/entries/rpc/authorize-service.js";
import { mapUnordered } from "../../src/entries/rpc/authorize-stream.js";
import { kSource } from "../../src/http/rpc-context.js";
import { AuthorizeService, Reason, type AuthorizeStreamResponse } from "../../gen/keygate/v1/authorize_pb.js";

/**
 * AuthorizeStream's two halves without a server: the bounded, completion-order
 * map it is built on, and the service over a fake core (in-memory transport).
 */

/** Lets every pending promise callback run. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

function deferred<T>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/** A source of 0..count-1 that records how far it was pulled and whether it was closed. */
function countingSource(count = Infinity) {
  const state = { pulled: 0, closed: false };
  async function* source() {
    try {
      for (let i = 0; i < count; i++) {
        state.pulled++;
        yield i;
      }
    } finally {
      state.closed = true;
    }
  }
  return { state, source: source() };
}

/** A source the test feeds one item at a time, and ends. */
function pushSource<T>() {
  const items: T[] = [];
  let ended = false;
  let wake = () => {};
  async function* source() {
    for (;;) {
      if (items.length > 0) yield items.shift()!;
      else if (ended) return;
      else await new Promise<void>((resolve) => (wake = resolve));
    }
  }
  return {
    source: source(),
    push: (item: T) => (items.push(item), wake()),
    end: () => ((ended = true), wake()),
  };
}

/** Pulls results from `iterable` in the background, into `out`. */
function drain<T>(iterable: AsyncIterable<T>) {
  const out: T[] = [];
  const done = (async () => {
    for await (const item of iterable) out.push(item);
  })();
  return { out, done };
}

describe("mapUnordered", () => {
  it("yields in completion order: a slow item does not delay the fast ones behind it", async () => {
    const slow = deferred<string>();
    const { out, done } = drain(mapUnordered(countingSource(4).source, 8, (i) => (i === 0 ? slow.promise : Promise.resolve(`fast ${i}`))));
    await settle();
    expect(out).toEqual(["fast 1", "fast 2", "fast 3"]);
    slow.resolve("slow 0");
    await done;
    expect(out).toEqual(["fast 1", "fast 2", "fast 3", "slow 0"]);
  });

  it("never has more than the bound in flight, and pulls no further until one finishes", async () => {
    const { state, source } = countingSource();
    const calls: ReturnType<typeof deferred<number>>[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const { out } = drain(
      mapUnordered(source, 3, (i) => {
        maxInFlight = Math.max(maxInFlight, ++inFlight);
        const call = deferred<number>();
        calls.push(call);
        return call.promise.finally(() => inFlight--).then(() => i);
      }),
    );
    await settle();
    expect({ pulled: state.pulled, calls: calls.length }).toEqual({ pulled: 3, calls: 3 });
    calls[1]!.resolve(0);
    await settle();
    expect({ pulled: state.pulled, calls: calls.length, out }).toEqual({ pulled: 4, calls: 4, out: [1] });
    for (let round = 0; round < 50; round++) {
      for (const call of calls.splice(0)) call.resolve(0);
      await settle();
    }
    expect(maxInFlight).toBe(3);
    expect(out.length).toBeGreaterThan(100);
  });

  it("pulls nothing more while finished results wait for a slow consumer", async () => {
    const { state, source } = countingSource();
    const results = mapUnordered(source, 4, (i) => Promise.resolve(i));
    expect((await results.next()).value).toBe(0);
    await settle();
    const pulled = state.pulled;
    expect(pulled).toBeLessThanOrEqual(1 + 4);
    for (let i = 0; i < 10; i++) await settle();
    expect(state.pulled).toBe(pulled);
    expect((await results.next()).value).toBe(1);
    await results.return(undefined);
    expect(state.closed).toBe(true);
  });

  it("when the source ends, finishes what is in flight, then ends", async () => {
    const feed = pushSource<number>();
    const pending = new Map<number, ReturnType<typeof deferred<number>>>();
    const { out, done } = drain(
      mapUnordered(feed.source, 8, (i) => {
        pending.set(i, deferred<number>());
        return pending.get(i)!.promise;
      }),
    );
    feed.push(1);
    feed.push(2);
    feed.end();
    await settle();
    let ended = false;
    void done.then(() => (ended = true));
    pending.get(2)!.resolve(2);
    await settle();
    expect({ out, ended }).toEqual({ out: [2], ended: false });
    pending.get(1)!.resolve(1);
    await done;
    expect(out).toEqual([2, 1]);
  });

  it("an empty source ends at once", async () => {
    const { out, done } = drain(mapUnordered(countingSource(0).source, 8, (i) => Promise.resolve(i)));
    await done;
    expect(out).toEqual([]);
  });

  it("an abort while waiting for the source throws the reason and closes the source", async () => {
    const feed = pushSource<number>();
    const controller = new AbortController();
    const never = deferred<number>();
    const { done } = drain(mapUnordered(feed.source, 8, () => never.promise, controller.signal));
    feed.push(1);
    await settle();
    controller.abort(new Error("client went away"));
    await expect(done).rejects.toThrow("client went away");
    // A call still running when the stream stopped finishing later is harmless.
    never.resolve(1);
    await settle();
  });

  it("a consumer that stops early closes the source", async () => {
    const { state, source } = countingSource();
    for await (const i of mapUnordered(source, 8, (n) => Promise.resolve(n))) if (i === 10) break;
    expect(state.closed).toBe(true);
  });

  it("a rejected call ends the iterable with its error", async () => {
    const { state, source } = countingSource(5);
    const { done } = drain(mapUnordered(source, 2, (i) => (i === 2 ? Promise.reject(new Error("bug")) : Promise.resolve(i))));
    await expect(done).rejects.toThrow("bug");
    expect(state.closed).toBe(true);
  });
});

// --- the service over a fake core ------------------------------------------------------

const KEY = { id: "key_abc", name: "demo", org: "acme", namespace: "*", roles: ["reader"] };
const DECISIONS: Record<string, Decision> = {
  allow: { allowed: true, reason: "allowed", message: "", matchedRule: "policy.csv:3", key: KEY },
  forbid: { allowed: false, reason: "forbidden", message: "API key is not allowed to DELETE /x", matchedRule: "", key: KEY, explanation: [{ rule: "policy.csv:3", text: "p, …", reasons: ["method"] }] },
  "": { allowed: false, reason: "missing_credential", message: "missing API key in Authorization header", matchedRule: "" },
  outage: { allowed: false, reason: "unavailable", message: "authorization unavailable: the key store cannot be reached, request denied", matchedRule: "" },
};

/** A core that decides by credential ("allow", "forbid", "outage"; "bug" throws) and records its inputs. */
function fakeCore() {
  const inputs: AuthorizeInput[] = [];
  const authorize = async (input: AuthorizeInput): Promise<Decision> => {
    inputs.push(input);
    if (input.credential === "bug") throw new Error("a bug in the core");
    const decision = DECISIONS[input.credential];
    if (!decision) throw new Error(`no fake decision for ${input.credential}`);
    return decision;
  };
  return { inputs, authorize };
}

/** The service over the in-memory transport, each call from the client address 203.0.113.7. */
function clientFor(allowExplain: boolean) {
  const core = fakeCore();
  const errors: { error: unknown; requestId: string | undefined }[] = [];
  const fromClientAddress: Interceptor = (next) => (req) => {
    req.contextValues.set(kSource, "203.0.113.7");
    return next(req);
  };
  const transport = createRouterTransport((router) => router.service(AuthorizeService, createAuthorizeService({ authorize: core.authorize, allowExplain, onError: (error, requestId) => errors.push({ error, requestId }) })), {
    router: { interceptors: [fromClientAddress] },
  });
  return { core, errors, client: createClient(AuthorizeService, transport) };
}

async function* requests(credentials: string[], explain = false) {
  for (const [i, credential] of credentials.entries()) yield { id: BigInt(100 + i), request: { credential, path: "/x", method: "DELETE", explain } };
}

async function collect(responses: AsyncIterable<AuthorizeStreamResponse>): Promise<Map<bigint, AuthorizeStreamResponse>> {
  const byId = new Map<bigint, AuthorizeStreamResponse>();
  for await (const response of responses) {
    expect(byId.has(response.id), `id ${response.id} answered twice`).toBe(false);
    byId.set(response.id, response);
  }
  return byId;
}

describe("AuthorizeStream over a fake core", () => {
  it("answers each id with the response unary Authorize gives; the core sees the same input", async () => {
    const { core, client } = clientFor(false);
    const credentials = ["allow", "forbid", "allow", "forbid"];
    const answers = await collect(client.authorizeStream(requests(credentials)));
    const streamInputs = core.inputs.splice(0);
    for (const [i, credential] of credentials.entries()) {
      const unary = await client.authorize({ credential, path: "/x", method: "DELETE" });
      expect(answers.get(BigInt(100 + i))?.response).toEqual(unary);
    }
    expect(streamInputs).toEqual(core.inputs);
    expect(streamInputs[0]).toEqual({ credential: "allow", path: "/x", method: "DELETE", namespace: "", org: "", explain: false, entry: "rpc", source: "203.0.113.7" });
  });

  it("an outage answers that id UNAVAILABLE and the stream goes on (unary: the UNAVAILABLE error)", async () => {
    const { client } = clientFor(false);
    const answers = await collect(client.authorizeStream(requests(["allow", "outage", "allow"])));
    expect(answers.get(101n)?.response).toMatchObject({ allowed: false, reason: Reason.UNAVAILABLE, message: DECISIONS.outage!.message });
    expect(answers.get(102n)?.response).toMatchObject({ allowed: true, reason: Reason.ALLOWED });
    await expect(client.authorize({ credential: "outage", path: "/x", method: "GET" })).rejects.toMatchObject({ code: Code.Unavailable });
  });

  it("a core that throws answers that id UNAVAILABLE, not the whole stream, and the bug is reported", async () => {
    const { client, errors } = clientFor(false);
    const answers = await collect(client.authorizeStream(requests(["bug", "allow"])));
    expect(answers.get(100n)?.response).toMatchObject({ allowed: false, reason: Reason.UNAVAILABLE, message: expect.stringMatching(/^authorization unavailable/) });
    expect(answers.get(101n)?.response?.allowed).toBe(true);
    expect(errors.map((e) => (e.error as Error).message)).toEqual(["a bug in the core"]);
  });

  it("unary Authorize: a core that throws is reported and answered internal (as the direct path answers it), never allowed", async () => {
    const { client, errors } = clientFor(false);
    const failure = await client.authorize({ credential: "bug", path: "/x", method: "GET" }).then(
      () => undefined,
      (error: unknown) => ConnectError.from(error),
    );
    expect(failure?.code).toBe(Code.Internal);
    expect(failure?.rawMessage).toBe("internal error");
    expect(errors.map((e) => (e.error as Error).message)).toEqual(["a bug in the core"]);
  });

  it("a request without its AuthorizeRequest is decided as an empty one", async () => {
    const { core, client } = clientFor(false);
    const answers = await collect(client.authorizeStream((async function* () { yield { id: 7n }; })()));
    expect(core.inputs[0]).toMatchObject({ credential: "", path: "", method: "" });
    expect(answers.get(7n)?.response).toMatchObject({ allowed: false, reason: Reason.MISSING_CREDENTIAL });
  });

  it.each([false, true])("explain reaches the core only where Authorize honours it (allowExplain %s)", async (allowExplain) => {
    const { core, client } = clientFor(allowExplain);
    await collect(client.authorizeStream(requests(["forbid"], true)));
    expect(core.inputs[0]?.explain).toBe(allowExplain);
  });
});
