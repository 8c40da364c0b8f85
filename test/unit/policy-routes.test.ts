import { mkdtempSync, cpSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { compileOwnedPath, parseRoutes } from "../../src/core/policy/policy-routes.js";
import { loadPolicy, PolicyLoadError } from "../../src/core/policy/policy.js";
import { readPolicySource } from "../../src/core/policy/policy-source.js";

/** routes.yaml: prefixes stripped before deciding, owned paths and the id they name, and every mistake named by line. */

const DEFAULT_ROUTES = parseRoutes(`prefixes: [/cubeapi/v1]
owned:
  - kind: sandboxes
    paths: [/sandboxes/:id, /sandboxes/:id/*, /v2/sandboxes/:id, /v2/sandboxes/:id/*]
`).routes;

describe("prefixes", () => {
  it.each([
    ["/cubeapi/v1/sandboxes", "/sandboxes"],
    ["/cubeapi/v1", "/"],
    ["/cubeapi/v1/", "/"],
    ["/cubeapi/v1x/sandboxes", "/cubeapi/v1x/sandboxes"],
    ["/cubeapi/v1/cubeapi/v1/sandboxes", "/cubeapi/v1/sandboxes"],
    ["/sandboxes", "/sandboxes"],
    ["keys/key_1", "keys/key_1"],
  ])("%s is decided as %s (stripped once, whole segments only)", (path, decided) => {
    expect(DEFAULT_ROUTES.strip(path)).toBe(decided);
  });
});

describe("owned paths", () => {
  it.each([
    ["/sandboxes/sbx-1", "sbx-1"],
    ["/sandboxes/sbx-1/logs", "sbx-1"],
    ["/sandboxes/sbx-1/terminal/ws", "sbx-1"],
    ["/v2/sandboxes/abc/logs", "abc"],
  ])("%s addresses sandbox %s", (path, id) => {
    expect(DEFAULT_ROUTES.resourceOf(path)).toMatchObject({ kind: "sandboxes", id });
  });

  it.each(["/sandboxes", "/sandboxes/", "/v2/sandboxes", "/templates/t1", "/sandboxesx/a", "keys/key_1"])("%s addresses no owned resource", (path) => {
    expect(DEFAULT_ROUTES.resourceOf(path)).toBeUndefined();
  });

  it.each([
    ["sandboxes/:id", 'a path starts with "/"'],
    ["/sandboxes/:sid", 'exactly one ":id" segment (found 0)'],
    ["/a/:id/b/:id", 'exactly one ":id" segment (found 2)'],
    ["/sandboxes/:id*", 'segment ":id*"'],
    ["/sandboxes/(.*)", 'segment "(.*)"'],
    ["/*/:id", 'segment "*"'],
  ])("refuses %s", (pattern, error) => {
    const compiled = compileOwnedPath(pattern);
    expect(compiled.ok).toBe(false);
    if (!compiled.ok) expect(compiled.error).toContain(error);
  });
});

describe("mistakes are errors with their line", () => {
  it.each([
    ["prefixes: /cubeapi/v1\n", "routes.yaml:1", "prefixes: expected a list"],
    ["prefixes: [cubeapi]\n", "routes.yaml:1", 'prefix "cubeapi"'],
    ["prefixes:\n  - /a\n  - /a\n", "routes.yaml:3", "listed twice"],
    ["owned:\n  - kind: Sandboxes\n    paths: [/s/:id]\n", "routes.yaml:2", 'kind "Sandboxes"'],
    ["owned:\n  - kind: sandboxes\n", "routes.yaml:2", "paths: expected a non-empty list"],
    ["owned:\n  - kind: sandboxes\n    paths:\n      - /s/:id\n      - /s/:sid\n", "routes.yaml:5", 'owned path "/s/:sid"'],
    ["owned:\n  - kind: sandboxes\n    path: [/s/:id]\n", "routes.yaml:3", 'unknown key "path"'],
    ["owner:\n  - kind: x\n", "routes.yaml:1", 'unknown key "owner"'],
    ["owned: [\n", "routes.yaml:", ""],
  ])("%j", (text, where, message) => {
    const { diagnostics } = parseRoutes(text);
    expect(diagnostics.length).toBeGreaterThan(0);
    expect(diagnostics[0]!.where).toContain(where);
    expect(diagnostics[0]!.message).toContain(message);
    expect(diagnostics[0]!.severity).toBe("error");
  });

  it("an empty file means nothing owned, no prefixes", () => {
    expect(parseRoutes("# nothing yet\n")).toMatchObject({ diagnostics: [], routes: { prefixes: [], owned: [] } });
  });
});

describe("in a policy directory", () => {
  const copy = () => {
    const dir = mkdtempSync(join(tmpdir(), "keygate-routes-"));
    cpSync(resolve(import.meta.dirname, "../../policies"), dir, { recursive: true });
    return dir;
  };

  it("the shipped policy strips /cubeapi/v1 and owns sandboxes", async () => {
    const policy = await loadPolicy(copy());
    expect(policy.routes.prefixes).toEqual(["/cubeapi/v1"]);
    expect(policy.routes.resourceOf("/sandboxes/x")?.route.where).toMatch(/^routes\.yaml:\d+$/);
  });

  it("a broken routes.yaml refuses the policy, naming the line; its text changes the version", async () => {
    const dir = copy();
    const before = (await loadPolicy(dir)).info.version;
    writeFileSync(join(dir, "routes.yaml"), "owned:\n  - kind: sandboxes\n    paths: [/sandboxes/:id]\n");
    expect((await loadPolicy(dir)).info.version).not.toBe(before);
    writeFileSync(join(dir, "routes.yaml"), "owned:\n  - kind: sandboxes\n    paths: [sandboxes]\n");
    await expect(loadPolicy(dir)).rejects.toThrow(PolicyLoadError);
    await expect(loadPolicy(dir)).rejects.toThrow(/routes\.yaml:3/);
  });

  it("warns about a rule written with a stripped prefix: it can never match", async () => {
    const dir = copy();
    writeFileSync(join(dir, "extra.csv"), "p, reader, *, *, /cubeapi/v1/things, ^GET$\n");
    const source = await readPolicySource(dir, { settleMs: 0 });
    expect(source.diagnostics).toContainEqual(expect.objectContaining({ where: "extra.csv:1", severity: "warning", message: expect.stringContaining("can never match") }));
  });
});
