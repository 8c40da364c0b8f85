import { readFile, rename, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";

/** docs/performance.md, from the compiled file (dist/bench/support/). */
export const PERFORMANCE_DOC = fileURLToPath(new URL("../../../docs/performance.md", import.meta.url));

/**
 * Whether a bench run should rewrite its tables in docs/performance.md: only
 * a full run of every row (never --quick, which CI runs on every
 * submission, nor --only or --profile, whose figures are partial or slowed),
 * and not with --no-docs.
 */
export function writesDocs(argv: readonly string[]): boolean {
  return !["--quick", "--only", "--profile", "--no-docs"].some((flag) => argv.includes(flag));
}

/**
 * Replaces what stands between `<!-- bench:NAME:start -->` and
 * `<!-- bench:NAME:end -->` in the file with `body`; the prose around the
 * markers is the authors', the text between them the bench's. Says so and
 * returns false when the file or its markers are missing (the figures are
 * on the console either way).
 */
export async function writeDocSection(name: string, body: string, file: string = PERFORMANCE_DOC): Promise<boolean> {
  const start = `<!-- bench:${name}:start -->`;
  const end = `<!-- bench:${name}:end -->`;
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    console.log(`note: ${file} not written (${(error as Error).message})`);
    return false;
  }
  const from = text.indexOf(start);
  const to = text.indexOf(end, from);
  if (from === -1 || to === -1) {
    console.log(`note: ${file} has no ${start} … ${end} markers; the ${name} tables were not written there`);
    return false;
  }
  const updated = `${text.slice(0, from + start.length)}\n${body.trim()}\n${text.slice(to)}`;
  // Whole or not at all: a reader (or git) never sees a half-written file.
  const temporary = `${file}.${process.pid}.tmp`;
  await writeFile(temporary, updated);
  await rename(temporary, file);
  console.log(`${name} tables written to ${file}`);
  return true;
}
