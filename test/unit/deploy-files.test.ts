import { spawn } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, posix, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { parseDocument } from "yaml";

/**
 * Docker cannot run here, so the deploy files are checked by reading them:
 * deploy/compose.yaml (Postgres, Redis, two keygate replicas, nginx), the
 * Dockerfile and .dockerignore. What is checked is what would break a real
 * `docker compose up`: a replica pointed at the wrong service, an env var
 * keygate does not read (src/config/config.ts is grepped, so a renamed
 * setting fails here), a COPY of a path the build does not have, a
 * healthcheck a `service_healthy` condition waits for in vain.
 */

const REPO = resolve(import.meta.dirname, "../..");
const DEPLOY = resolve(REPO, "deploy");
const read = (path: string) => readFileSync(resolve(REPO, path), "utf8");
const CONFIG_SOURCE = read("src/config/config.ts");

// --- compose.yaml ----------------------------------------------------------------

interface Service {
  image?: string;
  build?: { context: string; dockerfile?: string } | string;
  command?: string[] | string;
  environment?: Record<string, string> | string[];
  volumes?: string[];
  ports?: string[];
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] | string };
  networks?: Record<string, { ipv4_address?: string } | null> | string[];
}

interface Compose {
  services: Record<string, Service>;
  networks?: Record<string, { ipam?: { config?: { subnet: string }[] } }>;
  volumes?: Record<string, unknown>;
}

function loadCompose(): Compose {
  // merge: compose honours YAML merge keys (<<: *keygate), which YAML 1.2 leaves off by default.
  const doc = parseDocument(readFileSync(resolve(DEPLOY, "compose.yaml"), "utf8"), { merge: true });
  expect(doc.errors, "YAML errors").toEqual([]);
  expect(doc.warnings, "YAML warnings").toEqual([]);
  return doc.toJS() as Compose;
}

const compose = loadCompose();
const services = compose.services;

/** Compose's ${VAR:-default} (and ${VAR-default}) with VAR unset: the default. */
function interpolate(text: string): string {
  return text.replace(/\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}/g, (_, _name: string, fallback: string | undefined) => fallback ?? "");
}

function environment(service: Service): Record<string, string> {
  const env = service.environment ?? {};
  if (Array.isArray(env)) return Object.fromEntries(env.map((line) => [line.split("=")[0]!, line.slice(line.indexOf("=") + 1)]));
  return Object.fromEntries(Object.entries(env).map(([name, value]) => [name, String(value)]));
}

function dependsOn(service: Service): Record<string, string> {
  const deps = service.depends_on ?? {};
  if (Array.isArray(deps)) return Object.fromEntries(deps.map((name) => [name, "service_started"]));
  return Object.fromEntries(Object.entries(deps).map(([name, dep]) => [name, dep.condition]));
}

function buildOf(service: Service): { context: string; dockerfile: string } | undefined {
  if (service.build === undefined) return undefined;
  const build = typeof service.build === "string" ? { context: service.build } : service.build;
  const context = resolve(DEPLOY, build.context);
  return { context, dockerfile: resolve(context, build.dockerfile ?? "Dockerfile") };
}

const keygateReplicas = Object.entries(services).filter(([, service]) => buildOf(service)?.dockerfile === resolve(REPO, "Dockerfile"));

/** "127.0.0.1:8081:8080" → { host: "8081", container: "8080" }. */
function portMapping(spec: string): { host: string; container: string } {
  const parts = spec.split("/")[0]!.split(":");
  return { host: parts.at(-2)!, container: parts.at(-1)! };
}

/** "../policies:/etc/keygate/policies:ro" → parts; a named volume has no "/" or "." in front. */
function mount(spec: string): { source: string; target: string; readOnly: boolean } {
  const [source = "", target = "", mode = ""] = spec.split(":");
  return { source, target, readOnly: mode.split(",").includes("ro") };
}

function ipv4ToInt(ip: string): number {
  return ip.split(".").reduce((n, part) => n * 256 + Number(part), 0);
}

function inSubnet(ip: string, cidr: string): boolean {
  const [base = "", bits = "32"] = cidr.split("/");
  const size = 2 ** (32 - Number(bits));
  return Math.floor(ipv4ToInt(ip) / size) === Math.floor(ipv4ToInt(base) / size);
}

/** Every env var name src/config/config.ts reads: the string literals in its reader calls. */
function readByConfig(name: string): boolean {
  return new RegExp(`["'\`]${name}["'\`]`).test(CONFIG_SOURCE);
}

// --- Dockerfile ------------------------------------------------------------------

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Instructions with continuation lines joined and comments dropped; ARG defaults before FROM resolved. */
function parseDockerfile(text: string): { stages: Stage[]; globalArgs: Record<string, string> } {
  const instructions: Instruction[] = [];
  let pending = "";
  let start = 0;
  text.split("\n").forEach((raw, index) => {
    const line = raw.trim();
    if (pending === "" && (line === "" || line.startsWith("#"))) return;
    if (pending !== "" && line.startsWith("#")) return;
    if (pending === "") start = index + 1;
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " ";
      return;
    }
    const full = (pending + line).trim();
    pending = "";
    const [keyword = ""] = full.split(/\s+/);
    instructions.push({ keyword: keyword.toUpperCase(), args: full.slice(keyword.length).trim(), line: start });
  });
  const globalArgs: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === "FROM") {
      const [image = "", as, name] = instruction.args.replace(/^--platform=\S+\s+/, "").split(/\s+/);
      stages.push({ from: image.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a: string, b: string) => globalArgs[a ?? b] ?? ""), name: as?.toUpperCase() === "AS" ? name : undefined, instructions: [] });
    } else if (stages.length === 0 && instruction.keyword === "ARG") {
      const [name = "", value = ""] = instruction.args.split("=");
      globalArgs[name] = value;
    } else {
      stages.at(-1)?.instructions.push(instruction);
    }
  }
  return { stages, globalArgs };
}

const dockerfile = parseDockerfile(read("Dockerfile"));
const runtime = dockerfile.stages.at(-1)!;
const all = (stage: Stage, keyword: string) => stage.instructions.filter((instruction) => instruction.keyword === keyword);
const last = (stage: Stage, keyword: string) => all(stage, keyword).at(-1);

function workdir(stage: Stage, before: Instruction): string {
  let dir = "/";
  for (const instruction of stage.instructions) {
    if (instruction === before) break;
    if (instruction.keyword === "WORKDIR") dir = posix.resolve(dir, instruction.args);
  }
  return dir;
}

/** `ENV A=1 B=2` (and the old `ENV A 1`) → names and values. */
function envOf(stage: Stage): Record<string, string> {
  const env: Record<string, string> = {};
  for (const { args } of all(stage, "ENV")) {
    if (!args.includes("=")) {
      const [name = "", ...value] = args.split(/\s+/);
      env[name] = value.join(" ");
      continue;
    }
    for (const [, name, value] of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) env[name!] = value!.replace(/^"|"$/g, "");
  }
  return env;
}

interface Copy {
  from: string | undefined;
  sources: string[];
  /** Where each source lands (a directory source: its contents, at that path). */
  landed: string[];
  instruction: Instruction;
}

function copies(stage: Stage): Copy[] {
  return all(stage, "COPY").map((instruction) => {
    const words = instruction.args.split(/\s+/);
    const flags = words.filter((word) => word.startsWith("--"));
    const paths = words.filter((word) => !word.startsWith("--"));
    const from = flags.find((flag) => flag.startsWith("--from="))?.slice("--from=".length);
    const sources = paths.slice(0, -1);
    const target = paths.at(-1)!;
    const dest = posix.resolve(workdir(stage, instruction), target);
    // Several sources, or a destination ending in "/", is a directory that receives each by name.
    const intoDir = sources.length > 1 || target.endsWith("/");
    return { from, sources, landed: sources.map((source) => (intoDir ? posix.join(dest, posix.basename(source)) : dest)), instruction };
  });
}

/** The exec form `["a", "b"]` as an array (the shell form as `sh -c`). */
function execForm(args: string): string[] {
  return args.startsWith("[") ? (JSON.parse(args) as string[]) : ["/bin/sh", "-c", args];
}

/** .dockerignore patterns as matchers on context-relative paths (Go filepath.Match plus "**"); "!" re-includes. */
function dockerignore(): (path: string) => boolean {
  const rules = read(".dockerignore")
    .split("\n")
    .map((line) => line.trim())
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const negate = line.startsWith("!");
      const pattern = posix.normalize((negate ? line.slice(1) : line).replace(/^\/+/, ""));
      const source = pattern
        .split("/")
        .map((part) => (part === "**" ? ".*" : part.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")))
        .join("/");
      // A pattern that matches a directory excludes everything below it.
      return { negate, regex: new RegExp(`^${source}(/.*)?$`) };
    });
  return (path) => rules.reduce((excluded, rule) => (rule.regex.test(path) ? !rule.negate : excluded), false);
}

// ---------------------------------------------------------------------------------

describe("deploy/compose.yaml", () => {
  it("has Postgres 16 with a pg_isready healthcheck and a volume for its data", () => {
    const postgres = services.postgres!;
    expect(postgres.image).toMatch(/^postgres:16([.-]|$)/);
    expect(JSON.stringify(postgres.healthcheck?.test)).toContain("pg_isready");
    const data = (postgres.volumes ?? []).map(mount).find((volume) => volume.target === "/var/lib/postgresql/data");
    expect(data, "the database outlives the container").toBeDefined();
    expect(Object.keys(compose.volumes ?? {})).toContain(data!.source);
  });

  it("has Redis 7 with a healthcheck and no persistence (counters only)", () => {
    const redis = services.redis!;
    expect(redis.image).toMatch(/^redis:7([.-]|$)/);
    expect(JSON.stringify(redis.healthcheck?.test)).toContain("ping");
    const command = Array.isArray(redis.command) ? redis.command : (redis.command ?? "").split(/\s+/);
    expect(command[0]).toBe("redis-server");
    expect(command.slice(command.indexOf("--save"), command.indexOf("--save") + 2)).toEqual(["--save", ""]);
    expect(command.slice(command.indexOf("--appendonly"), command.indexOf("--appendonly") + 2)).toEqual(["--appendonly", "no"]);
    expect(redis.volumes ?? []).toEqual([]);
  });

  it("has exactly two keygate replicas, keygate-1 and keygate-2, both built from the repository's Dockerfile", () => {
    expect(keygateReplicas.map(([name]) => name).sort()).toEqual(["keygate-1", "keygate-2"]);
    for (const [, service] of keygateReplicas) expect(buildOf(service)!.context).toBe(REPO);
  });

  describe.each(["keygate-1", "keygate-2"])("%s", (name) => {
    const service = services[name]!;
    const env = environment(service);

    it("reaches Postgres as the postgres service, with that service's user, password and database", () => {
      const url = new URL(interpolate(env.DATABASE_URL ?? ""));
      const postgres = environment(services.postgres!);
      expect(url.protocol).toBe("postgres:");
      expect(url.hostname).toBe("postgres");
      expect(url.port || "5432").toBe("5432");
      expect(url.username).toBe(postgres.POSTGRES_USER);
      expect(decodeURIComponent(url.password)).toBe(interpolate(postgres.POSTGRES_PASSWORD ?? ""));
      expect(url.pathname).toBe(`/${postgres.POSTGRES_DB}`);
    });

    it("shares rate-limit counters through the redis service", () => {
      const url = new URL(env.REDIS_URL ?? "");
      expect(url.protocol).toBe("redis:");
      expect(url.hostname).toBe("redis");
      expect(url.port || "6379").toBe("6379");
    });

    it("mounts ../policies read-only where KEYGATE_POLICY_DIR points", () => {
      const policies = (service.volumes ?? []).map(mount).find((volume) => resolve(DEPLOY, volume.source) === resolve(REPO, "policies"));
      expect(policies, "the policies mount").toBeDefined();
      expect(existsSync(resolve(DEPLOY, policies!.source, "model.conf"))).toBe(true);
      expect(policies!.readOnly).toBe(true);
      expect(env.KEYGATE_POLICY_DIR).toBe(policies!.target);
    });

    it("starts once Postgres and Redis are healthy", () => {
      expect(dependsOn(service)).toMatchObject({ postgres: "service_healthy", redis: "service_healthy" });
    });

    it("sets only variables that src/config/config.ts reads", () => {
      expect(Object.keys(env).length).toBeGreaterThan(0);
      for (const variable of Object.keys(env)) expect(readByConfig(variable), `${variable} is read by src/config/config.ts`).toBe(true);
    });

    it("publishes the port the image listens on", () => {
      const exposed = last(runtime, "EXPOSE")!.args;
      expect((service.ports ?? []).map((spec) => portMapping(spec).container)).toEqual([exposed]);
    });

    it("trusts X-Forwarded-For only from nginx, whose address is fixed on the compose network", () => {
      expect(env.KEYGATE_CLIENT_IP_HEADER?.toLowerCase()).toBe("x-forwarded-for");
      const nginxNetworks = services.nginx!.networks as Record<string, { ipv4_address?: string }>;
      const [network, { ipv4_address: nginxIp } = {}] = Object.entries(nginxNetworks)[0]!;
      expect(env.KEYGATE_TRUSTED_PROXIES?.split(",").map((entry) => entry.trim())).toEqual([nginxIp]);
      const subnet = compose.networks?.[network]?.ipam?.config?.[0]?.subnet ?? "";
      expect(inSubnet(nginxIp!, subnet), `${nginxIp} in ${subnet}`).toBe(true);
      const replicaNetworks = Array.isArray(service.networks) ? service.networks : Object.keys(service.networks ?? {});
      expect(replicaNetworks).toContain(network);
    });
  });

  it("puts nginx in front of both replicas, once they are healthy, with its config file", () => {
    const nginx = services.nginx!;
    expect(nginx.image).toMatch(/^nginx:/);
    expect(dependsOn(nginx)).toEqual({ "keygate-1": "service_healthy", "keygate-2": "service_healthy" });
    const config = (nginx.volumes ?? []).map(mount).find((volume) => volume.target.startsWith("/etc/nginx/"));
    expect(config, "nginx.conf mounted").toBeDefined();
    expect(statSync(resolve(DEPLOY, config!.source)).isFile()).toBe(true);
  });

  it("nginx balances over every replica, gRPC over HTTP/2 and the rest over HTTP/1.1, adding X-Forwarded-For", () => {
    const config = readFileSync(resolve(DEPLOY, "nginx.conf"), "utf8");
    const exposed = last(runtime, "EXPOSE")!.args;
    for (const block of ["keygate_http", "keygate_grpc"]) {
      const body = new RegExp(`upstream ${block} \\{([^}]*)\\}`).exec(config)?.[1] ?? "";
      const servers = [...body.matchAll(/^\s*server\s+(\S+);/gm)].map((match) => match[1]);
      expect(servers, block).toEqual(keygateReplicas.map(([name]) => `${name}:${exposed}`).sort());
    }
    expect(config).toMatch(/^\s*http2 on;/m);
    expect(config).toMatch(/grpc_pass grpc:\/\/keygate_grpc;/);
    expect(config).toMatch(/proxy_pass http:\/\/keygate_http;/);
    expect(config.match(/_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;/g)).toHaveLength(2);
    // The routing regex: gRPC content types go to grpc_pass, gRPC-Web and Connect do not.
    const pattern = /"~\*(\^application\/grpc[^"]*)"\s+1;/.exec(config)?.[1];
    expect(pattern).toBeDefined();
    const isGrpc = new RegExp(pattern!, "i");
    for (const type of ["application/grpc", "application/grpc+proto", "application/grpc+json", "application/grpc; charset=utf-8"]) expect(isGrpc.test(type), type).toBe(true);
    for (const type of ["application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text", "application/json", "application/proto", "application/connect+proto", ""]) {
      expect(isGrpc.test(type), type).toBe(false);
    }
  });

  it("never publishes one host port twice", () => {
    const hostPorts = Object.values(services).flatMap((service) => (service.ports ?? []).map((spec) => portMapping(spec).host));
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
  });

  it("every service_healthy condition waits on a service that has a healthcheck (its own, or its image's)", () => {
    for (const [name, service] of Object.entries(services)) {
      for (const [target, condition] of Object.entries(dependsOn(service))) {
        expect(Object.keys(services), `${name} depends on ${target}`).toContain(target);
        if (condition !== "service_healthy") continue;
        const built = buildOf(services[target]!);
        const healthy = services[target]!.healthcheck !== undefined || (built !== undefined && /^\s*HEALTHCHECK\s/m.test(readFileSync(built.dockerfile, "utf8")));
        expect(healthy, `${target} has a healthcheck`).toBe(true);
      }
    }
  });
});

describe("Dockerfile", () => {
  it("is multi-stage: a build stage, then a node:20-bookworm-slim runtime", () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    expect(runtime.from).toBe("node:20-bookworm-slim");
    const build = dockerfile.stages.find((stage) => stage.name === "build");
    expect(build, "a stage named build").toBeDefined();
    expect(all(build!, "RUN").map((run) => run.args)).toEqual(expect.arrayContaining([expect.stringMatching(/^npm ci\b/), "npm run build"]));
  });

  it("installs only production dependencies in the runtime stage, without install scripts", () => {
    const installs = all(runtime, "RUN").filter((run) => /\bnpm ci\b/.test(run.args));
    expect(installs).toHaveLength(1);
    expect(installs[0]!.args).toMatch(/npm ci\b[^&]*--omit=dev/);
    // "prepare" runs the build, which needs the (omitted) compiler.
    expect(installs[0]!.args).toMatch(/npm ci\b[^&]*--ignore-scripts/);
  });

  it("runs as a user that is not root", () => {
    const user = last(runtime, "USER")?.args ?? "root";
    const [name = ""] = user.split(":");
    expect(["root", "0", ""]).not.toContain(name);
    // The user is made in the image, or is numeric (Kubernetes runAsNonRoot can only check a number).
    expect(/^\d+$/.test(name) || all(runtime, "RUN").some((run) => run.args.includes(`useradd`) && run.args.includes(name))).toBe(true);
  });

  it("serves by default: ENTRYPOINT + CMD run `bin/keygate.js serve`", () => {
    const command = [...execForm(last(runtime, "ENTRYPOINT")?.args ?? "[]"), ...execForm(last(runtime, "CMD")!.args)];
    expect(command).toEqual(["node", "bin/keygate.js", "serve"]);
    expect(existsSync(resolve(REPO, "bin/keygate.js"))).toBe(true);
  });

  it("listens on every interface, on the port it EXPOSEs (keygate's default), and sets only variables keygate reads", () => {
    const env = envOf(runtime);
    expect(env.KEYGATE_HOST).toBe("0.0.0.0");
    const exposed = last(runtime, "EXPOSE")!.args;
    expect(env.PORT ?? /r\.int\("port", "PORT", (\d+)/.exec(CONFIG_SOURCE)?.[1]).toBe(exposed);
    expect(/r\.int\("port", "PORT", (\d+)/.exec(CONFIG_SOURCE)?.[1], "the default port in config.ts").toBe(exposed);
    for (const variable of Object.keys(env).filter((name) => name !== "NODE_ENV")) expect(readByConfig(variable), `${variable} is read by src/config/config.ts`).toBe(true);
  });

  it("has a HEALTHCHECK whose probe exits 0 on any HTTP answer from the callback path and 1 when nothing listens", async () => {
    const check = last(runtime, "HEALTHCHECK");
    expect(check).toBeDefined();
    const probe = execForm(check!.args.replace(/^(--\S+\s+)*CMD\s+/, ""));
    expect(probe[0]).toBe("node");
    const seen: string[] = [];
    const server = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.writeHead(405).end();
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const { port } = server.address() as AddressInfo;
    try {
      expect(await runProbe(probe, { PORT: String(port) })).toBe(0);
      expect(seen).toEqual(["HEAD /verify"]);
      expect(await runProbe(probe, { PORT: String(port), KEYGATE_SHIM_PATH: "/cube/auth" })).toBe(0);
      expect(seen.at(-1)).toBe("HEAD /cube/auth");
    } finally {
      await new Promise((done) => server.close(done));
    }
    expect(await runProbe(probe, { PORT: String(port) }), "nothing listening").toBe(1);
  });

  it("copies only paths that exist in the repository (and are in the build context) or that the build produces", () => {
    const ignored = dockerignore();
    const build = dockerfile.stages.find((stage) => stage.name === "build")!;
    const buildInputs = copies(build).flatMap((copy) => copy.sources);
    const tsconfigBuild = JSON.parse(read("tsconfig.build.json")) as { include: string[] };
    const outDir = (JSON.parse(read("tsconfig.json")) as { compilerOptions: { outDir: string } }).compilerOptions.outDir;
    for (const stage of dockerfile.stages) {
      for (const copy of copies(stage)) {
        for (const source of copy.sources) {
          if (copy.from === undefined) {
            expect(existsSync(resolve(REPO, source)), `${source} (Dockerfile line ${copy.instruction.line}) exists`).toBe(true);
            expect(ignored(posix.normalize(source)), `${source} is not excluded by .dockerignore`).toBe(false);
            continue;
          }
          // From the build stage: dist/X, compiled from X, which the build stage copied in and tsconfig.build.json includes.
          expect(copy.from).toBe("build");
          const built = posix.relative(workdir(build, build.instructions.at(-1)!), source);
          const [top, input] = built.split("/");
          expect(top, `${source} is under the compiler's outDir`).toBe(outDir);
          expect(tsconfigBuild.include, `${input} is compiled`).toContain(input);
          expect(buildInputs.map((path) => posix.normalize(path)), `${input} is copied into the build stage`).toContain(input);
        }
      }
    }
  });

  it("the runtime holds what bin/keygate.js imports and the shipped policy where config.ts looks for it", () => {
    const app = workdir(runtime, last(runtime, "CMD")!);
    const landed = copies(runtime).flatMap((copy) => copy.landed);
    const holds = (path: string) => landed.some((dest) => path === dest || path.startsWith(dest + "/"));
    for (const [, target] of read("bin/keygate.js").matchAll(/from "(\.[^"]+)"/g)) {
      const inImage = posix.resolve(app, "bin", target!);
      expect(holds(inImage), `${inImage} (imported by bin/keygate.js) is in the image`).toBe(true);
    }
    // SHIPPED_POLICY_DIR: ../../../policies from dist/src/config/.
    expect(CONFIG_SOURCE).toContain('new URL("../../../policies", import.meta.url)');
    expect(holds(posix.resolve(app, "dist/src/config", "../../../policies/model.conf"))).toBe(true);
    expect(relative(REPO, dirname(resolve(REPO, "dist/src/config/../../../policies/model.conf")))).toBe("policies");
  });
});

describe(".dockerignore", () => {
  it("keeps local builds, dependencies and data out of the context, so the image's own are used", () => {
    const ignored = dockerignore();
    for (const path of ["node_modules", "node_modules/pg/package.json", "dist", "dist/src/cli/main.js", ".keygate", ".git", "test/unit/deploy-files.test.ts"]) {
      expect(ignored(path), path).toBe(true);
    }
    for (const path of ["src/cli/main.ts", "gen/keygate/v1/authorize_pb.ts", "policies/policy.csv", "package-lock.json"]) expect(ignored(path), path).toBe(false);
  });
});

function runProbe(command: string[], env: Record<string, string>): Promise<number> {
  return new Promise((done, fail) => {
    const bin = command[0] === "node" ? process.execPath : command[0]!;
    const { PORT: _port, KEYGATE_SHIM_PATH: _path, ...base } = process.env;
    const child = spawn(bin, command.slice(1), { env: { ...base, ...env }, stdio: "ignore" });
    child.on("error", fail);
    child.on("close", (code) => done(code ?? -1));
  });
}
