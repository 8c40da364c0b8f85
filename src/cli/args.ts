import { parseArgs, type ParseArgsConfig } from "node:util";
import type { ConfigResult, Flags } from "../config/config.js";
import { printable } from "../core/time/duration.js";
import { closest } from "./suggest.js";
import { USAGE } from "./usage.js";

/** A mistake of the person at the keyboard: printed as "keygate: <message>", exit 2. */
export class CliError extends Error {
  override readonly name: string = "CliError";
}

/**
 * A flag or argument the command does not take: printed as
 * "keygate <command>: <message>", exit 2; with `seeHelp`, followed by a
 * pointer to that command's --help (main names the command).
 */
export class UsageError extends CliError {
  override readonly name = "UsageError";
  constructor(
    message: string,
    readonly seeHelp = false,
  ) {
    super(message);
  }
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

/**
 * The command's flags and arguments, or a UsageError in keygate's words. parseArgs runs
 * non-strict and the tokens are checked here, so no Node "Unknown option" text reaches
 * a user (test/e2e/cli-flags.test.ts). `maxPositionals`: how many arguments the command takes.
 */
export function parse(args: string[], options: Options, maxPositionals = Infinity): Parsed {
  const known: Options = { ...COMMON, ...options };
  const { values, positionals, tokens } = parseArgs({ args, options: known, allowPositionals: true, strict: false, tokens: true });
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    const spec = Object.hasOwn(known, token.name) ? known[token.name] : undefined;
    const flag = token.rawName;
    if (spec === undefined) {
      const guess = flag.startsWith("--") ? closest(token.name, Object.keys(known)) : undefined;
      throw guess === undefined ? new UsageError(`unknown flag ${printable(flag)}`, true) : new UsageError(`unknown flag ${printable(flag)}; did you mean --${guess}?`);
    }
    if (spec.type === "boolean") {
      if (token.value !== undefined) throw new UsageError(`${flag} takes no value, got "${printable(token.value)}": write just ${flag} (or leave it out)`);
    } else if (token.value === undefined) {
      throw new UsageError(`${flag} needs a value: ${flag} VALUE`, true);
    } else if (!token.inlineValue && token.value.startsWith("-") && !/^-\d/.test(token.value)) {
      // "--name --json" forgot the name; a value that really starts with "-" is written "--name=-x".
      // A negative number ("--expire -1h") is taken as the value, for the check that says what is wrong with it.
      throw new UsageError(`${flag} needs a value, got the flag ${printable(token.value)} (a value starting with "-" is written ${flag}=${printable(token.value)})`);
    }
  }
  if (positionals.length > maxPositionals) {
    const extra = positionals[maxPositionals]!;
    const takes = maxPositionals === 0 ? "it takes no arguments" : `it takes at most ${maxPositionals}`;
    throw new UsageError(`unexpected argument "${printable(extra)}" (${takes})`, true);
  }
  return { flags: values as Parsed["flags"], positionals };
}

export function configOrThrow<T>(result: ConfigResult<T>): T {
  if (!result.ok) throw new CliError(`invalid configuration:\n  ${result.errors.join("\n  ")}`);
  return result.config;
}

export function help(): number {
  process.stdout.write(USAGE);
  return 0;
}

