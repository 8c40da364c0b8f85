import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/support/global-setup.ts"],
    // A bound on a hang, not a speed target: on a busy 2-core machine a test that spawns the CLI twice has taken over 30 s.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // PGlite instances are large; keep the number of files in flight small.
    maxWorkers: 2,
    fileParallelism: true,
  },
});
