/** Tables for the terminal: aligned columns, or Markdown that pastes into the README. */

export function formatColumns(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => (row[col] ?? "").length)));
  const lines: string[] = [];
  for (const [i, row] of rows.entries()) {
    lines.push(row.map((cell, col) => cell.padEnd(widths[col]!)).join("  ").trimEnd());
    if (i === 0) lines.push(widths.map((w) => "-".repeat(w)).join("  "));
  }
  return lines.join("\n");
}

/** First row is the header; columns whose `right` flag is set are right-aligned. */
export function formatMarkdown(rows: readonly (readonly string[])[], right: readonly boolean[] = []): string {
  const escape = (cell: string) => cell.replaceAll("|", "\\|");
  const cells = rows.map((row) => row.map(escape));
  const widths = cells[0]!.map((_, col) => Math.max(3, ...cells.map((row) => (row[col] ?? "").length)));
  const line = (row: readonly string[]) => `| ${row.map((cell, col) => (right[col] ? cell.padStart(widths[col]!) : cell.padEnd(widths[col]!))).join(" | ")} |`;
  const rule = `|${widths.map((w, col) => (right[col] ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
  return [line(cells[0]!), rule, ...cells.slice(1).map(line)].join("\n");
}
