/**
 * `keygate serve --port 0` (the CLI's own code, same environment
 * variables) with one addition for the memory row: on SIGUSR2 it runs a
 * full garbage collection and logs its memory ("bench memory", bytes), so
 * the bench can tell what the server keeps from garbage it has not
 * collected yet. Run with node --expose-gc.
 */
import { main } from "../../src/cli/main.js";

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error("run with node --expose-gc");

process.on("SIGUSR2", () => {
  gc();
  const { rss, heapUsed, heapTotal, external, arrayBuffers } = process.memoryUsage();
  process.stderr.write(JSON.stringify({ msg: "bench memory", rss, heap_used: heapUsed, heap_total: heapTotal, external, array_buffers: arrayBuffers }) + "\n");
});

process.exitCode = await main(["serve", "--port", "0", ...process.argv.slice(2)]);
