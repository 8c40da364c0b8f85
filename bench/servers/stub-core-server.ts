/**
 * keygate's server stack with the decision core taken out: the real config,
 * runtime (database, policy, caches) and startServer — listener, protocol
 * sniffing, Connect adapter, routes, proto conversion, Cube callback — with
 * only `runtime.authorize` replaced by a function that returns a constant
 * allow. Whatever `keygate serve` costs beyond this server is the cost of
 * deciding (key lookup, cache, policy, usage counting, rate limits).
 *
 * Configured like `keygate serve --port 0` (the same environment
 * variables); logs "keygate listening" with its address.
 */
import type { Authorize } from "../../src/core/authorize/authorizer.js";
import type { Decision } from "../../src/core/authorize/decision.js";
import { readServeConfig } from "../../src/config/config.js";
import { createLogger, errorFields } from "../../src/telemetry/logger.js";
import { openRuntime, type Runtime } from "../../src/server/runtime.js";
import { startServer } from "../../src/server/serve.js";

/** Shaped like a real allow for a reader key, so the response costs as much to convert and encode. */
const ALLOW: Decision = {
  allowed: true,
  reason: "allowed",
  message: "",
  matchedRule: "policy.csv:26",
  key: { id: "key_0000000000benchstub", name: "bench-warm", org: "bench", namespace: "*", roles: ["reader"] },
};
const ALLOWED: Promise<Decision> = Promise.resolve(ALLOW);
const stubAuthorize: Authorize = () => ALLOWED;

const parsed = readServeConfig({ port: "0" }, process.env, process.cwd());
if (!parsed.ok) {
  process.stderr.write(parsed.errors.join("\n") + "\n");
  process.exit(2);
}
const config = parsed.config;
const log = createLogger("info");
const real = await openRuntime(config, { onError: (error) => log.error("decision failed, denied", errorFields(error)), log });
// startServer reads runtime.authorize when it builds its routes and the callback: replace it first.
const runtime: Runtime = { ...real, authorize: stubAuthorize };
const server = await startServer(config, runtime, log);
log.info("keygate listening", { address: `${server.host}:${server.port}`, stub: "runtime.authorize returns a constant allow" });

process.once("SIGTERM", () => {
  void (async () => {
    await server.stop();
    await real.close();
    process.exit(0);
  })();
});
