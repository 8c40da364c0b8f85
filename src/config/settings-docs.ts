import { KEY_COMMANDS, SETTINGS, TRACING_VARIABLES, type Command, type SettingSpec } from "./settings.js";

/**
 * The settings schema as people read it: the help text's flag lines and
 * docs/configuration.md's table. `npm run docs:settings` rewrites the table;
 * test/unit/config-docs.test.ts fails when the file and the schema disagree.
 */

const SPECS: readonly SettingSpec[] = Object.values(SETTINGS as Record<string, SettingSpec>);

export const SETTINGS_START = "<!-- settings:start -->";
export const SETTINGS_END = "<!-- settings:end -->";

const code = (text: string) => `\`${text}\``;
/** Markdown to the terminal: the backticks go. */
const plain = (markdown: string) => markdown.replaceAll("`", "");

/** The default as written, or what having none means. */
function defaultMarkdown(spec: { default?: string; defaultFor?: Partial<Record<Command, string>>; unset?: string }): string {
  if (spec.default === undefined) return spec.unset === undefined ? "—" : `— (${spec.unset})`;
  const others = Object.entries(spec.defaultFor ?? {}).map(([command, text]) => `; ${command}: ${code(text)}`);
  return code(spec.default) + others.join("");
}

/** Who reads a setting, with the key commands as one group (they read the same). */
function readersMarkdown(commands: readonly Command[]): string {
  const keyCommands = KEY_COMMANDS.every((command) => commands.includes(command));
  // A key command on its own (check's --key) is named; all of them together are "key commands".
  const names = keyCommands ? commands.filter((command) => !(KEY_COMMANDS as readonly Command[]).includes(command)) : [...commands];
  const order: readonly string[] = ["serve", "shim", "key commands", ...KEY_COMMANDS, "migrate", "policy"];
  return [...names, ...(keyCommands ? ["key commands"] : [])]
    .sort((a, b) => order.indexOf(a) - order.indexOf(b))
    .map((name) => (name === "key commands" ? name : code(name)))
    .join(", ");
}

const cell = (markdown: string) => markdown.replaceAll("|", "\\|");

/** docs/configuration.md's settings table: every setting, then the OTEL_* variables tracing reads. */
export function settingsTable(): string {
  const rows = SPECS.map((spec) => [
    spec.flag === undefined ? "" : code(`--${spec.flag}`),
    spec.env === undefined ? "" : code(spec.env),
    defaultMarkdown(spec),
    readersMarkdown(spec.commands),
    spec.details === undefined ? spec.description : `${spec.description}; ${spec.details}`,
  ]);
  const tracing = TRACING_VARIABLES.map((variable) => ["", code(variable.env), defaultMarkdown(variable), code("serve"), `tracing: ${variable.description}`]);
  return [
    "| flag | env | default | read by | meaning |",
    "|---|---|---|---|---|",
    ...[...rows, ...tracing].map((row) => `| ${row.map(cell).join(" | ")} |`.replaceAll("|  |", "| |")),
  ].join("\n");
}

/** The markdown with the table between its markers replaced; undefined when the markers are missing. */
export function withSettingsTable(markdown: string, table = settingsTable()): string | undefined {
  const start = markdown.indexOf(SETTINGS_START);
  const end = markdown.indexOf(SETTINGS_END);
  if (start === -1 || end < start) return undefined;
  return `${markdown.slice(0, start + SETTINGS_START.length)}\n${table}\n${markdown.slice(end)}`;
}

/** The table between the markers, as the file holds it. */
export function settingsTableIn(markdown: string): string | undefined {
  const start = markdown.indexOf(SETTINGS_START);
  const end = markdown.indexOf(SETTINGS_END);
  if (start === -1 || end < start) return undefined;
  return markdown.slice(start + SETTINGS_START.length, end).trim();
}

const WIDTH = 100;

/**
 * `text` filled into lines of at most WIDTH, starting at column `indent`;
 * `head` (a flag) stands before it, on a line of its own when too long.
 */
function wrap(head: string, text: string, indent: number): string[] {
  const lines: string[] = [];
  let line = head;
  if (line.length > indent - 2) {
    lines.push(line);
    line = "";
  }
  line = line.padEnd(indent);
  let words = 0;
  for (const word of text.split(" ")) {
    if (words > 0 && line.length + 1 + word.length > WIDTH) {
      lines.push(line);
      line = " ".repeat(indent);
      words = 0;
    }
    line += (words > 0 ? " " : "") + word;
    words++;
  }
  lines.push(line);
  return lines;
}

/**
 * A command's flags for its help: each with what it does, its variable and its
 * default for that command. `indent` is where the flag starts.
 */
export function flagsHelp(command: Command, indent = 6): string {
  const column = indent + 28;
  const lines: string[] = [];
  for (const spec of SPECS) {
    if (spec.flag === undefined || !spec.commands.includes(command)) continue;
    const usage = `${" ".repeat(indent)}--${spec.flag}${spec.arg === undefined ? "" : ` ${spec.arg}`}`;
    const fallback = spec.defaultFor?.[command] ?? spec.default;
    const facts = [spec.env, fallback !== undefined ? `default ${fallback}` : spec.unset !== undefined ? `unset: ${plain(spec.unset)}` : undefined];
    const text = `${plain(spec.description)} [${facts.filter((fact) => fact !== undefined).join(", ")}]`;
    lines.push(...wrap(usage, text, column));
  }
  return lines.join("\n");
}

/** The variables a command reads that have no flag, as one wrapped paragraph for its help. */
export function environmentOnlyHelp(command: Command, indent = 6): string {
  const names = SPECS.filter((spec) => spec.flag === undefined && spec.env !== undefined && spec.commands.includes(command)).map((spec) => spec.env!);
  if (command === "serve") names.push("OTEL_* (tracing)");
  if (names.length === 0) return "";
  return wrap("", `and from the environment only: ${names.join(", ")} (docs/configuration.md)`, indent).join("\n");
}
