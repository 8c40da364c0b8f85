import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { main } from "../../src/cli/main.js";
import { USAGE } from "../../src/cli/usage.js";
import { ENV_VARIABLES, SETTINGS, TRACING_VARIABLES, flagOptions, type SettingSpec } from "../../src/config/settings.js";
import { settingsTable, settingsTableIn } from "../../src/config/settings-docs.js";

/**
 * The settings schema (src/config/settings.ts) is the one place a setting is
 * described: docs/configuration.md's table, the help text and the flags
 * `keygate serve` accepts are derived from it, and fail here when they drift.
 */

const REPO = resolve(import.meta.dirname, "../..");
const DOC = readFileSync(resolve(REPO, "docs/configuration.md"), "utf8");
const SPECS = Object.values(SETTINGS as Record<string, SettingSpec>);
const SERVE_FLAGS = SPECS.filter((spec) => spec.flag !== undefined && spec.commands.includes("serve"));
const squash = (text: string) => text.replace(/\s+/g, " ");

describe("docs/configuration.md", () => {
  it("holds the settings table the schema gives (else: npm run docs:settings)", () => {
    const table = settingsTableIn(DOC);
    expect(table, "docs/configuration.md has <!-- settings:start --> and <!-- settings:end --> markers").toBeDefined();
    expect(
      table,
      `docs/configuration.md's settings table disagrees with src/config/settings.ts.\nRun \`npm run docs:settings\` to rewrite it; the table should read:\n\n${settingsTable()}\n`,
    ).toBe(settingsTable());
  });

  it("lists every variable keygate reads, each once", () => {
    for (const variable of ENV_VARIABLES) expect(settingsTable()).toContain(`| \`${variable}\` |`);
    expect(new Set(ENV_VARIABLES).size).toBe(ENV_VARIABLES.length);
  });

  it("lists every OTEL_* variable the tracing config reads, and no other", () => {
    const source = readFileSync(resolve(REPO, "src/telemetry/tracing-config.ts"), "utf8");
    const read = new Set([...source.matchAll(/"(OTEL_[A-Z_]+)"/g)].map((match) => match[1]!));
    expect(new Set(TRACING_VARIABLES.map((variable) => variable.env))).toEqual(read);
  });
});

describe("the schema", () => {
  it("names each flag once", () => {
    const flags = SPECS.flatMap((spec) => (spec.flag === undefined ? [] : [spec.flag]));
    expect(new Set(flags).size).toBe(flags.length);
  });

  it.each(Object.entries(SETTINGS as Record<string, SettingSpec>))("%s: its defaults parse, and it says what it is in one line", (_, spec) => {
    for (const text of [spec.default, ...Object.values(spec.defaultFor ?? {})]) {
      if (text !== undefined) expect(spec.type.safeParse(text).success, `default ${text}`).toBe(true);
    }
    expect(spec.flag !== undefined || spec.env !== undefined).toBe(true);
    expect(spec.description).not.toContain("\n");
    expect(spec.default === undefined || spec.unset === undefined, "a default, or what having none means").toBe(true);
  });
});

describe("keygate --help and keygate serve", () => {
  it.each(SERVE_FLAGS.map((spec) => [spec.flag, spec] as const))("the help lists --%s with its variable and default", (_, spec) => {
    const help = squash(USAGE);
    expect(help).toContain(` --${spec.flag}${spec.arg === undefined ? "" : ` ${spec.arg}`} `);
    const fallback = spec.default === undefined ? `unset: ${spec.unset!.replaceAll("`", "")}` : `default ${spec.default}`;
    expect(help).toContain(squash(`[${spec.env}, ${fallback}]`));
  });

  it("the help names the variables serve reads without a flag", () => {
    const help = squash(USAGE);
    for (const spec of SPECS.filter((spec) => spec.flag === undefined && spec.commands.includes("serve"))) expect(help).toContain(spec.env);
    expect(help).toContain("OTEL_*");
  });

  describe("in process", () => {
    afterEach(() => {
      vi.restoreAllMocks();
      vi.unstubAllEnvs();
    });

    /** `keygate ARGS` with these variables: its exit code and what it wrote to stderr. */
    async function keygate(args: string[], env: Record<string, string> = {}): Promise<{ code: number; stderr: string }> {
      for (const [name, value] of Object.entries(env)) vi.stubEnv(name, value);
      let stderr = "";
      vi.spyOn(process.stderr, "write").mockImplementation((chunk) => {
        stderr += String(chunk);
        return true;
      });
      const code = await main(args);
      return { code, stderr };
    }

    // A bad --port stops each start before anything is opened (--port itself is given "x").
    it.each(Object.entries(flagOptions("serve")))("serve accepts --%s", async (flag, option) => {
      const args = option.type === "boolean" ? [`--${flag}`] : [`--${flag}`, "x"];
      const { code, stderr } = await keygate(["serve", ...args, ...(flag === "port" ? [] : ["--port", "x"])]);
      expect(code).toBe(2);
      expect(stderr).toContain("invalid configuration");
      expect(stderr).toContain('--port: "x" is not a whole number');
      expect(stderr).not.toContain("Unknown option");
    });

    it("serve takes a flag for every serve setting that has one", () => {
      expect(Object.keys(flagOptions("serve")).sort()).toEqual(SERVE_FLAGS.map((spec) => spec.flag).sort());
    });

    it("the refused start shown in docs/configuration.md", async () => {
      const block = /```console\n\$ (.*)\n([\s\S]*?)```/.exec(DOC);
      expect(block, "a console example").not.toBeNull();
      const words = block![1]!.split(" ");
      const env = Object.fromEntries(words.filter((word) => /^[A-Z_]+=/.test(word)).map((word) => word.split("=") as [string, string]));
      const args = words.slice(words.indexOf("keygate") + 1);
      const { code, stderr } = await keygate(args, env);
      expect(code).toBe(2);
      for (const line of block![2]!.trimEnd().split("\n")) expect(stderr).toContain(line.replace(/ \.\.\.$/, ""));
    });
  });
});
