import http from "node:http";
import { gunzipSync } from "node:zlib";

/**
 * An OTLP/HTTP collector stand-in on a free port: keeps every trace export
 * (gzip undone) that a keygate process sends to /v1/traces, JSON or protobuf.
 */
export interface OtlpExport {
  contentType: string;
  body: Buffer;
}

export interface OtlpReceiver {
  url: string;
  exports: OtlpExport[];
  close(): Promise<void>;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const exports: OtlpExport[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      let body = Buffer.concat(chunks);
      if (req.headers["content-encoding"] === "gzip") body = gunzipSync(body);
      if (req.method === "POST" && req.url === "/v1/traces") exports.push({ contentType: String(req.headers["content-type"]), body });
      const json = String(req.headers["content-type"]).includes("json");
      res.writeHead(200, { "content-type": json ? "application/json" : "application/x-protobuf" });
      res.end(json ? "{}" : undefined);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    exports,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
