import { ConnectError } from "@connectrpc/connect";
import { runAudit } from "./audit-command.js";
import { runCheck, runKeygen, runKeys } from "./key-commands.js";
import { runPolicy } from "./policy-commands.js";
import { runResources } from "./resource-commands.js";
import { runMigrate, runServe, runShim, runStatus } from "./server-commands.js";
import { CliError, UsageError } from "./args.js";
import { USAGE } from "./usage.js";
import { createScrubber } from "../telemetry/logger.js";

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case "serve":
        return await runServe(rest);
      case "shim":
        return await runShim(rest);
      case "migrate":
        return await runMigrate(rest);
      case "status":
        return await runStatus(rest);
      case "keygen":
        return await runKeygen(rest);
      case "keys":
        return await runKeys(rest);
      case "check":
        return await runCheck(rest);
      case "audit":
        return await runAudit(rest);
      case "resources":
        return await runResources(rest);
      case "policy":
        return await runPolicy(rest);
      case undefined:
      case "help":
      case "--help":
      case "-h":
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      case "--version":
      case "version":
        process.stdout.write("keygate 0.1.0\n");
        return 0;
      default:
        process.stderr.write(`keygate: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (error) {
    // Like the logs: a key or a URL's password quoted in an error is masked (KEYGATE_KEY_PREFIX is not read yet: the default).
    const scrub = createScrubber();
    if (error instanceof UsageError) {
      const name = commandName(command, rest);
      process.stderr.write(`keygate ${name}: ${scrub(error.message)}\n`);
      if (error.seeHelp) process.stderr.write(`Run "keygate ${name} --help" for its flags.\n`);
      return 2;
    }
    if (error instanceof CliError) {
      process.stderr.write(`keygate: ${scrub(error.message)}\n`);
      return 2;
    }
    if (error instanceof ConnectError) {
      process.stderr.write(`keygate: ${scrub(error.rawMessage)} (${codeName(error.code)})\n`);
      return 1;
    }
    process.stderr.write(`keygate: ${scrub((error as Error).stack ?? String(error))}\n`);
    return 1;
  }
}

/** The command as typed, for a usage message: "serve", "keys list". */
function commandName(command: string | undefined, rest: string[]): string {
  const sub = rest[0];
  return command && ["keys", "resources", "policy"].includes(command) && sub !== undefined && /^[a-z]+$/.test(sub) ? `${command} ${sub}` : String(command);
}

function codeName(code: number): string {
  const names = ["ok", "canceled", "unknown", "invalid_argument", "deadline_exceeded", "not_found", "already_exists", "permission_denied", "resource_exhausted", "failed_precondition", "aborted", "out_of_range", "unimplemented", "internal", "unavailable", "data_loss", "unauthenticated"];
  return names[code] ?? String(code);
}
