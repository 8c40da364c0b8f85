import { parseArgs, type ParseArgsConfig } from "node:util";
import type { ConfigResult, Flags } from "../config/config.js";
import { USAGE } from "./usage.js";

/** A mistake of the person at the keyboard: printed as "keygate: <message>", exit 2. */
export class CliError extends Error {
  override readonly name = "CliError";
}

const COMMON = {
  "data-dir": { type: "string" },
  "database-url": { type: "string" },
  "policy-dir": { type: "string" },
  "key-prefix": { type: "string" },
  server: { type: "string" },
  "api-key": { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

export type Options = NonNullable<ParseArgsConfig["options"]>;

export interface Parsed {
  flags: Flags & Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

export function parse(args: string[], options: Options): Parsed {
  try {
    const { values, positionals } = parseArgs({ args, options: { ...COMMON, ...options }, allowPositionals: true, strict: true });
    return { flags: values as Parsed["flags"], positionals };
  } catch (error) {
    throw new CliError(`${(error as Error).message}\nRun "keygate --help" for usage.`);
  }
}

export function configOrThrow<T>(result: ConfigResult<T>): T {
  if (!result.ok) throw new CliError(`invalid configuration:\n  ${result.errors.join("\n  ")}`);
  return result.config;
}

export function help(): number {
  process.stdout.write(USAGE);
  return 0;
}

