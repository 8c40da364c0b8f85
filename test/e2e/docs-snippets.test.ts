import { execFileSync } from "node:child_process";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { readdirSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDataDir, TEST_DATABASE_URL, type TestDataDir } from "../support/database.js";
import { REPO, startServerProcess, type ServerProcess } from "../support/keygate-process.js";
import { createClientProject, type ClientProject } from "../support/client-project.js";
import { atPort, parseSnippets, ShellSession, type Snippet } from "../support/doc-snippets.js";

/**
 * Every shell and TypeScript snippet in README.md and docs/ runs as written
 * (test/support/doc-snippets.ts says how a snippet states what to expect):
 * shell blocks in order in one bash session per page, from the repository's
 * directory, against a real `keygate serve` of the page's own (the docs'
 * 127.0.0.1:8080 is that server's free port); TypeScript blocks as a service
 * author's code, in a separate project that installed keygate from a packed
 * tarball, given the variables the page's shell blocks set (KEY=…); the
 * quick start's install command in a copy of the repository, as on a new
 * machine.
 */

/** One separate project for every page: packing and installing take seconds. */
let project: ClientProject | undefined;
beforeAll(async () => {
  project = await createClientProject({ packages: ["@grpc/grpc-js", "@grpc/proto-loader"] });
}, 180_000);
afterAll(async () => {
  await project?.dispose();
});

const PAGES = ["README.md", ...readdirSync(join(REPO, "docs")).filter((name) => name.endsWith(".md")).sort().map((name) => `docs/${name}`)];

/** A CLI on the page reaches the page's server through its data (the control socket, or Postgres). */
function snippetEnv(data: TestDataDir): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...data.env, npm_config_prefer_offline: "true", npm_config_audit: "false", npm_config_fund: "false" };
  for (const name of Object.keys(env)) if (name.startsWith("KEYGATE_") || name === "PORT") delete env[name];
  if (!data.env.DATABASE_URL) {
    delete env.DATABASE_URL;
    env.KEYGATE_DATA_DIR = data.dataDir;
  }
  return env;
}

function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

function checkOutput(snippet: Snippet, result: { output: string; failure?: { status: number; command: string } }): void {
  const where = `${snippet.file}:${snippet.line}\n--- output ---\n${result.output}`;
  if (snippet.directives.exit === undefined) expect(result.failure, where).toBeUndefined();
  else expect(result.failure?.status, `expected a command to exit ${snippet.directives.exit}; ${where}`).toBe(snippet.directives.exit);
  for (const text of snippet.directives.expects) expect(result.output, where).toContain(text);
}

describe.each(PAGES)("%s", (page) => {
  const snippets = parseSnippets(readFileSync(join(REPO, page), "utf8"), page);
  let data: TestDataDir;
  let server: ServerProcess;
  let shell: ShellSession;

  beforeAll(async () => {
    data = await createTestDataDir();
    server = await startServerProcess([], { cwd: data.dir, env: data.env });
    shell = new ShellSession(REPO, snippetEnv(data));
  }, 60_000);

  afterAll(async () => {
    const code = await server?.stop();
    await data?.dispose();
    expect(code === undefined || code === 0, server?.output()).toBe(true);
  });

  it("every snippet that is not run says why", () => {
    for (const snippet of snippets.filter((s) => s.directives.skip !== undefined)) expect(snippet.directives.skip!.length).toBeGreaterThan(10);
  });

  for (const snippet of snippets) {
    const name = `${snippet.language} at line ${snippet.line}`;
    const { skip, freshCopy, until } = snippet.directives;
    if (skip !== undefined) {
      it.skip(`${name} (not run: ${skip})`, () => {});
    } else if (snippet.language === "sh" && freshCopy) {
      // The quick start's embedded database: the PGlite pass runs it; on Postgres it would be the same run again.
      it.skipIf(TEST_DATABASE_URL !== undefined)(`${name}: as on a new machine, in a copy of the repository's tracked files`, async () => {
        const copy = await mkdtemp(join(tmpdir(), "keygate-fresh-"));
        try {
          execFileSync("bash", ["-c", `git ls-files -z | tar --null -T - -cf - | tar -xf - -C ${JSON.stringify(copy)}`], { cwd: REPO });
          const port = await freePort();
          const env: NodeJS.ProcessEnv = { ...snippetEnv(data), PORT: String(port) };
          delete env.KEYGATE_DATA_DIR;
          delete env.DATABASE_URL;
          const fresh = new ShellSession(copy, env);
          const result = await fresh.run(snippet.code, { timeoutMs: 240_000, ...(until !== undefined && { until }) });
          try {
            checkOutput(snippet, result);
            const health = await fetch(`http://127.0.0.1:${port}/healthz`);
            expect(health.status).toBe(200);
            expect(await readdir(join(copy, ".keygate")), "the embedded database is made in the working directory").toContain("pgdata");
          } finally {
            await result.stop?.();
          }
        } finally {
          await rm(copy, { recursive: true, force: true });
        }
      }, 300_000);
    } else if (snippet.language === "sh") {
      it(name, async () => {
        const result = await shell.run(atPort(snippet.code, server.port), until !== undefined ? { until } : {});
        try {
          checkOutput(snippet, result);
        } finally {
          await result.stop?.();
        }
      }, 120_000);
    } else {
      it(`${name}: TypeScript, as a client in another directory`, async () => {
        const run = await project!.compileAndRun(atPort(snippet.code, server.port), { env: shell.variables(), timeoutMs: 60_000 });
        const output = run.stdout + run.stderr;
        checkOutput(snippet, { output, ...(run.code !== 0 && { failure: { status: run.code, command: "node" } }) });
      }, 120_000);
    }
  }
});

it("finds the pages and their snippets", async () => {
  expect(PAGES).toContain("docs/operating.md");
  const all = (await Promise.all(PAGES.map(async (page) => parseSnippets(await readFile(join(REPO, page), "utf8"), page)))).flat();
  expect(all.filter((s) => s.language === "sh").length).toBeGreaterThan(10);
});
