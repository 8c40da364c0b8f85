import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizeService, Reason } from "../../gen/keygate/v1/authorize_pb.js";
import { createTestDataDir, type TestDataDir } from "../support/database.js";
import { createKey, runCli, startServerProcess, type CliResult, type CreatedKeyJson, type ServerProcess } from "../support/keygate-process.js";
import { policyLine } from "../support/policy-lines.js";

/**
 * Explaining a deny: `keygate check --explain` and Authorize with
 * explain = true list the rules closest to matching, as FILE:LINE and text,
 * with what differed (method, org, namespace, path, a role not held).
 */

const READER_SANDBOX = "p, reader, *, *, /sandboxes/:id, ^(GET|HEAD)$";
const WRITER_SANDBOX = "p, writer, *, *, /sandboxes/:id, ^DELETE$";

interface CheckJson {
  allowed: boolean;
  reason: string;
  matched_rule: string;
  explanation?: { rule: string; text: string; reasons: string[] }[];
}

let data: TestDataDir;
let reader: CreatedKeyJson;
let scoped: CreatedKeyJson;

const cli = (args: string[]): Promise<CliResult> => runCli(args, { cwd: data.dir, env: data.env });

async function checkJson(key: string, ...args: string[]): Promise<CheckJson & { code: number }> {
  const result = await cli(["check", "--json", "--key", key, ...args]);
  expect(result.stderr).toBe("");
  return { code: result.code, ...(JSON.parse(result.stdout) as CheckJson) };
}

beforeAll(async () => {
  data = await createTestDataDir();
  reader = await createKey(["--role", "reader", "--org", "acme", "--name", "explain-reader"], { cwd: data.dir, env: data.env });
  scoped = await createKey(["--role", "reader", "--org", "acme", "--namespace", "team-a", "--name", "explain-scoped"], { cwd: data.dir, env: data.env });
});

afterAll(async () => {
  await data?.dispose();
});

/** The same answers whether the CLI opens the data itself or asks the running server. */
function explainsDenies(): void {
  it("check --explain on a reader's DELETE /sandboxes/x lists the closest policy.csv lines and why", async () => {
    const result = await cli(["check", "--explain", "--key", reader.key, "--path", "/sandboxes/x", "--method", "DELETE"]);
    expect(result.code).toBe(1);
    const lines = result.stdout.split("\n");
    expect(lines.slice(0, 5)).toEqual([
      "decision:  DENY",
      "reason:    forbidden — API key is not allowed to DELETE /sandboxes/x",
      `key:       ${reader.id} (org acme, namespace *, roles reader)`,
      "rule:      no rule allows this request",
      "closest rules that did not match:",
    ]);
    // Best first: the reader's own rule for the path, wrong only in its method; then the writer's, a role not held.
    expect(lines.slice(5, 9)).toEqual([
      `  ${policyLine(READER_SANDBOX)}  ${READER_SANDBOX}`,
      "      - method DELETE does not match ^(GET|HEAD)$",
      `  ${policyLine(WRITER_SANDBOX)}  ${WRITER_SANDBOX}`,
      '      - role "writer" is not held (the key has reader)',
    ]);
    expect(result.stdout).toMatch(/^ {6}- path \/sandboxes\/x does not match \/sandboxes$/m);
  });

  it("--json includes the explanation", async () => {
    const json = await checkJson(reader.key, "--explain", "--path", "/sandboxes/x", "--method", "DELETE");
    expect(json).toMatchObject({ code: 1, allowed: false, reason: "forbidden", matched_rule: "" });
    expect(json.explanation?.slice(0, 2)).toEqual([
      { rule: policyLine(READER_SANDBOX), text: READER_SANDBOX, reasons: ["method DELETE does not match ^(GET|HEAD)$"] },
      { rule: policyLine(WRITER_SANDBOX), text: WRITER_SANDBOX, reasons: ['role "writer" is not held (the key has reader)'] },
    ]);
    expect(json.explanation?.length).toBeLessThanOrEqual(5);
  });

  it.each<[string, () => string, string[], RegExp]>([
    ["wrong org", () => reader.key, ["--path", "/sandboxes/x", "--method", "GET", "--org", "globex"], /^wrong org: the key is in "acme", the request names "globex"$/],
    ["wrong namespace", () => scoped.key, ["--path", "/sandboxes/x", "--method", "GET", "--namespace", "team-b"], /^wrong namespace: the key is scoped to "team-a", the request is in "team-b"$/],
    ["path did not match", () => reader.key, ["--path", "/nowhere", "--method", "GET"], /^path \/nowhere does not match \/\S*$/],
  ])("%s: the reason is given", async (_, key, args, reason) => {
    const json = await checkJson(key(), "--explain", ...args);
    expect(json.code).toBe(1);
    expect(json.explanation?.flatMap((miss) => miss.reasons)).toContainEqual(expect.stringMatching(reason));
  });

  it("an allow prints the matched rule and no explanation; without --explain there is none", async () => {
    const allowed = await cli(["check", "--explain", "--key", reader.key, "--path", "/sandboxes/x", "--method", "GET"]);
    expect(allowed.code).toBe(0);
    expect(allowed.stdout).toContain(`rule:      ${policyLine(READER_SANDBOX)}`);
    expect(allowed.stdout).not.toContain("closest");
    const plain = await cli(["check", "--key", reader.key, "--path", "/sandboxes/x", "--method", "DELETE"]);
    expect(plain.code).toBe(1);
    expect(plain.stdout).not.toContain("closest");
    expect(await checkJson(reader.key, "--path", "/sandboxes/x", "--method", "DELETE")).not.toHaveProperty("explanation");
  });

  it("a deny before the policy (an unknown key) says the policy was not consulted", async () => {
    const result = await cli(["check", "--explain", "--key", "sk-sb-notarealkey", "--path", "/sandboxes/x", "--method", "GET"]);
    expect(result.code).toBe(1);
    expect(result.stdout).toMatch(/^closest:\s+- \(denied before the policy was consulted: invalid_key\)$/m);
  });
}

describe("with no server running", () => {
  explainsDenies();
});

describe("while the server runs", () => {
  let server: ServerProcess;

  beforeAll(async () => {
    server = await startServerProcess([], { cwd: data.dir, env: data.env });
  });

  afterAll(async () => {
    expect(await server?.stop()).toBe(0);
  });

  explainsDenies();

  // The CLI above reaches the explanation as the local operator (control socket
  // or in-process). On the public port explain is ignored: it would show any
  // key holder the policy's rule text and cost a scan of every rule per call.
  it("Authorize over Connect on the public port: explain = true is ignored", async () => {
    const client = createClient(AuthorizeService, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    const ask = { credential: reader.key, path: "/sandboxes/x", method: "DELETE" };

    const explained = await client.authorize({ ...ask, explain: true });
    expect({ allowed: explained.allowed, reason: explained.reason }).toEqual({ allowed: false, reason: Reason.FORBIDDEN });
    expect(explained.explanation).toEqual([]);

    const allowed = await client.authorize({ ...ask, method: "GET", explain: true });
    expect(allowed.allowed).toBe(true);
    expect(allowed.explanation).toEqual([]);
  });
});
