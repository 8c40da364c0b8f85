import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { checkLayers, importsOf } from "../../scripts/check-layers.mjs";

const REPO = fileURLToPath(new URL("../..", import.meta.url));

const README = "# src\n\n```layers\ncli\nentries/a entries/b\nhttp\ncore/keys\ncore/db\n```\n";

let dirs: string[] = [];
afterEach(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  dirs = [];
});

/** A repository holding these files under src/ (and src/README.md with the stack above). */
function tree(files: Record<string, string>): string {
  const root = mkdtempSync(join(tmpdir(), "keygate-layers-"));
  dirs.push(root);
  for (const [path, text] of Object.entries({ "README.md": README, ...files })) {
    const file = join(root, "src", path);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, text);
  }
  return root;
}

describe("the layer check (scripts/check-layers.mjs, run by npm run check)", () => {
  it("passes on this repository's src/", () => {
    const result = checkLayers(REPO);
    expect(result.problems).toEqual([]);
    expect(result.files).toBeGreaterThan(80);
  });

  it("passes a tree whose imports all point down", () => {
    const root = tree({
      "core/db/db.ts": "export const db = 1;\n",
      "core/keys/keys.ts": 'import { db } from "../db/db.js";\nexport const keys = db;\n',
      "http/edge.ts": 'import type { keys } from "../core/keys/keys.js";\n',
      "entries/a/a.ts": 'import "../../http/edge.js";\nimport { db } from "../../core/db/db.js";\n',
      "cli/main.ts": 'export { keys } from "../core/keys/keys.js";\nawait import("../entries/a/a.js");\n',
    });
    expect(checkLayers(root).problems).toEqual([]);
  });

  it.each([
    ["an import pointing up", { "core/db/db.ts": 'import { x } from "../../http/edge.js";\n', "http/edge.ts": "export const x = 1;\n" }, "core/db may not import http (a layer above it)"],
    ["a type-only import pointing up", { "core/db/db.ts": 'import type { X } from "../keys/k.js";\n', "core/keys/k.ts": "export type X = 1;\n" }, "core/db may not import core/keys (a layer above it)"],
    ["an import sideways", { "entries/a/a.ts": 'import { b } from "../b/b.js";\n', "entries/b/b.ts": "export const b = 1;\n" }, "entries/a may not import entries/b (a neighbour on its own line)"],
    ["a file in no layer", { "misc/x.ts": "export {};\n" }, "src/misc/x.ts: in no layer of src/README.md"],
    ["a circle between files", { "http/a.ts": 'import "./b.js";\n', "http/b.ts": 'import "./a.js";\n' }, "circle between files: src/http/a.ts → src/http/b.ts"],
    ["a circle between folders of one layer", { "http/x/a.ts": 'import "../y/b.js";\n', "http/y/b.ts": 'import "../x/c.js";\n', "http/x/c.ts": "export {};\n" }, "circle between folders: src/http/x ↔ src/http/y"],
    ["the core importing a transport", { "core/db/db.ts": 'import http from "node:http";\n' }, 'imports "node:http": the core imports no transport'],
    ["the core importing gen/", { "core/db/db.ts": 'import { X } from "../../../gen/keygate/v1/authorize_pb.js";\n' }, "only entries/, server, cli, client import gen/"],
  ])("fails on %s", (_, files, problem) => {
    const problems = checkLayers(tree(files)).problems;
    expect(problems.some((p) => p.includes(problem)), problems.join("\n")).toBe(true);
  });

  it("reads multi-line, re-exported, side-effect and dynamic imports, and ignores commented ones", () => {
    const text = [
      'import {\n  a,\n  b,\n} from "./multi.js";',
      'export * from "./reexport.js";',
      'import "./side.js";',
      'const m = await import("./dynamic.js");',
      '// import { c } from "./commented.js";',
      '/* import { d } from "./block.js"; */',
      'const s = "from \\"./not-an-import.js\\"";',
    ].join("\n");
    expect(importsOf(text)).toEqual(["./multi.js", "./reexport.js", "./side.js", "./dynamic.js"]);
  });
});
