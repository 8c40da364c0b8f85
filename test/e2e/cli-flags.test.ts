import { access, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli, type CliResult } from "../support/keygate-process.js";

/**
 * A mistyped command line, as a user types it into the real CLI: keygate's own
 * message naming the command ("did you mean" when a flag is close), exit 2,
 * never Node's parseArgs text. Each is refused while parsing, so no command
 * here opens a database: the data dir they point at is never created.
 */

let dir: string;
let dataDir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "keygate-flags-"));
  dataDir = join(dir, "data");
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const cli = (args: string[]): Promise<CliResult> => runCli(args, { cwd: dir, env: { KEYGATE_DATA_DIR: dataDir }, timeoutMs: 30_000 });

async function refused(args: string[]): Promise<string> {
  const result = await cli(args);
  expect(result.code, `keygate ${args.join(" ")}\nstderr: ${result.stderr}`).toBe(2);
  expect(result.stdout).toBe("");
  // None of Node's wording ("Unknown option '--prot'. To specify a positional argument…"), no stack trace.
  expect(result.stderr).not.toMatch(/Unknown option|strict: false|ERR_PARSE_ARGS|ambiguous/);
  expect(result.stderr).not.toMatch(/\n\s+at /);
  return result.stderr;
}

describe("an unknown flag: keygate's message, the closest flag of that command, exit 2", () => {
  it.each([
    [["serve", "--prot", "8080"], "keygate serve: unknown flag --prot; did you mean --port?\n"],
    [["keygen", "--rol", "admin"], "keygate keygen: unknown flag --rol; did you mean --role?\n"],
    [["keygen", "--Role", "admin"], "keygate keygen: unknown flag --Role; did you mean --role?\n"],
    [["keys", "update", "key_x", "--expires", "1d"], "keygate keys update: unknown flag --expires; did you mean --expire?\n"],
    [["check", "--paht", "/x"], "keygate check: unknown flag --paht; did you mean --path?\n"],
    [["policy", "lint", "--jsno"], "keygate policy lint: unknown flag --jsno; did you mean --json?\n"],
  ])("keygate %j", async (args, message) => {
    expect(await refused(args)).toBe(message);
  });

  it("nothing close: no guess, a pointer to the command's --help", async () => {
    expect(await refused(["keys", "list", "--bogus"])).toBe('keygate keys list: unknown flag --bogus\nRun "keygate keys list --help" for its flags.\n');
  });

  it("an unknown short flag", async () => {
    expect(await refused(["keygen", "-x"])).toBe('keygate keygen: unknown flag -x\nRun "keygate keygen --help" for its flags.\n');
  });
});

describe("a flag used wrongly, or a stray argument", () => {
  it.each([
    [["keygen", "--expire"], 'keygate keygen: --expire needs a value: --expire VALUE\nRun "keygate keygen --help" for its flags.\n'],
    [["serve", "--port"], 'keygate serve: --port needs a value: --port VALUE\nRun "keygate serve --help" for its flags.\n'],
    [["keygen", "--name", "--json"], 'keygate keygen: --name needs a value, got the flag --json (a value starting with "-" is written --name=--json)\n'],
    [["keys", "reset", "--yes=no"], 'keygate keys reset: --yes takes no value, got "no": write just --yes (or leave it out)\n'],
    [["serve", "8080"], 'keygate serve: unexpected argument "8080" (it takes no arguments)\nRun "keygate serve --help" for its flags.\n'],
    [["keys", "list", "acme"], 'keygate keys list: unexpected argument "acme" (it takes no arguments)\nRun "keygate keys list --help" for its flags.\n'],
  ])("keygate %j", async (args, message) => {
    expect(await refused(args)).toBe(message);
  });
});

describe("an expiry that is not in the future: duration must be positive", () => {
  // "--expire -1h" used to reach parseArgs as the short flag -1 (strict mode: an "ambiguous" error).
  it.each([
    [["keygen", "--expire", "-1h"], "-1h"],
    [["keygen", "--expire=-1h"], "-1h"],
    [["keygen", "--expire", "0s"], "0s"],
    [["keygen", "--expire=-30d", "--role", "reader"], "-30d"],
    [["keys", "update", "key_x", "--expire", "-1h"], "-1h"],
  ])("keygate %j", async (args, value) => {
    const stderr = await refused(args);
    expect(stderr).toContain("expire: duration must be positive (e.g. 30d, 12h)");
    expect(stderr).toBe(`keygate: --expire: duration must be positive (e.g. 30d, 12h), not "${value}"\n`);
  });
});

it("no command above opened a database: the data dir they name was never created", async () => {
  await expect(access(dataDir)).rejects.toMatchObject({ code: "ENOENT" });
});
