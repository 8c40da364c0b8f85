import { readdir } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createClientProject, type ClientProject, type RunResult } from "../support/client-project.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { GRPC_JS_LOADER_OPTIONS } from "../support/grpc-js.js";
import { createKey, runCli, startServerProcess, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { policyLine } from "../support/policy-lines.js";

/**
 * keygate as another service installs it: `npm pack`, `npm install` of the
 * tarball into a separate project, TypeScript that imports "keygate/client"
 * type-checked against the installed declarations and run with node, against
 * a `keygate serve` started from the installed package's own bin. The
 * snippets are the ones the service-author docs show.
 */

let project: ClientProject;
let data: TestDataDir;
let server: ServerProcess;
let bin: string;
let reader: CreatedKeyJson;
let admin: CreatedKeyJson;

// Idle on 2 vCPUs: npm pack 1 s, npm install from the warm cache 9-11 s, the server and two keys 8 s.
// The budget allows for three times that under the suite's parallel load.
beforeAll(async () => {
  project = await createClientProject({ packages: ["@grpc/grpc-js", "@grpc/proto-loader"] });
  // Reported, not judged: what a service author's install of the tarball costs.
  console.log(`client project: npm pack ${Math.round(project.setupMs.pack)} ms, npm install ${Math.round(project.setupMs.install)} ms`);
  bin = join(project.dir, "node_modules/keygate/bin/keygate.js");
  data = await createTestDataDir();
  const cli = { cwd: data.dir, env: data.env, bin };
  server = await startServerProcess([], cli);
  reader = await createKey(["--org", "acme", "--role", "reader", "--name", "svc-reader"], cli);
  admin = await createKey(["--org", "acme", "--role", "admin", "--name", "svc-admin"], cli);
}, 120_000);

afterAll(async () => {
  const code = await server?.stop();
  await data?.dispose();
  await project?.dispose();
  expect(code).toBe(0);
});

const env = () => ({ KEYGATE_URL: server.url, KEY: reader.key, ADMIN_KEY: admin.key });

/** Lines of a run that must have exited 0. */
function linesOf(result: RunResult): string[] {
  expect(result.code, result.stderr).toBe(0);
  return result.stdout.trim().split("\n");
}

describe("keygate/client from a separate project", () => {
  it("Authorize: an allow names the key and the rule; a deny reads allowed false, FORBIDDEN", async () => {
    const result = await project.compileAndRun(
      `import { createKeygateClient, Reason } from "keygate/client";

const keygate = createKeygateClient({ baseUrl: process.env.KEYGATE_URL! });
for (const method of ["GET", "DELETE"]) {
  const res = await keygate.authorize.authorize({ credential: process.env.KEY!, path: "/sandboxes/abc", method });
  if (res.allowed) console.log("allowed", res.key?.id, res.matchedRule);
  else console.log("denied", res.allowed, Reason[res.reason], res.message);
}
`,
      { env: env() },
    );
    expect(linesOf(result)).toEqual([
      `allowed ${reader.id} ${policyLine("p, reader, *, *, /sandboxes/:id, ^(GET|HEAD)$")}`,
      "denied false FORBIDDEN API key is not allowed to DELETE /sandboxes/abc",
    ]);
  });

  it("ManageKey and the audit log with apiKey; without it, Unauthenticated as a ConnectError", async () => {
    const result = await project.compileAndRun(
      `import { Code, ConnectError, createKeygateClient, timestampDate } from "keygate/client";

const keygate = createKeygateClient({ baseUrl: process.env.KEYGATE_URL!, apiKey: process.env.ADMIN_KEY!, httpVersion: "1.1" });
const res = await keygate.keys.manageKey({ action: { case: "create", value: { name: "made-by-a-service", roles: ["reader"], expiry: { case: "expiresIn", value: "7d" } } } });
if (res.result.case !== "created") throw new Error("expected a created key");
const { key, plaintext } = res.result.value;
console.log(key?.name, key?.org, key?.roles.join(","), plaintext.startsWith("sk-sb-"), timestampDate(key!.expiresAt!) > new Date());
const decision = await keygate.authorize.authorize({ credential: plaintext, path: "/sandboxes/abc", method: "GET" });
console.log(decision.allowed, decision.key?.id === key?.id);
const { events } = await keygate.audit.listAuditEvents({ keyId: key!.id });
console.log(events.map((e) => e.action).join(","));

try {
  await createKeygateClient({ baseUrl: process.env.KEYGATE_URL! }).keys.manageKey({ action: { case: "list", value: {} } });
} catch (error) {
  if (!(error instanceof ConnectError)) throw error;
  console.log(Code[error.code], error.rawMessage);
}
`,
      { env: env() },
    );
    expect(linesOf(result)).toEqual(["made-by-a-service acme reader true true", "true true", expect.stringMatching(/create/), "Unauthenticated missing API key in Authorization header"]);
  });

  it("AuthorizeStream over the default HTTP/2 connection: ids are bigints, matched by id", async () => {
    const result = await project.compileAndRun(
      `import { createKeygateClient, Reason } from "keygate/client";

const keygate = createKeygateClient({ baseUrl: process.env.KEYGATE_URL! });
const credential = process.env.KEY!;
async function* requests() {
  yield { id: 1n, request: { credential, path: "/sandboxes/abc", method: "GET" } };
  yield { id: 2n, request: { credential, path: "/sandboxes/abc", method: "DELETE" } };
}
const answers: string[] = [];
for await (const { id, response } of keygate.authorize.authorizeStream(requests())) {
  answers.push(\`\${typeof id} \${id} \${response?.allowed} \${Reason[response?.reason ?? 0]}\`);
}
console.log(answers.sort().join("\\n"));
keygate.close();
`,
      { env: env() },
    );
    expect(linesOf(result)).toEqual(["bigint 1 true ALLOWED", "bigint 2 false FORBIDDEN"]);
  });

  it("grpc-js with the README's loader options, on the proto/ the package ships: allowed false, reason by name, ids as strings", async () => {
    const result = await project.compileAndRun(GRPC_JS_SNIPPET, { env: { ...env(), KEYGATE_ADDRESS: `127.0.0.1:${server.port}` } });
    expect(linesOf(result)).toEqual(["false REASON_FORBIDDEN API key is not allowed to DELETE /sandboxes/abc", "string 7 true REASON_ALLOWED"]);
  });

  it("the grpc-js snippet's loader options are exactly the ones the suite's grpc-js clients use", () => {
    const block = /loadSync\([^{]*\{([\s\S]*?)\}\)/.exec(GRPC_JS_SNIPPET)![1]!;
    const written = Object.fromEntries([...block.matchAll(/^\s*(\w+): (\w+),/gm)].map(([, name, value]) => [name, value]).filter(([name]) => name !== "includeDirs"));
    const suite = Object.fromEntries(Object.entries(GRPC_JS_LOADER_OPTIONS).map(([name, value]) => [name, value === String ? "String" : String(value)]));
    expect(written).toEqual(suite);
  });
});

describe("the package's contract", () => {
  it("the declarations are real types: a misspelt field and a wrong type do not compile", async () => {
    // Were a declaration missing, skipLibCheck would turn what it names into any, and this would compile.
    const compiled = await project.compile(`import { createKeygateClient, Reason } from "keygate/client";

const keygate = createKeygateClient({ baseUrl: "http://127.0.0.1:8080" });
const res = await keygate.authorize.authorize({ credentail: "sk-sb-…", path: "/sandboxes/abc", method: "GET" });
const allowed: string = res.allowed;
const reason: Reason = "FORBIDDEN";
console.log(allowed, reason);
`);
    expect(compiled.ok).toBe(false);
    if (compiled.ok) return;
    expect(compiled.diagnostics).toMatch(/error TS2561: Object literal may only specify known properties, but 'credentail' does not exist/);
    expect(compiled.diagnostics).toMatch(/error TS2322: Type 'boolean' is not assignable to type 'string'/);
    expect(compiled.diagnostics).toMatch(/error TS2322: Type '"FORBIDDEN"' is not assignable to type 'Reason'/);
  });

  it("only keygate/client and keygate/package.json are exported: tsc and node refuse other paths", async () => {
    const compiled = await project.compile(`import { main } from "keygate/dist/src/cli/main.js";\nconsole.log(typeof main);\n`);
    expect(compiled.ok).toBe(false);
    if (!compiled.ok) expect(compiled.diagnostics).toMatch(/TS2307: Cannot find module 'keygate\/dist\/src\/cli\/main\.js'/);
    const result = await project.runJs(
      `for (const path of ["keygate", "keygate/dist/src/cli/main.js", "keygate/package.json"]) {
  try {
    console.log(path, "resolves:", import.meta.resolve(path).endsWith(path === "keygate/package.json" ? "/node_modules/keygate/package.json" : ""));
  } catch (error) {
    console.log(path, error.code);
  }
}
`,
    );
    expect(linesOf(result)).toEqual(["keygate ERR_PACKAGE_PATH_NOT_EXPORTED", "keygate/dist/src/cli/main.js ERR_PACKAGE_PATH_NOT_EXPORTED", "keygate/package.json resolves: true"]);
  });

  it("the installed bin runs: version, and a lint of the policy the package ships", async () => {
    const version = await runCli(["--version"], { cwd: project.dir, bin });
    expect(version.code, version.stderr).toBe(0);
    expect(version.stdout.trim()).toMatch(/^keygate \d+\.\d+\.\d+$/);
    const lint = await runCli(["policy", "lint"], { cwd: project.dir, bin, env: { KEYGATE_POLICY_DIR: join(project.dir, "node_modules/keygate/policies") } });
    expect(lint.code, lint.stdout + lint.stderr).toBe(0);
  });

  it("ships the compiled server, the client's declarations, policies/ and proto/; no sources, tests or source maps", async () => {
    const installed = join(project.dir, "node_modules/keygate");
    const files = (await readdir(installed, { recursive: true, withFileTypes: true }))
      .filter((entry) => entry.isFile())
      .map((entry) => relative(installed, join(entry.parentPath, entry.name)).split(sep).join("/"));
    for (const file of ["bin/keygate.js", "dist/src/cli/main.js", "dist/src/client/index.js", "dist/src/client/index.d.ts", "dist/gen/keygate/v1/authorize_pb.d.ts", "policies/model.conf", "policies/policy.csv", "proto/keygate/v1/authorize.proto", "package.json"]) {
      expect(files).toContain(file);
    }
    // Declarations only where "keygate/client" leads; nothing a server run does not need.
    const unwanted = files.filter((file) => /^(src|gen|test|bench|deploy|scripts|dist\/bench)\/|\.map$|\.ts$/.test(file) && !/^dist\/(src\/client|gen\/keygate\/v1)\/[^/]+\.d\.ts$/.test(file));
    expect(unwanted).toEqual([]);
  });
});

/** The README's grpc-js example, run from the separate project against the package's own proto/. */
const GRPC_JS_SNIPPET = `import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

// The .proto files ship in the keygate package, under proto/.
const protoDir = fileURLToPath(new URL("proto/", import.meta.resolve("keygate/package.json")));
const definition = protoLoader.loadSync("keygate/v1/authorize.proto", {
  includeDirs: [protoDir],
  keepCase: true, // matched_rule, rate_limit: the names in the .proto
  longs: String, // uint64 ids (AuthorizeStream) as strings, not Long objects
  enums: String, // reason as "REASON_FORBIDDEN", not 6
  defaults: true, // a deny reads allowed: false, not undefined
  oneofs: true, // a oneof's case as a field (ManageKeyRequest's action)
});
const { keygate } = grpc.loadPackageDefinition(definition) as any;
const client = new keygate.v1.AuthorizeService(process.env.KEYGATE_ADDRESS!, grpc.credentials.createInsecure());

client.Authorize({ credential: process.env.KEY!, path: "/sandboxes/abc", method: "DELETE" }, (err: grpc.ServiceError | null, res: any) => {
  if (err) throw err;
  console.log(res.allowed, res.reason, res.message); // false REASON_FORBIDDEN API key is not allowed to DELETE /sandboxes/abc

  const stream = client.AuthorizeStream();
  stream.on("data", ({ id, response }: any) => console.log(typeof id, id, response.allowed, response.reason)); // string 7 true REASON_ALLOWED
  stream.on("error", (error: Error) => { throw error; });
  stream.on("end", () => client.close());
  stream.write({ id: "7", request: { credential: process.env.KEY!, path: "/sandboxes/abc", method: "GET" } });
  stream.end();
});
`;
