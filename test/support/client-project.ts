import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { REPO, runProcess, type CliResult } from "./keygate-process.js";

/**
 * A separate project that uses keygate as a service author's would: this
 * repository `npm pack`ed, the tarball `npm install`ed into a fresh
 * `"type": "module"` project in a temp dir, TypeScript checked against the
 * installed `.d.ts` files (NodeNext, strict) and run with `node`.
 * Only what the package exports can be reached from there.
 *
 * Packing and installing take seconds: create one per test file (beforeAll)
 * and reuse it. The pack skips scripts: the suite's global setup has just
 * built dist/, and a second build would rewrite it under other test files.
 */

const run = promisify(execFile);
const TSC = resolve(REPO, "node_modules/typescript/bin/tsc");

export interface ClientProjectOptions {
  /**
   * Packages to install beside keygate, by name, at the version this
   * repository pins (so the npm cache has them). `@types/node` is always
   * installed: a service author has it, and snippets print.
   */
  packages?: string[];
}

/** What a run printed, and its exit code (as for the CLI). */
export type RunResult = CliResult;

export type CompileResult = { ok: true; file: string } | { ok: false; diagnostics: string };

export interface RunOptions {
  /** Extra environment for the process, on top of this one's. */
  env?: Record<string, string>;
  /** A run still going after this long is killed and the call rejects (default 30 s). */
  timeoutMs?: number;
}

export interface ClientProject {
  /** The project: package.json, tsconfig.json, node_modules/keygate; snippets go to src/, their output to dist/. */
  dir: string;
  /** How long `npm pack` and `npm install` took, in ms. */
  setupMs: { pack: number; install: number };
  /** Type-checks and compiles `source` as a new file src/snippet-N.ts; tsc's diagnostics when it fails. */
  compile(source: string): Promise<CompileResult>;
  /** compile(source), which must succeed (else rejects with the diagnostics), then `node` the output in `dir`. */
  compileAndRun(source: string, options?: RunOptions): Promise<RunResult>;
  /** Runs `source` as a JavaScript module (src/snippet-N.mjs) with `node`, uncompiled. */
  runJs(source: string, options?: RunOptions): Promise<RunResult>;
  dispose(): Promise<void>;
}

/** Packs this repository and installs it into a new project (see the top of this file). */
export async function createClientProject({ packages = [] }: ClientProjectOptions = {}): Promise<ClientProject> {
  const root = await mkdtemp(join(tmpdir(), "keygate-client-project-"));
  try {
    const dir = join(root, "app");
    await mkdir(join(dir, "src"), { recursive: true });

    let started = performance.now();
    const packed = await npm(["pack", "--ignore-scripts", "--json", "--pack-destination", root], REPO);
    const tarball = join(root, (JSON.parse(packed) as { filename: string }[])[0]!.filename);
    const pack = performance.now() - started;

    await writeFile(join(dir, "package.json"), JSON.stringify({ name: "keygate-client-example", version: "1.0.0", private: true, type: "module" }, null, 2));
    await writeFile(join(dir, "tsconfig.json"), JSON.stringify(TSCONFIG, null, 2));
    const pinned = await pinnedVersions();
    const specs = ["@types/node", ...packages].map((name) => {
      const version = pinned[name];
      if (!version) throw new Error(`${name} is not a dependency of keygate: pin it in package.json first`);
      return `${name}@${version}`;
    });
    started = performance.now();
    await npm(["install", "--prefer-offline", "--no-audit", "--no-fund", tarball, ...specs], dir);
    const install = performance.now() - started;

    let count = 0;
    const project: ClientProject = {
      dir,
      setupMs: { pack, install },
      async compile(source) {
        const name = `snippet-${++count}`;
        await writeFile(join(dir, "src", `${name}.ts`), source);
        // One tsconfig per snippet: each is checked alone, so one broken snippet fails only itself.
        await writeFile(join(dir, `tsconfig.${name}.json`), JSON.stringify({ extends: "./tsconfig.json", files: [`src/${name}.ts`] }));
        const tsc = await runProcess(process.execPath, [TSC, "-p", `tsconfig.${name}.json`, "--pretty", "false"], { cwd: dir, env: childEnv(), timeoutMs: 60_000 });
        if (tsc.code !== 0) return { ok: false, diagnostics: `${tsc.stdout}${tsc.stderr}` };
        return { ok: true, file: join(dir, "dist", `${name}.js`) };
      },
      async compileAndRun(source, options = {}) {
        const compiled = await project.compile(source);
        if (!compiled.ok) throw new Error(`the snippet does not type-check against the installed package:\n${compiled.diagnostics}`);
        return runNode(compiled.file, dir, options);
      },
      async runJs(source, options = {}) {
        const file = join(dir, "src", `snippet-${++count}.mjs`);
        await writeFile(file, source);
        return runNode(file, dir, options);
      },
      dispose: () => rm(root, { recursive: true, force: true }),
    };
    return project;
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

/**
 * What a service author's tsconfig would say. skipLibCheck as `tsc --init`
 * writes it: @connectrpc/connect's declarations name the DOM's HeadersInit,
 * which @types/node does not declare (connect-es#481), so without it a
 * Node-only project would need "DOM" in lib. A declaration keygate failed to
 * ship still shows: test/e2e/client-package.test.ts compiles a wrong use.
 */
const TSCONFIG = {
  compilerOptions: {
    target: "ES2022",
    module: "NodeNext",
    moduleResolution: "NodeNext",
    lib: ["ES2023"],
    types: ["node"],
    strict: true,
    verbatimModuleSyntax: true,
    skipLibCheck: true,
    rootDir: "src",
    outDir: "dist",
  },
};

/** The versions this repository pins, by package name. */
async function pinnedVersions(): Promise<Record<string, string>> {
  const manifest = JSON.parse(await readFile(resolve(REPO, "package.json"), "utf8")) as Record<string, Record<string, string> | undefined>;
  return { ...manifest.dependencies, ...manifest.devDependencies };
}

/**
 * The environment for npm and node in the project: this one's, less what an
 * outer `npm test` exported about this repository (npm_config_local_prefix
 * would point the install back here; loglevel=silent would hide its errors).
 */
function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [name, value] of Object.entries(process.env)) {
    const lower = name.toLowerCase();
    if (lower.startsWith("npm_") && (!lower.startsWith("npm_config_") || lower === "npm_config_local_prefix" || lower === "npm_config_loglevel")) continue;
    env[name] = value;
  }
  return { ...env, ...extra };
}

async function npm(args: string[], cwd: string): Promise<string> {
  try {
    const { stdout } = await run("npm", args, { cwd, env: childEnv(), maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`npm ${args.join(" ")} failed in ${cwd}:\n${stdout ?? ""}${stderr ?? ""}`, { cause: error });
  }
}

function runNode(file: string, cwd: string, { env, timeoutMs = 30_000 }: RunOptions): Promise<RunResult> {
  return runProcess(process.execPath, [file], { cwd, env: childEnv(env), timeoutMs });
}

