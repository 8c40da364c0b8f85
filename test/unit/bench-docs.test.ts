import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { writeDocSection, writesDocs } from "../../bench/support/docs.js";

/** The sections the benches write (bench/*-bench.ts call writeDocSection with these names). */
const SECTIONS = ["hot-path", "node", "instances", "ownership", "proxy", "policy", "h2-connections"];

describe("docs/performance.md, the file the benches write", () => {
  it.each(SECTIONS)("has the %s markers, once each, start before end", async (name) => {
    const text = await readFile("docs/performance.md", "utf8");
    const start = `<!-- bench:${name}:start -->`;
    const end = `<!-- bench:${name}:end -->`;
    expect(text.split(start)).toHaveLength(2);
    expect(text.split(end)).toHaveLength(2);
    expect(text.indexOf(start)).toBeLessThan(text.indexOf(end));
  });
});

describe("writesDocs: only a full run rewrites the tables", () => {
  it.each([
    [[], true],
    [["--json", "out.json"], true],
    [["--quick"], false],
    [["--only", "a"], false],
    [["--profile", "prof"], false],
    [["--no-docs"], false],
  ])("%j → %s", (argv, expected) => {
    expect(writesDocs(argv)).toBe(expected);
  });
});

describe("writeDocSection", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "keygate-bench-docs-"));
    vi.spyOn(console, "log").mockImplementation(() => {});
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    await rm(dir, { recursive: true, force: true });
  });

  it("replaces what stands between its markers and nothing else", async () => {
    const file = join(dir, "performance.md");
    await writeFile(file, "# P\n\nprose\n\n<!-- bench:a:start -->\nold a\n<!-- bench:a:end -->\n\nmore\n\n<!-- bench:b:start -->\nold b\n<!-- bench:b:end -->\n");
    expect(await writeDocSection("a", "| new | table |\n", file)).toBe(true);
    expect(await readFile(file, "utf8")).toBe("# P\n\nprose\n\n<!-- bench:a:start -->\n| new | table |\n<!-- bench:a:end -->\n\nmore\n\n<!-- bench:b:start -->\nold b\n<!-- bench:b:end -->\n");
  });

  it("leaves a file without its markers as it was, and says so", async () => {
    const file = join(dir, "performance.md");
    await writeFile(file, "<!-- bench:a:start -->\nold\n");
    expect(await writeDocSection("a", "new", file)).toBe(false);
    expect(await writeDocSection("b", "new", file)).toBe(false);
    expect(await readFile(file, "utf8")).toBe("<!-- bench:a:start -->\nold\n");
    expect(console.log).toHaveBeenCalledWith(expect.stringContaining("markers"));
  });

  it("does not fail without the file", async () => {
    expect(await writeDocSection("a", "new", join(dir, "missing.md"))).toBe(false);
  });
});
