import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { dirname, posix, relative, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { parseDocument } from "yaml";
import { NGINX_AUTH_PATH, TRAEFIK_AUTH_PATH } from "../../src/config/public-paths.js";
import { HEALTHZ_PATH, READYZ_PATH } from "../../src/config/public-paths.js";
import { ENV_VARIABLES, SETTINGS } from "../../src/config/settings.js";

/**
 * Docker cannot run here, so the deploy files are checked by reading them:
 * deploy/compose.yaml (Postgres, Redis, two keygate replicas, nginx), the
 * Dockerfile and .dockerignore, the nginx auth_request and Traefik
 * forwardAuth examples, and the Kubernetes manifests in deploy/k8s. What is checked is what would break a
 * real `docker compose up` or `kubectl apply -k`: a replica pointed at the
 * wrong service, an env var keygate does not read (the settings schema,
 * src/config/settings.ts, is asked, so a renamed setting fails here), a COPY of a path the build does
 * not have, a healthcheck a `service_healthy` condition waits for in vain, a
 * probe on a port the container does not name, a policy ConfigMap that has
 * drifted from policies/. (nginx itself runs the auth_request example in
 * test/e2e/nginx-auth-request.test.ts.)
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

/** Whether keygate reads this env var: the settings schema lists every one. */
function readByConfig(name: string): boolean {
  return ENV_VARIABLES.includes(name);
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

    it("sets only variables that keygate reads", () => {
      expect(Object.keys(env).length).toBeGreaterThan(0);
      for (const variable of Object.keys(env)) expect(readByConfig(variable), `${variable} is read by keygate (src/config/settings.ts)`).toBe(true);
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
  it("is multi-stage: a build stage, then a node:24-bookworm-slim runtime (a Node line in support)", () => {
    expect(dockerfile.stages.length).toBeGreaterThanOrEqual(2);
    expect(runtime.from).toBe("node:24-bookworm-slim");
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
    expect(env.PORT ?? SETTINGS.port.default).toBe(exposed);
    expect(SETTINGS.port.default, "the default port in src/config/settings.ts").toBe(exposed);
    for (const variable of Object.keys(env).filter((name) => name !== "NODE_ENV")) expect(readByConfig(variable), `${variable} is read by keygate (src/config/settings.ts)`).toBe(true);
  });

  it("has a HEALTHCHECK whose probe exits 0 when /healthz answers 200, 1 otherwise or when nothing listens", async () => {
    const check = last(runtime, "HEALTHCHECK");
    expect(check).toBeDefined();
    const probe = execForm(check!.args.replace(/^(--\S+\s+)*CMD\s+/, ""));
    expect(probe[0]).toBe("node");
    const seen: string[] = [];
    let status = 200;
    const server = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.writeHead(status).end();
    });
    await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
    const { port } = server.address() as AddressInfo;
    try {
      expect(await runProbe(probe, { PORT: String(port) })).toBe(0);
      expect(seen).toEqual([`GET ${HEALTHZ_PATH}`]);
      status = 503;
      expect(await runProbe(probe, { PORT: String(port) }), "a 503").toBe(1);
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

// --- deploy/nginx-auth-request.conf ----------------------------------------------

/** The body of the first `location NAME {…}` block (blocks inside it have no nested braces here). */
function locationBlock(config: string, name: string): string {
  const start = config.indexOf(`location ${name} {`);
  expect(start, `location ${name}`).toBeGreaterThan(-1);
  let depth = 0;
  for (let i = config.indexOf("{", start); i < config.length; i++) {
    if (config[i] === "{") depth++;
    if (config[i] === "}" && --depth === 0) return config.slice(start, i + 1);
  }
  throw new Error(`location ${name} is not closed`);
}

describe("deploy/nginx-auth-request.conf", () => {
  const config = read("deploy/nginx-auth-request.conf");
  const directives = (block: string) => block.split("\n").map((line) => line.replace(/#.*/, "").trim()).filter(Boolean);

  it("asks keygate's nginx endpoint in an internal location, without the client's body", () => {
    const auth = directives(locationBlock(config, "= /_keygate"));
    expect(auth).toContain("internal;");
    expect(auth).toContain(`proxy_pass http://keygate${NGINX_AUTH_PATH};`);
    expect(auth).toContain("proxy_pass_request_body off;");
    expect(auth).toContain('proxy_set_header Content-Length "";');
    expect(/upstream keygate \{[^}]*server keygate:(\d+);/.exec(config)?.[1], "keygate's port").toBe(last(runtime, "EXPOSE")!.args);
  });

  it("sets the request nginx is about to pass on (else the client's own headers of those names would decide)", () => {
    const auth = directives(locationBlock(config, "= /_keygate"));
    expect(auth).toContain("proxy_set_header X-Original-URI $request_uri;");
    expect(auth).toContain("proxy_set_header X-Original-Method $request_method;");
    expect(auth).toContain("proxy_set_header X-Forwarded-For $remote_addr;");
    // Hints are never the client's.
    expect(auth).toContain('proxy_set_header X-Request-Namespace "";');
    expect(auth).toContain('proxy_set_header X-Request-Org "";');
  });

  it("guards the API's location, tells it who called (replacing the client's X-Auth-User), and maps keygate's 429", () => {
    const api = directives(locationBlock(config, "/"));
    expect(api).toContain("auth_request /_keygate;");
    expect(api).toContain("auth_request_set $keygate_user $upstream_http_x_auth_user;");
    expect(api).toContain("proxy_set_header X-Auth-User $keygate_user;");
    expect(api).toContain("error_page 500 = @keygate_error;");
    const error = directives(locationBlock(config, "@keygate_error"));
    expect(error.join(" ")).toMatch(/if \(\$keygate_reason = rate_limited\) \{ return 429; \}/);
    expect(error.at(-2)).toBe("return 503;");
  });
});

// --- deploy/traefik-forward-auth.yaml ---------------------------------------------

interface TraefikDynamic {
  http: {
    middlewares: Record<
      string,
      {
        forwardAuth?: { address: string; trustForwardHeader?: boolean; authRequestHeaders?: string[]; authResponseHeaders?: string[] };
        headers?: { customRequestHeaders?: Record<string, string> };
      }
    >;
    routers: Record<string, { rule: string; middlewares?: string[]; service: string }>;
    services: Record<string, { loadBalancer: { servers: { url: string }[] } }>;
  };
}

describe("deploy/traefik-forward-auth.yaml", () => {
  const traefik = loadYaml<TraefikDynamic>(resolve(DEPLOY, "traefik-forward-auth.yaml"));
  const [name, keygate] = Object.entries(traefik.http.middlewares).find(([, middleware]) => middleware.forwardAuth)!;
  const auth = keygate.forwardAuth!;

  it("asks keygate's Traefik endpoint on the image's port and hands X-Auth-User to the API", () => {
    const address = new URL(auth.address);
    expect(address.pathname).toBe(TRAEFIK_AUTH_PATH);
    expect(address.port).toBe(last(runtime, "EXPOSE")!.args);
    expect(auth.authResponseHeaders).toEqual(["X-Auth-User"]);
  });

  it("never lets the client choose what keygate decides: no trusted X-Forwarded-*, only the credential headers", () => {
    expect(auth.trustForwardHeader ?? false).toBe(false);
    expect([...(auth.authRequestHeaders ?? [])].map((header) => header.toLowerCase()).sort()).toEqual(["authorization", "x-api-key"]);
  });

  it("every router runs keygate before anything else, and the key is stripped only after it", () => {
    for (const [router, { middlewares = [], service }] of Object.entries(traefik.http.routers)) {
      expect(middlewares[0], router).toBe(name);
      expect(Object.keys(traefik.http.services)).toContain(service);
      for (const middleware of middlewares) expect(Object.keys(traefik.http.middlewares)).toContain(middleware);
    }
    const strip = Object.values(traefik.http.middlewares).find((middleware) => middleware.headers?.customRequestHeaders);
    expect(strip?.headers?.customRequestHeaders).toEqual({ Authorization: "", "X-Api-Key": "" });
  });
});

// --- deploy/k8s ------------------------------------------------------------------

const K8S = resolve(DEPLOY, "k8s");

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: Record<string, unknown>;
  [field: string]: unknown;
}

interface Probe {
  httpGet?: { path: string; port: string | number };
}

interface Container {
  name: string;
  image: string;
  args?: string[];
  ports: { name?: string; containerPort: number; protocol?: string }[];
  env: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; capabilities?: { drop?: string[] } };
  volumeMounts: { name: string; mountPath: string; readOnly?: boolean }[];
}

interface PodSpec {
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsNonRoot?: boolean; runAsUser?: number; runAsGroup?: number };
  containers: Container[];
  volumes: { name: string; configMap?: { name: string }; emptyDir?: unknown }[];
}

interface Kustomization {
  apiVersion: string;
  kind: string;
  resources: string[];
  configMapGenerator: { name: string; files: string[]; options?: unknown }[];
  images?: { name: string; newName?: string; newTag?: string }[];
}

function loadYaml<T>(path: string): T {
  const doc = parseDocument(readFileSync(path, "utf8"));
  expect(doc.errors, `${path}: YAML errors`).toEqual([]);
  expect(doc.warnings, `${path}: YAML warnings`).toEqual([]);
  return doc.toJS() as T;
}

const k8sFiles = readdirSync(K8S).filter((name) => /\.ya?ml$/.test(name)).sort();
const kustomization = loadYaml<Kustomization>(resolve(K8S, "kustomization.yaml"));
const manifests = Object.fromEntries(kustomization.resources.map((file) => [file, loadYaml<K8sObject>(resolve(K8S, file))]));
const byKind = (kind: string) => Object.values(manifests).find((object) => object.kind === kind)!;
const deployment = byKind("Deployment") as K8sObject & {
  spec: { replicas: number; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
};
const pod = deployment.spec.template.spec;
const container = pod.containers[0]!;
const service = byKind("Service") as K8sObject & {
  spec: { selector: Record<string, string>; ports: { name: string; port: number; targetPort: string | number; appProtocol?: string }[] };
};
const envValue = (name: string) => container.env.find((entry) => entry.name === name);

/** "10s" → 10 (seconds), as KEYGATE_SHUTDOWN_TIMEOUT's default is written in the settings schema. */
function shutdownTimeoutSeconds(): number {
  const text = /^(\d+)s$/.exec(SETTINGS.shutdownTimeout.default)?.[1];
  expect(text, "KEYGATE_SHUTDOWN_TIMEOUT's default in src/config/settings.ts, in seconds").toBeDefined();
  return Number(text);
}

describe("deploy/k8s", () => {
  it("every YAML file parses, is in the kustomization, and is a kind at a current apiVersion", () => {
    const expected: Record<string, string> = { Deployment: "apps/v1", Service: "v1", PodDisruptionBudget: "policy/v1" };
    expect(kustomization).toMatchObject({ apiVersion: "kustomize.config.k8s.io/v1beta1", kind: "Kustomization" });
    expect([...kustomization.resources].sort()).toEqual(k8sFiles.filter((name) => name !== "kustomization.yaml"));
    for (const [file, object] of Object.entries(manifests)) {
      expect(Object.keys(expected), `${file}: kind`).toContain(object.kind);
      expect(object.apiVersion, `${file}: apiVersion of ${object.kind}`).toBe(expected[object.kind]);
      expect(object.metadata.name, `${file}: name`).toBe("keygate");
    }
    expect(Object.values(manifests).map((object) => object.kind).sort()).toEqual(Object.keys(expected).sort());
  });

  it("runs two replicas of the image, serving, selected by their own labels (Deployment, Service and PodDisruptionBudget alike)", () => {
    expect(deployment.spec.replicas).toBe(2);
    expect(pod.containers).toHaveLength(1);
    const labels = deployment.spec.template.metadata.labels;
    expect(labels).toMatchObject(deployment.spec.selector.matchLabels);
    expect(labels).toMatchObject(service.spec.selector);
    const pdb = byKind("PodDisruptionBudget") as K8sObject & { spec: { minAvailable: number; selector: { matchLabels: Record<string, string> } } };
    expect(labels).toMatchObject(pdb.spec.selector.matchLabels);
    expect(pdb.spec.minAvailable).toBeLessThan(deployment.spec.replicas);
    // The image name the kustomization retags, and the Dockerfile's ENTRYPOINT + this: `keygate serve`.
    expect(kustomization.images?.map((image) => image.name)).toContain(container.image.split(":")[0]);
    expect(container.args ?? execForm(last(runtime, "CMD")!.args)).toEqual(["serve"]);
  });

  it("exposes the port the image EXPOSEs, named http, and the Service sends its one port there (h2c and HTTP/1.1 alike)", () => {
    const exposed = Number(last(runtime, "EXPOSE")!.args);
    expect(container.ports).toEqual([{ name: "http", containerPort: exposed, protocol: "TCP" }]);
    expect(envValue("PORT")?.value ?? String(exposed)).toBe(String(exposed));
    expect(service.spec.ports).toHaveLength(1);
    const [port] = service.spec.ports;
    expect(port).toMatchObject({ name: "http", port: exposed, targetPort: "http", appProtocol: "kubernetes.io/h2c" });
  });

  it("probes keygate's /healthz (startup, liveness) and /readyz (readiness) on the container's named port", () => {
    const names = new Set(container.ports.map((port) => port.name));
    const probes = { startupProbe: HEALTHZ_PATH, livenessProbe: HEALTHZ_PATH, readinessProbe: READYZ_PATH } as const;
    expect([HEALTHZ_PATH, READYZ_PATH]).toEqual(["/healthz", "/readyz"]);
    for (const [probe, path] of Object.entries(probes) as [keyof typeof probes, string][]) {
      const get = container[probe]?.httpGet;
      expect(get?.path, probe).toBe(path);
      expect(typeof get?.port === "string" ? names.has(get.port) : container.ports.some((port) => port.containerPort === get?.port), `${probe} port`).toBe(true);
    }
  });

  it("runs as the Dockerfile's non-root USER, read-only, without privileges, with resources set", () => {
    const [uid, gid] = last(runtime, "USER")!.args.split(":").map(Number);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: uid, runAsGroup: gid });
    expect(container.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });
    expect(container.resources?.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    expect(container.resources?.limits?.memory).toBeDefined();
    // Over Postgres nothing is written but scratch space: no data dir volume, and no PGlite.
    expect(envValue("DATABASE_URL")).toBeDefined();
    expect(container.volumeMounts.map((mounted) => mounted.mountPath)).not.toContain(envOf(runtime).KEYGATE_DATA_DIR);
  });

  it("sets only variables keygate reads; DATABASE_URL from a Secret, listening on every interface", () => {
    for (const { name } of container.env) expect(readByConfig(name), `${name} is read by keygate (src/config/settings.ts)`).toBe(true);
    expect(envValue("DATABASE_URL")?.valueFrom?.secretKeyRef).toEqual({ name: "keygate-database", key: "DATABASE_URL" });
    expect(envValue("DATABASE_URL")?.value).toBeUndefined();
    expect(envValue("KEYGATE_HOST")?.value).toBe("0.0.0.0");
    expect(new URL(envValue("REDIS_URL")?.value ?? "").protocol).toBe("redis:");
  });

  it("mounts the generated policy ConfigMap, whole (so updates reach it), read-only, where KEYGATE_POLICY_DIR points", () => {
    const volume = pod.volumes.find((entry) => entry.configMap?.name === "keygate-policies");
    expect(volume, "a volume from the keygate-policies ConfigMap").toBeDefined();
    expect(kustomization.configMapGenerator.map((generator) => generator.name)).toEqual(["keygate-policies"]);
    const mounted = container.volumeMounts.find((entry) => entry.name === volume!.name);
    expect(mounted).toEqual({ name: volume!.name, mountPath: envValue("KEYGATE_POLICY_DIR")?.value, readOnly: true });
    // Every mount has its volume.
    for (const { name } of container.volumeMounts) expect(pod.volumes.map((entry) => entry.name)).toContain(name);
  });

  it("the ConfigMap holds exactly policies/'s model.conf and *.csv, byte for byte (copies inside deploy/k8s: kustomize reads nothing outside it)", () => {
    const policyFiles = ["model.conf", ...readdirSync(resolve(REPO, "policies")).filter((name) => name.endsWith(".csv")).sort()];
    const [generator] = kustomization.configMapGenerator;
    expect([...generator!.files].sort()).toEqual(policyFiles.map((name) => `policies/${name}`).sort());
    for (const file of generator!.files) {
      expect(posix.normalize(file).startsWith(".."), `${file} is inside deploy/k8s`).toBe(false);
      const name = posix.basename(file);
      expect(readFileSync(resolve(K8S, file), "utf8"), `deploy/k8s/${file} differs from policies/${name}: cp policies/model.conf policies/*.csv deploy/k8s/policies/`).toBe(
        read(`policies/${name}`),
      );
    }
    expect(readdirSync(resolve(K8S, "policies")).sort(), "no stale policy file left in deploy/k8s/policies").toEqual([...policyFiles].sort());
  });

  it("gives a stopping replica time: preStop pause plus keygate's shutdown timeout fit in the grace period", () => {
    const pause = Number(container.lifecycle?.preStop?.exec?.command.at(-1) ?? 0);
    expect(container.lifecycle?.preStop?.exec?.command[0]).toBe("sleep");
    expect(envValue("KEYGATE_SHUTDOWN_TIMEOUT")).toBeUndefined();
    expect(pod.terminationGracePeriodSeconds ?? 30).toBeGreaterThan(pause + shutdownTimeoutSeconds());
  });
});

describe("deploy/envoy.yaml (the ext_authz example docs/integrating.md links)", () => {
  interface Envoy {
    static_resources: {
      listeners: { filter_chains: { filters: { typed_config: { http_filters: { name: string; typed_config: Record<string, unknown> }[] } }[] }[] }[];
      clusters: { name: string; typed_extension_protocol_options?: Record<string, { explicit_http_config?: { http2_protocol_options?: unknown } }>; load_assignment: unknown }[];
    };
  }
  const envoy = loadYaml<Envoy>(resolve(DEPLOY, "envoy.yaml"));
  const filters = envoy.static_resources.listeners[0]!.filter_chains[0]!.filters[0]!.typed_config.http_filters;
  const extAuthz = filters.find((filter) => filter.name === "envoy.filters.http.ext_authz")!.typed_config as {
    transport_api_version: string;
    failure_mode_allow: boolean;
    grpc_service: { envoy_grpc: { cluster_name: string } };
  };

  it("is the config docs/integrating.md links to", () => {
    expect(read("docs/integrating.md")).toContain("[`deploy/envoy.yaml`](../deploy/envoy.yaml)");
  });

  it("asks keygate over gRPC (v3, HTTP/2 to the image's port) before the router, and fails closed", () => {
    expect(filters.map((filter) => filter.name)).toEqual(["envoy.filters.http.ext_authz", "envoy.filters.http.router"]);
    expect(extAuthz.transport_api_version).toBe("V3");
    expect(extAuthz.failure_mode_allow).toBe(false);
    const cluster = envoy.static_resources.clusters.find((c) => c.name === extAuthz.grpc_service.envoy_grpc.cluster_name)!;
    expect(Object.values(cluster.typed_extension_protocol_options ?? {})[0]?.explicit_http_config?.http2_protocol_options).toBeDefined();
    expect(JSON.stringify(cluster.load_assignment)).toContain(`"port_value":${last(runtime, "EXPOSE")!.args}`);
  });
});
