#!/usr/bin/env node
// The compiled CLI lives in dist/ ("npm run build"; npm install runs it).
import { main } from "../dist/src/cli/main.js";

// Output piped into a reader that stops early (`keygate keys list | head`) is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (error) => {
    if (error.code === "EPIPE") process.exit(process.exitCode ?? 0);
    throw error;
  });
}

process.exitCode = await main(process.argv.slice(2));
