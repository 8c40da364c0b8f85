#!/usr/bin/env node
// Checks the layers of src/ (run by `npm run check`, so by `npm test`):
// - every file belongs to a layer of the stack drawn in src/README.md;
// - every import points down: a layer imports only layers below it (never a
//   neighbour on its own line), so no circle between folders is possible;
// - no circle between files;
// - the core imports neither gen/ nor a transport, and only the entries, the
//   composition root, the CLI and the client import gen/.
// Usage: node scripts/check-layers.mjs [ROOT]   (ROOT defaults to the repository)
import { readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";

/** Where gen/ may be imported from, and what the core may never import. */
const GEN_ALLOWED = ["entries/", "server", "cli", "client"];
const CORE_FORBIDDEN = [/^node:https?2?$/, /^https?2?$/, /^@connectrpc\//];

/** The stack from src/README.md's ```layers block: top line first; modules on one line are neighbours. */
export function readLayers(readme) {
  const block = /```layers\n([\s\S]*?)```/.exec(readme);
  if (!block) throw new Error("src/README.md has no ```layers block");
  const lines = block[1].split("\n").map((line) => line.replace(/#.*/, "").trim()).filter(Boolean);
  const rank = new Map();
  lines.forEach((line, i) => {
    for (const module of line.split(/\s+/)) rank.set(module, lines.length - 1 - i);
  });
  return rank;
}

/** The relative and package specifiers a file imports (static, re-exports, side effects, dynamic). */
export function importsOf(text) {
  const code = text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
  const specs = [];
  const patterns = [
    /^\s*(?:import|export)\s[^;]*?\sfrom\s*["']([^"']+)["']/gm,
    /^\s*import\s*["']([^"']+)["']/gm,
    /\bimport\(\s*["']([^"']+)["']\s*\)/g,
  ];
  for (const pattern of patterns) for (const match of code.matchAll(pattern)) specs.push(match[1]);
  return specs;
}

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return walk(path);
    return path.endsWith(".ts") ? [path] : [];
  });
}

/** Strongly connected components with more than one member, or a member importing itself (Tarjan). */
export function cycles(graph) {
  let index = 0;
  const stack = [];
  const state = new Map();
  const found = [];
  const visit = (node) => {
    const s = { index, low: index, onStack: true };
    index++;
    state.set(node, s);
    stack.push(node);
    for (const next of graph.get(node) ?? []) {
      if (!state.has(next)) {
        visit(next);
        s.low = Math.min(s.low, state.get(next).low);
      } else if (state.get(next).onStack) s.low = Math.min(s.low, state.get(next).index);
    }
    if (s.low === s.index) {
      const component = [];
      let member;
      do {
        member = stack.pop();
        state.get(member).onStack = false;
        component.push(member);
      } while (member !== node);
      if (component.length > 1 || (graph.get(node) ?? new Set()).has(node)) found.push(component.sort());
    }
  };
  for (const node of graph.keys()) if (!state.has(node)) visit(node);
  return found;
}

export function checkLayers(rootDir) {
  const src = join(rootDir, "src");
  const rank = readLayers(readFileSync(join(src, "README.md"), "utf8"));
  const modules = [...rank.keys()].sort((a, b) => b.length - a.length);
  const moduleOf = (file) => {
    const rel = relative(src, file).split(sep).join("/");
    return modules.find((m) => rel === `${m}.ts` || rel.startsWith(`${m}/`));
  };
  const problems = [];
  const files = walk(src);
  const fileGraph = new Map();
  const dirGraph = new Map();
  const show = (path) => relative(rootDir, path).split(sep).join("/");
  for (const file of files) {
    const from = moduleOf(file);
    if (from === undefined) {
      problems.push(`${show(file)}: in no layer of src/README.md`);
      continue;
    }
    const edges = new Set();
    fileGraph.set(file, edges);
    const dir = dirname(file);
    if (!dirGraph.has(dir)) dirGraph.set(dir, new Set());
    for (const spec of importsOf(readFileSync(file, "utf8"))) {
      if (!spec.startsWith(".")) {
        if (from.startsWith("core/") && CORE_FORBIDDEN.some((p) => p.test(spec))) problems.push(`${show(file)} imports "${spec}": the core imports no transport`);
        continue;
      }
      const target = resolve(dir, spec).replace(/\.js$/, ".ts");
      const rel = relative(rootDir, target).split(sep).join("/");
      if (rel.startsWith("gen/")) {
        if (!GEN_ALLOWED.some((m) => from === m || from.startsWith(m))) problems.push(`${show(file)} imports ${rel}: only ${GEN_ALLOWED.join(", ")} import gen/`);
        continue;
      }
      if (!rel.startsWith("src/")) continue;
      edges.add(target);
      if (dirname(target) !== dir) dirGraph.get(dir).add(dirname(target));
      const to = moduleOf(target);
      if (to === undefined || to === from) continue;
      if (rank.get(to) >= rank.get(from)) {
        const how = rank.get(to) === rank.get(from) ? "a neighbour on its own line" : "a layer above it";
        problems.push(`${show(file)} imports ${rel}: ${from} may not import ${to} (${how})`);
      }
    }
  }
  for (const component of cycles(fileGraph)) problems.push(`circle between files: ${component.map(show).join(" → ")}`);
  for (const component of cycles(dirGraph)) problems.push(`circle between folders: ${component.map(show).join(" ↔ ")}`);
  return { problems, files: files.length, modules: rank.size, layers: new Set(rank.values()).size };
}

if (process.argv[1] && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname)) {
  const root = resolve(process.argv[2] ?? join(dirname(new URL(import.meta.url).pathname), ".."));
  const { problems, files, modules, layers } = checkLayers(root);
  if (problems.length > 0) {
    process.stderr.write(`Layers (src/README.md) broken:\n  ${problems.join("\n  ")}\n`);
    process.exit(1);
  }
  process.stdout.write(`layers: ${files} files in ${modules} modules on ${layers} layers; every import points down, no circles\n`);
}
