import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import { EventEmitter } from "node:events";
import type { Duplex, Readable } from "node:stream";
import { Pool, type Dispatcher } from "undici";
import type { Authorize } from "../../core/authorize/authorizer.js";
import type { Decision, KeyIdentity } from "../../core/authorize/decision.js";
import type { ResourceLedger } from "../../core/resources/resource-ledger.js";
import { resourceNamespaceFor, SANDBOXES, type Owner } from "../../core/resources/resource.js";
import type { PolicyRoutes } from "../../core/policy/policy-routes.js";
import type { ClientIpRules, CredentialSource } from "../../config/config.js";
import { clientIp, isTrusted, PEER_ONLY } from "../../http/client-ip.js";
import { credentialFromHeaders } from "../../http/credentials.js";
import { writeDecision, writeJson } from "../../http/decision-answer.js";
import { headerReader, utf8HeaderValue } from "../../http/header-reader.js";
import { httpStatusFor } from "../../core/authorize/decision.js";
import { requestIdOf } from "../../http/request-id.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";
import { clientResponseHeaders, takeQueryCredentials, upstreamRequestHeaders, type ForwardedFor } from "./forward-headers.js";
import { createdIds, filterList, stampCreateBody } from "./sandbox-bodies.js";
import { sandboxRoute, type SandboxRoute } from "./sandbox-routes.js";

/**
 * Proxy mode: keygate in front of Cube (or any E2B-compatible API). Every
 * request is decided by the same core as the callback (entry "proxy"; the
 * core does the ownership check on sandbox paths); a deny is answered here,
 * in the callback's JSON, and never forwarded. What is allowed goes upstream
 * through one undici pool, bodies streamed both ways, except for the three
 * routes that need the proxy's eyes (see sandbox-routes.ts): a create's body
 * is stamped with its owner and its new id claimed in the ledger before the
 * answer leaves; a list is filtered to the caller's sandboxes; a delete
 * releases. WebSocket upgrades (the terminal) are piped both ways.
 */

type Request = IncomingMessage | Http2ServerRequest;
type Response = ServerResponse | Http2ServerResponse;

/** A create's or fork's body is read whole (to stamp it): larger is refused with 413. */
export const MAX_CREATE_BODY_BYTES = 1024 * 1024;
/** An answer the proxy must read whole (create, fork, list): larger is a 502, never passed on unread. */
export const MAX_READ_ANSWER_BYTES = 16 * 1024 * 1024;

export interface SandboxProxyDeps {
  /** The Cube (E2B API) server; its path, if any, prefixes every forwarded path. */
  upstream: string;
  /** Upstream answer headers (then each stretch of the body) within this, or 504. */
  timeoutMs: number;
  authorize: Authorize;
  credentialPriority: readonly CredentialSource[];
  clientIp?: ClientIpRules;
  ledger: ResourceLedger;
  /** The policy's routes.yaml in force now (its prefixes are stripped before a create, list or delete is recognised). */
  routes: () => PolicyRoutes;
  /** Ownership enforced: lists filtered, a create whose claim fails answered 502. Off: claims and releases are still recorded. */
  ownership: boolean;
  /** A key's own live-sandbox limit (null = none), from the cached key record. */
  keyMaxSandboxes: (credential: string) => Promise<number | null>;
  /** Live sandboxes per org (KEYGATE_ORG_MAX_SANDBOXES); null = unlimited. */
  orgMaxSandboxes: number | null;
  log: Logger;
  /** Tests and the bench may bring their own dispatcher; by default a Pool to the upstream's origin. */
  dispatcher?: Dispatcher;
}

export interface SandboxProxy {
  handle(req: Request, res: Response): void;
  /** Node's "upgrade" event: a WebSocket (the terminal) decided, then piped to the upstream. */
  upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  close(): Promise<void>;
}

interface Decided {
  decision: Decision;
  credential: string;
  /** The path as the client sent it (for forwarding) and its query without credential parameters. */
  path: string;
  query: string;
  source: string | undefined;
  peer: string | undefined;
}

export function createSandboxProxy(deps: SandboxProxyDeps): SandboxProxy {
  const rules = deps.clientIp ?? PEER_ONLY;
  const base = new URL(deps.upstream);
  const basePath = base.pathname.replace(/\/+$/, "");
  const ownPool = deps.dispatcher === undefined;
  const pool =
    deps.dispatcher ??
    new Pool(base.origin, {
      headersTimeout: deps.timeoutMs,
      bodyTimeout: deps.timeoutMs,
      connectTimeout: Math.min(deps.timeoutMs, 10_000),
    });
  const { log } = deps;

  async function decide(req: Request, upgrade: boolean): Promise<Decided> {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    // Credential parameters are never forwarded; they are read only on a WebSocket upgrade (a browser cannot set headers there).
    const taken = takeQueryCredentials(q === -1 ? "" : url.slice(q + 1));
    const raw = headerReader(req);
    const header = upgrade
      ? (name: string) =>
          raw(name) ??
          (name === "x-api-key" ? taken.apiKey : name === "authorization" && taken.accessToken !== undefined ? `Bearer ${taken.accessToken}` : undefined)
      : raw;
    const peer = req.socket?.remoteAddress;
    const source = clientIp(rules, peer, raw);
    const credential = credentialFromHeaders(header, deps.credentialPriority);
    let decision: Decision;
    try {
      decision = await deps.authorize({
        entry: "proxy",
        ...(source !== undefined && { source }),
        credential,
        path: utf8HeaderValue(path),
        method: req.method ?? "",
        namespace: "",
        org: "",
      });
    } catch (error) {
      log.error("proxy authorize error", errorFields(error));
      decision = { allowed: false, reason: "unavailable", message: "authorization unavailable, request denied", matchedRule: "" };
    }
    return { decision, credential, path, query: taken.query, source, peer };
  }

  function forwarded(req: Request, d: Decided, extra?: Pick<ForwardedFor, "contentLength" | "extra">): string[] {
    const key = d.decision.key;
    const id = requestIdOf(req);
    return upstreamRequestHeaders(req.rawHeaders, {
      peer: d.peer,
      trustedPeer: d.peer !== undefined && isTrusted(rules, d.peer),
      key,
      ...(extra?.contentLength !== undefined && { contentLength: extra.contentLength }),
      // The request's id goes upstream too, so Cube's logs and keygate's can be matched.
      extra: id === undefined ? (extra?.extra ?? {}) : { ...extra?.extra, "x-request-id": id },
    });
  }

  /** The answer's headers for the client, with the request's id unless the upstream named one. */
  function answerHeaders(req: Request, headers: Dispatcher.ResponseData["headers"], drop?: readonly string[]): OutgoingHttpHeaders {
    const out = clientResponseHeaders(headers, drop);
    const id = requestIdOf(req);
    if (id !== undefined && out["x-request-id"] === undefined) out["x-request-id"] = id;
    return out;
  }

  function target(d: Decided): string {
    return basePath + d.path + (d.query === "" ? "" : `?${d.query}`);
  }

  /**
   * Emits "abort" when the client goes away before its answer is complete: the
   * upstream request is cancelled with it (undici takes an EventEmitter as a
   * signal; an AbortController per request cost ~3 % of the proxy's CPU).
   */
  function clientGone(res: Response): EventEmitter {
    const signal = new EventEmitter();
    res.once("close", () => {
      if (!res.writableFinished) signal.emit("abort");
    });
    return signal;
  }

  /** Everything but creates, lists and deletes: streamed both ways, nothing read. */
  function stream(req: Request, res: Response, d: Decided): void {
    pool
      .stream(
        {
          path: target(d),
          method: req.method as Dispatcher.HttpMethod,
          headers: forwarded(req, d),
          body: hasBody(req) ? (req as Readable) : null,
          signal: clientGone(res),
        },
        ({ statusCode, headers }) => {
          res.writeHead(statusCode, answerHeaders(req, headers));
          return res as ServerResponse;
        },
      )
      .catch((error: unknown) => upstreamFailed(res, error));
  }

  function upstreamFailed(res: Response, error: unknown): void {
    if (res.headersSent) {
      // Mid-answer: the client sees a cut connection, never a spliced error.
      res.destroy();
      return;
    }
    if (error instanceof LedgerUnavailable) {
      // Fail closed: without the ledger a list cannot be filtered.
      log.error("proxy: ownership ledger unavailable, request denied", errorFields(error.cause));
      writeJson(res, 503, { code: 503, message: "ownership ledger unavailable, request denied" }, {});
      return;
    }
    const failure = upstreamFailure(error, deps.timeoutMs);
    if (failure === undefined) return; // the client went away
    log.warn("proxy upstream failed", { status: failure.status, ...errorFields(error) });
    writeJson(res, failure.status, { code: failure.status, message: failure.message }, {});
  }

  async function create(req: Request, res: Response, d: Decided, key: KeyIdentity, route: SandboxRoute): Promise<void> {
    const declared = Number(req.headers["content-length"] ?? 0);
    // Over the cap, the rest is read and dropped (not destroyed): the 413 must reach the client.
    const raw = declared > MAX_CREATE_BODY_BYTES ? undefined : await readAll(req, MAX_CREATE_BODY_BYTES, "drain");
    if (raw === undefined) {
      refuseTooLarge(req, res);
      return;
    }
    // A key of every namespace creates into "default" (as the ResourceService claims): a resource lives in one namespace.
    const owner = { org: key.org, namespace: resourceNamespaceFor(key.namespace), keyId: key.id };
    const stamped = stampCreateBody(raw, owner);
    if (!stamped.ok) {
      writeJson(res, 400, { code: 400, message: stamped.message }, {});
      return;
    }
    const over = await overLimit(d.credential, key, stamped.count);
    if (over !== undefined) {
      writeJson(res, over.status, { code: over.status, message: over.message }, {});
      return;
    }
    // Not cancelled when the client leaves: a sandbox Cube may have made is claimed all the same
    // (its org can list and kill it), never left running unowned.
    const answer = await pool.request({
      path: target(d),
      method: "POST",
      headers: forwarded(req, d, { contentLength: stamped.body.length, extra: { "content-type": "application/json", "accept-encoding": "identity" } }),
      body: stamped.body,
    });
    const body = await readAll(answer.body, MAX_READ_ANSWER_BYTES);
    if (body === undefined) {
      log.error("proxy: create answer too large to read", { route: route.kind, limit: MAX_READ_ANSWER_BYTES });
      writeJson(res, 502, { code: 502, message: "upstream answer too large" }, {});
      return;
    }
    if (answer.statusCode >= 200 && answer.statusCode < 300) {
      const claimed = await claimCreated(body, key, owner, route);
      if (!claimed.ok) {
        writeJson(res, 502, { code: 502, message: claimed.message }, {});
        return;
      }
    }
    writeBuffered(req, res, answer.statusCode, answer.headers, body);
  }

  /**
   * Records the owner of every sandbox a 2xx create or fork answer names,
   * before the answer is passed on: a client never holds a sandbox the ledger
   * does not know (which would be a 404 to it on every later call). When the
   * answer names none, or a claim fails, the client gets a 502 instead; a
   * sandbox whose claim failed (the ledger unreachable) is killed upstream,
   * best effort, so it neither runs unowned nor escapes the limit. A conflict
   * (the id is another org's) is never killed: it is theirs.
   */
  async function claimCreated(body: Buffer, key: KeyIdentity, owner: Owner, route: SandboxRoute): Promise<{ ok: true } | { ok: false; message: string }> {
    let ids: string[] | undefined;
    try {
      ids = createdIds(JSON.parse(body.toString("utf8")));
    } catch {
      ids = undefined;
    }
    if (ids === undefined) {
      log.error("proxy: a successful create names no sandboxID; answered 502", { route: route.kind, key_id: key.id });
      return { ok: false, message: "upstream create answer names no sandbox; not handed out unowned" };
    }
    let failed: string | undefined;
    for (const id of ids) {
      try {
        const claim = await deps.ledger.claim({ kind: SANDBOXES, id }, owner);
        if (!claim.ok) {
          log.error("proxy: created sandbox already owned by another org; answered 502", { sandbox_id: id, key_id: key.id, owner_org: claim.resource.org });
          failed ??= `sandbox ${id} is recorded for another owner`;
        }
      } catch (error) {
        log.error("proxy: claiming a created sandbox failed; killing it upstream", { sandbox_id: id, key_id: key.id, ...errorFields(error) });
        failed ??= "could not record the new sandbox's owner";
        await killUnowned(id);
      }
    }
    if (failed !== undefined && !deps.ownership) {
      log.warn("proxy: ownership off, the create is answered anyway", { key_id: key.id });
      return { ok: true };
    }
    return failed === undefined ? { ok: true } : { ok: false, message: failed };
  }

  async function killUnowned(id: string): Promise<void> {
    try {
      const answer = await pool.request({ path: `${basePath}/sandboxes/${encodeURIComponent(id)}`, method: "DELETE" });
      await answer.body.dump();
      log.warn("proxy: unowned sandbox killed upstream", { sandbox_id: id, status: answer.statusCode });
    } catch (error) {
      log.error("proxy: could not kill an unowned sandbox; it runs until its timeout, visible to platform keys only", { sandbox_id: id, ...errorFields(error) });
    }
  }

  /** A key's own limit, then its org's default (platform keys, org "*", have no org default): 429 naming the limit. */
  async function overLimit(credential: string, key: KeyIdentity, adding: number): Promise<{ status: number; message: string } | undefined> {
    try {
      const own = await deps.keyMaxSandboxes(credential);
      if (own !== null && (await deps.ledger.countLive(SANDBOXES, { keyId: key.id })) + adding > own) {
        return { status: 429, message: `live sandbox limit reached: ${own} for key ${key.id} (keygen --max-sandboxes)` };
      }
      const org = deps.orgMaxSandboxes;
      if (org !== null && key.org !== "*" && (await deps.ledger.countLive(SANDBOXES, { org: key.org })) + adding > org) {
        return { status: 429, message: `live sandbox limit reached: ${org} for org ${key.org} (KEYGATE_ORG_MAX_SANDBOXES)` };
      }
      return undefined;
    } catch (error) {
      log.error("proxy: live sandbox count failed, create denied", errorFields(error));
      return { status: 503, message: "ownership ledger unavailable, request denied" };
    }
  }

  async function list(req: Request, res: Response, d: Decided, key: KeyIdentity): Promise<void> {
    const [asked, ids] = await Promise.allSettled([
      pool.request({
        path: target(d),
        method: "GET",
        headers: forwarded(req, d, { extra: { "accept-encoding": "identity" } }),
        signal: clientGone(res),
      }),
      deps.ledger.liveIds(SANDBOXES, { org: key.org, namespace: key.namespace }),
    ]);
    if (ids.status === "rejected") {
      // The answer is never read: let its connection go back to the pool.
      if (asked.status === "fulfilled") await asked.value.body.dump().catch(() => {});
      throw new LedgerUnavailable(ids.reason);
    }
    if (asked.status === "rejected") throw asked.reason;
    const answer = asked.value;
    const visible = ids.value;
    const body = await readAll(answer.body, MAX_READ_ANSWER_BYTES);
    if (answer.statusCode < 200 || answer.statusCode >= 300) {
      if (body === undefined) writeJson(res, 502, { code: 502, message: "upstream answer too large" }, {});
      else writeBuffered(req, res, answer.statusCode, answer.headers, body);
      return;
    }
    let kept: unknown[] | undefined;
    const encoding = answer.headers["content-encoding"];
    if (body !== undefined && (encoding === undefined || encoding === "identity")) {
      try {
        kept = filterList(JSON.parse(body.toString("utf8")), (id) => visible.has(id));
      } catch {
        kept = undefined;
      }
    }
    if (kept === undefined) {
      log.error("proxy: a sandbox list answer could not be read; answered []", { key_id: key.id, bytes: body?.length ?? null, encoding: encoding ?? null });
      kept = [];
    }
    writeBuffered(req, res, answer.statusCode, answer.headers, Buffer.from(JSON.stringify(kept)));
  }

  async function remove(req: Request, res: Response, d: Decided, id: string): Promise<void> {
    const answer = await pool.request({
      path: target(d),
      method: req.method as Dispatcher.HttpMethod,
      headers: forwarded(req, d),
      body: hasBody(req) ? (req as Readable) : null,
      signal: clientGone(res),
    });
    if ((answer.statusCode >= 200 && answer.statusCode < 300) || answer.statusCode === 404) {
      // Released before the answer leaves: a create right after a kill sees the freed budget.
      await deps.ledger.release({ kind: SANDBOXES, id }).catch((error: unknown) => {
        log.error("proxy: releasing a deleted sandbox failed; it still counts as live", { sandbox_id: id, ...errorFields(error) });
      });
    }
    res.writeHead(answer.statusCode, answerHeaders(req, answer.headers));
    answer.body.pipe(res as ServerResponse);
  }

  function writeBuffered(req: Request, res: Response, status: number, headers: Dispatcher.ResponseData["headers"], body: Buffer): void {
    const out = answerHeaders(req, headers, ["content-length", "content-encoding"]);
    out["content-length"] = String(body.length);
    res.writeHead(status, out);
    res.end(body);
  }

  async function handleAllowed(req: Request, res: Response, d: Decided): Promise<void> {
    const key = d.decision.key;
    const route = sandboxRoute(req.method ?? "", d.path, deps.routes().strip);
    // Dev mode decides without a key: nothing to stamp, claim or filter by.
    if (key === undefined) return stream(req, res, d);
    switch (route.kind) {
      case "create":
      case "fork":
        return create(req, res, d, key, route);
      case "list":
        if (!deps.ownership || key.org === "*") return stream(req, res, d);
        return list(req, res, d, key);
      case "delete":
        return remove(req, res, d, route.id);
      case "other":
        return stream(req, res, d);
    }
  }

  return {
    handle(req, res) {
      void (async () => {
        const d = await decide(req, false);
        if (!d.decision.allowed) {
          req.resume();
          writeDecision(res, d.decision);
          return;
        }
        await handleAllowed(req, res, d);
      })().catch((error: unknown) => upstreamFailed(res, error));
    },

    upgrade(req, socket, head) {
      socket.on("error", () => socket.destroy());
      void (async () => {
        const d = await decide(req, true);
        if (!d.decision.allowed) {
          const status = httpStatusFor(d.decision.reason);
          rawAnswer(socket, status, { code: status, message: d.decision.message });
          return;
        }
        const upgrade = req.headers["upgrade"] ?? "websocket";
        const { headers, socket: upstream } = await pool.upgrade({ path: target(d), method: req.method ?? "GET", headers: forwarded(req, d), protocol: upgrade });
        if (socket.destroyed) {
          upstream.destroy();
          return;
        }
        let answer = "HTTP/1.1 101 Switching Protocols\r\n";
        for (const [name, value] of Object.entries(headers)) {
          for (const one of Array.isArray(value) ? value : [value]) if (one !== undefined) answer += `${name}: ${one}\r\n`;
        }
        socket.write(`${answer}\r\n`);
        if (head.length > 0) upstream.write(head);
        upstream.on("error", () => socket.destroy());
        socket.on("close", () => upstream.destroy());
        upstream.on("close", () => socket.destroy());
        upstream.pipe(socket);
        socket.pipe(upstream);
      })().catch((error: unknown) => {
        const failure = upstreamFailure(error, deps.timeoutMs) ?? { status: 502, message: "upstream refused the WebSocket upgrade" };
        log.warn("proxy upgrade failed", { status: failure.status, ...errorFields(error) });
        rawAnswer(socket, failure.status, { code: failure.status, message: failure.message });
      });
    },

    async close() {
      if (ownPool) await pool.close();
    },
  };
}

class LedgerUnavailable extends Error {
  constructor(cause: unknown) {
    super("ownership ledger unavailable", { cause });
    this.name = "LedgerUnavailable";
  }
}

function hasBody(req: Request): boolean {
  const length = req.headers["content-length"];
  return (length !== undefined && length !== "0") || req.headers["transfer-encoding"] !== undefined || (req.httpVersionMajor === 2 && !req.readableEnded && req.method !== "GET" && req.method !== "HEAD");
}

/**
 * The whole stream, or undefined once it passes `max` bytes. Then an
 * upstream answer is destroyed; a client's body is drained (read and
 * dropped), so that the answer saying why can still reach the client.
 */
function readAll(stream: Readable, max: number, over: "destroy" | "drain" = "destroy"): Promise<Buffer | undefined> {
  // Events, not `for await`: leaving such a loop early destroys the stream, and a drained one must live on.
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (outcome: () => void) => {
      if (settled) return;
      settled = true;
      outcome();
    };
    stream.on("data", (chunk: Buffer) => {
      if (settled) return;
      size += chunk.length;
      if (size <= max) {
        chunks.push(chunk);
        return;
      }
      chunks.length = 0;
      settle(() => resolve(undefined));
      if (over === "destroy") stream.destroy();
    });
    stream.once("end", () => settle(() => resolve(Buffer.concat(chunks, size))));
    stream.once("error", (error) => settle(() => reject(error)));
    stream.once("close", () => settle(() => reject(new Error("stream closed before its end"))));
  });
}

function refuseTooLarge(req: Request, res: Response): void {
  if (req.httpVersionMajor === 1) (res as ServerResponse).shouldKeepAlive = false;
  writeJson(res, 413, { code: 413, message: `request body larger than ${MAX_CREATE_BODY_BYTES} bytes (a sandbox create is read whole, to record its owner)` }, {});
}

const TIMEOUTS = new Set(["UND_ERR_HEADERS_TIMEOUT", "UND_ERR_BODY_TIMEOUT", "UND_ERR_CONNECT_TIMEOUT"]);

/** 504 when the upstream was too slow, 502 when it could not be reached or broke the exchange; undefined when the client left. */
function upstreamFailure(error: unknown, timeoutMs: number): { status: number; message: string } | undefined {
  const code = (error as { code?: string } | undefined)?.code;
  const name = (error as { name?: string } | undefined)?.name;
  if (name === "AbortError" || code === "UND_ERR_ABORTED") return undefined;
  if (code !== undefined && TIMEOUTS.has(code)) return { status: 504, message: `upstream did not answer within ${timeoutMs} ms` };
  return { status: 502, message: `upstream unreachable or failed${code ? ` (${code})` : ""}` };
}

/** An answer written on a raw socket (a refused upgrade), then the connection closed. */
function rawAnswer(socket: Duplex, status: number, body: unknown): void {
  if (socket.destroyed) return;
  const text = JSON.stringify(body);
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? "Error"}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${text}`,
  );
}

const STATUS_TEXT: Record<number, string> = {
  401: "Unauthorized",
  403: "Forbidden",
  404: "Not Found",
  429: "Too Many Requests",
  502: "Bad Gateway",
  503: "Service Unavailable",
  504: "Gateway Timeout",
};
