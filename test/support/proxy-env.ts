import { appendFile, cp, mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { KeygateProcess } from "./keygate-process.js";
import { POLICY_DIR } from "./keygate-process.js";

/** The proxy's port, from the server's "keygate listening" log line (`"proxy":"HOST:PORT"`). */
export function proxyUrlOf(server: KeygateProcess): string {
  const match = /"proxy":"[^"]*:(\d+)"/.exec(server.output());
  if (!match) throw new Error(`no proxy address in the server's log:\n${server.output()}`);
  return `http://127.0.0.1:${match[1]}`;
}

/**
 * The shipped policy plus the E2B routes the current SDK calls that it does
 * not cover yet (v2 create and connect, fork, v2 logs, metrics, the terminal:
 * issue 13 item 6 brings them into the default policy). Same roles: reads
 * for readers, writes and the shell for writers.
 */
export async function sdkPolicyDir(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "keygate-proxy-policy-"));
  await cp(POLICY_DIR, dir, { recursive: true });
  await appendFile(
    join(dir, "policy.csv"),
    [
      "",
      "# --- the e2b SDK's routes (tests) ---",
      "p, reader, *, *, /v2/sandboxes/:id/logs, ^(GET|HEAD)$",
      "p, reader, *, *, /sandboxes/:id/metrics, ^(GET|HEAD)$",
      "p, writer, *, *, /v2/sandboxes, ^POST$",
      "p, writer, *, *, /v2/sandboxes/:id/connect, ^POST$",
      "p, writer, *, *, /sandboxes/:id/fork, ^POST$",
      "p, writer, *, *, /sandboxes/:id/terminal/ws, ^GET$",
      "",
    ].join("\n"),
  );
  return dir;
}
