import { createHash, createHmac, timingSafeEqual } from "node:crypto";
import type { ServerResponse } from "node:http";
import type { EventRelease, ReleaseEvent } from "../../core/manage/resource-manager.js";
import { SANDBOXES, type ResourceRef } from "../../core/resources/resource.js";
import { writeJson } from "../../http/decision-answer.js";
import { headerReader } from "../../http/header-reader.js";
import type { Handler } from "../../http/listener.js";
import { requestIdOf } from "../../http/request-id.js";
import type { Logger } from "../../telemetry/logger.js";
import { errorFields } from "../../telemetry/logger.js";

/**
 * Cube's sandbox lifecycle webhooks (CubeAPI/docs/webhook-integration.md in
 * TencentCloud/CubeSandbox): POST, a JSON body
 * `{"event", "timestamp", "sandbox_id", "template_id"?}`, and
 * `X-Cube-Webhook-Signature`: the hex HMAC-SHA256 of the raw body with the
 * shared secret (Cube's WEBHOOK_SECRET). Cube's newer sender signs as
 * `X-CubeSandbox-Signature: sha256=<hex>` and names each delivery in
 * `X-CubeSandbox-Delivery` (the same across its retries): both are accepted.
 *
 * `sandbox.deleted` releases the sandbox's ownership entry: sandboxes also
 * die by timeout, which a proxy never sees. Everything else Cube sends
 * (created, paused, resumed) is acknowledged and ignored: a webhook names no
 * owner. Unsigned or wrongly signed: 401 and nothing happens. Releasing is
 * idempotent, so retries and duplicates answer 200 again; an unknown id is
 * logged and answered 200 (Cube would otherwise retry it for nothing). An
 * outage answers 503, which Cube retries.
 */

export const CUBE_WEBHOOK_PATH = "/webhooks/cube";
/** Cube's payloads are about 150 bytes; anything near this is not Cube. */
export const WEBHOOK_BODY_MAX_BYTES = 1024 * 1024;

type Request = Parameters<Handler>[0];
type Response = Parameters<Handler>[1];

export interface CubeWebhookDeps {
  /** Unset: the endpoint answers 404, as if it did not exist. */
  secret: string | undefined;
  releaseFromEvent(ref: ResourceRef, event: ReleaseEvent): Promise<EventRelease>;
  log: Logger;
  maxBodyBytes?: number;
}

/** The signature headers, the documented one first; each value is hex, with or without "sha256=". */
const SIGNATURE_HEADERS = ["x-cube-webhook-signature", "x-cubesandbox-signature"];
const HEX_SHA256 = /^(?:sha256=)?([0-9a-fA-F]{64})$/;

/** Whether `header` holds the HMAC-SHA256 of `body` under `secret`, compared in constant time. */
export function signatureMatches(secret: string, body: Buffer, header: string | undefined): boolean {
  const hex = header === undefined ? undefined : HEX_SHA256.exec(header.trim())?.[1];
  if (hex === undefined) return false;
  const expected = createHmac("sha256", secret).update(body).digest();
  const given = Buffer.from(hex, "hex");
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export function cubeWebhookHandler({ secret, releaseFromEvent, log, maxBodyBytes = WEBHOOK_BODY_MAX_BYTES }: CubeWebhookDeps): Handler {
  return (req, res) => {
    if (secret === undefined) {
      req.resume();
      writeJson(res, 404, { code: 404, message: "not found" }, {});
      return;
    }
    if (req.method !== "POST") {
      req.resume();
      writeJson(res, 405, { code: 405, message: "use POST (Cube's sandbox webhooks)" }, { allow: "POST" });
      return;
    }
    void readBody(req, maxBodyBytes).then(
      (body) => {
        if (body === "too large") return refuseLarge(req, res, maxBodyBytes);
        return handle(req, res, body).catch((error: unknown) => {
          log.error("cube webhook failed", { ...errorFields(error), request_id: requestIdOf(req) });
          writeJson(res, 503, { code: 503, message: "ownership ledger unavailable; retry" }, {});
        });
      },
      () => {
        // The client went away mid-body: there is no one to answer.
        if (!res.headersSent) res.destroy();
      },
    );
  };

  async function handle(req: Request, res: Response, body: Buffer): Promise<void> {
    const header = headerReader(req);
    const requestId = requestIdOf(req);
    const signatures = SIGNATURE_HEADERS.map((name) => header(name)).filter((value) => value !== undefined);
    if (signatures.length === 0) {
      log.warn("cube webhook refused: unsigned", { request_id: requestId });
      writeJson(res, 401, { code: 401, message: "missing X-Cube-Webhook-Signature" }, {});
      return;
    }
    if (!signatures.some((value) => signatureMatches(secret!, body, value))) {
      log.warn("cube webhook refused: wrong signature", { request_id: requestId });
      writeJson(res, 401, { code: 401, message: "invalid X-Cube-Webhook-Signature" }, {});
      return;
    }
    const payload = parsePayload(body);
    if (!payload) {
      // Signed by Cube yet unreadable: a retry would not fix it (Cube does not retry a 4xx).
      log.warn("cube webhook refused: not a Cube event", { request_id: requestId });
      writeJson(res, 400, { code: 400, message: 'expected a JSON object with string "event" and "sandbox_id"' }, {});
      return;
    }
    // Cube's delivery id when it sends one; else the body's digest, which its retries repeat byte for byte.
    const eventId = header("x-cubesandbox-delivery")?.slice(0, 128) || `sha256:${createHash("sha256").update(body).digest("hex").slice(0, 32)}`;
    const fields = { event: payload.event, event_id: eventId, sandbox_id: payload.sandboxId, request_id: requestId };
    if (payload.event !== "sandbox.deleted") {
      log.debug("cube webhook ignored", fields);
      writeJson(res, 200, { ok: true, outcome: "ignored" }, {});
      return;
    }
    const result = await releaseFromEvent(
      { kind: SANDBOXES, id: payload.sandboxId },
      { source: "cube-webhook", eventId, event: payload.event, ...(payload.at && { at: payload.at }) },
    );
    switch (result.outcome) {
      case "released":
        log.info("sandbox released by cube webhook", { ...fields, org: result.resource.org, namespace: result.resource.namespace });
        break;
      case "unknown":
        log.info("cube webhook for a sandbox with no ownership entry", fields);
        break;
      case "already_released":
        log.debug("cube webhook for a sandbox already released", fields);
        break;
      case "stale":
        log.warn("cube webhook older than the sandbox's ownership entry: not released", { ...fields, claimed_at: result.resource.createdAt.toISOString() });
        break;
    }
    writeJson(res, 200, { ok: true, outcome: result.outcome }, {});
  }
}

interface CubeEvent {
  event: string;
  sandboxId: string;
  at: Date | undefined;
}

function parsePayload(body: Buffer): CubeEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const { event, sandbox_id: sandboxId, timestamp } = value as Record<string, unknown>;
  if (typeof event !== "string" || typeof sandboxId !== "string" || sandboxId === "") return undefined;
  const at = typeof timestamp === "string" ? new Date(timestamp) : undefined;
  return { event, sandboxId, at: at && !Number.isNaN(at.getTime()) ? at : undefined };
}

/** The whole body, or "too large" as soon as it passes the cap (declared or streamed). */
function readBody(req: Request, max: number): Promise<Buffer | "too large"> {
  const declared = Number(headerReader(req)("content-length"));
  if (declared > max) return Promise.resolve("too large");
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        req.off("data", onData);
        resolve("too large");
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
    req.on("aborted", () => reject(new Error("request aborted")));
  });
}

/** 413; over HTTP/1.1 the connection closes rather than read the rest. */
function refuseLarge(req: Request, res: Response, max: number): void {
  if (req.httpVersionMajor === 1) (res as ServerResponse).shouldKeepAlive = false;
  writeJson(res, 413, { code: 413, message: `request body larger than ${max} bytes` }, {});
  req.resume();
}
