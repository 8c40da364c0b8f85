#!/usr/bin/env node
// Rewrites the settings table in docs/configuration.md from the settings schema
// (src/config/settings.ts), between its <!-- settings:start --> and <!-- settings:end -->
// markers. Run by `npm run docs:settings`, which builds first: this reads dist/.
// test/unit/config-docs.test.ts fails until the file agrees with the schema.
import { readFileSync, writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { withSettingsTable } from "../dist/src/config/settings-docs.js";

const file = resolve(import.meta.dirname, "../docs/configuration.md");
const before = readFileSync(file, "utf8");
const after = withSettingsTable(before);
if (after === undefined) {
  process.stderr.write(`${file}: no <!-- settings:start --> ... <!-- settings:end --> markers\n`);
  process.exit(1);
}
if (after === before) process.stdout.write("docs/configuration.md: the settings table is up to date\n");
else {
  writeFileSync(file, after);
  process.stdout.write("docs/configuration.md: settings table rewritten\n");
}
