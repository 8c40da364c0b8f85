/**
 * Policy benchmark: the compiled policy (src/core/policy) against plain Casbin on
 * the same model and CSV, at 100, 10,000 and 100,000 policy lines.
 *
 *   npm run bench:policy            full run (≈ 1 min; Casbin at 100k lines is most of it)
 *   npm run bench:policy -- --quick small counts, for CI to check the bench still runs
 *   npm run bench:policy -- --no-docs a full run that leaves docs/performance.md alone
 *
 * A full run writes its summary table, dated, with the machine and the Node
 * version, between the bench:policy markers of docs/performance.md.
 *
 * For each size it generates a policy spread over 1,000 orgs (the default
 * policy's "*" rules and "*" g lines, then per org: rules for several
 * org-specific roles on Cube/E2B routes with :id parameters, some pinned to a
 * namespace or one resource, and g lines in that org), writes it with
 * policies/model.conf to a temp dir and measures, in this process:
 *
 *   - load: loadPolicy(dir) wall time; Casbin's newEnforcer(model,
 *     FileAdapter) beside it;
 *   - decisions: latency of policy.decide() per request (p50, p99, mean) over
 *     random realistic requests from keys in any of the 1,000 orgs (allowed
 *     and denied mixed: own-org roles, global roles, team roles inheriting
 *     in their org, unknown orgs and roles, paths outside the routes):
 *       - a first pass over the timed requests, with the (role, org) closure
 *         memo and the JIT cold ("first pass" row);
 *       - then the steady state: ROUNDS rounds over the same requests,
 *         alternating with rounds of Casbin's enforceSync (requests from the
 *         same generator; "any role allows", as the Casbin engine in
 *         policy.ts decides), so machine noise hits both. Casbin evaluates
 *         the matcher against every line, ~0.1–0.5 s per decision at 100k
 *         lines, so only a small fixed number of its decisions is timed
 *         there (the table says how many);
 *       - the same policy with keys from only 50 orgs, whose structures stay
 *         in the CPU caches: at 100k lines and 1,000 orgs the compiled
 *         decision costs a handful of dependent memory loads into ~50 MB of
 *         index, and that (not the number of rules looked at, ~1.6 per
 *         decision) is what grows with the policy;
 *   - memory: heap / RSS growth after a full GC while the policy is held
 *     (node --expose-gc), before any decision (the closure memo then adds a
 *     small Set and array per (role, org) pair decided).
 *
 * Each timed decision includes one performance.now() pair (≈ 0.05 µs; it
 * allocates nothing, unlike hrtime.bigint()). Every request Casbin decides is
 * also decided by the compiled policy; the table counts disagreements (the
 * run fails on any).
 *
 * Targets (checked at the end, not enforced by exit code unless --strict):
 * compiled p99 ≤ 50 µs at 100k lines and ≤ 2× its 100-line figure; loading
 * 100k lines < 2 s.
 */
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { FileAdapter, newEnforcer, newModelFromString, type Enforcer } from "casbin";
import { loadPolicy, type Policy } from "../src/core/policy/policy.js";
import type { PolicyRequest } from "../src/core/policy/policy-request.js";
import { writeDocSection, writesDocs } from "./support/docs.js";
import { describeMachine, formatStamp, loadAverage, packageVersion } from "./support/machine.js";
import { prng } from "./support/prng.js";

const args = new Set(process.argv.slice(2));
const QUICK = args.has("--quick");
const STRICT = args.has("--strict");
const WRITE_DOCS = writesDocs(process.argv.slice(2));

const ORGS = 1_000;
const SIZES = QUICK ? [100, 2_000] : [100, 10_000, 100_000];
/** Rounds of (compiled batch, Casbin batch), alternating. */
const ROUNDS = QUICK ? 2 : 5;
const COMPILED_PER_ROUND = QUICK ? 2_000 : 40_000;
/** Casbin decisions per round, by policy size: it costs O(lines) per decision. */
const casbinPerRound = (lines: number) => (QUICK ? (lines <= 100 ? 200 : 10) : lines <= 100 ? 2_000 : lines <= 10_000 ? 40 : 4);
/** Orgs the cache-locality comparison draws keys from. */
const LOCAL_ORGS = 50;

const POLICY_DIR = fileURLToPath(new URL("../../policies/", import.meta.url));

const gc = (globalThis as { gc?: () => void }).gc ?? (() => {});

// ---------------------------------------------------------------- random

type Rand = () => number;
const pick = <T>(rand: Rand, list: readonly T[]): T => list[Math.floor(rand() * list.length)]!;

// ---------------------------------------------------------------- policy

/** Cube/E2B routes (SPEC.md) with the methods each serves. */
const ROUTES: { pattern: string; methods: string[] }[] = [
  { pattern: "/sandboxes", methods: ["GET", "POST"] },
  { pattern: "/v2/sandboxes", methods: ["GET"] },
  { pattern: "/sandboxes/:id", methods: ["GET", "DELETE"] },
  { pattern: "/sandboxes/:id/logs", methods: ["GET"] },
  ...["timeout", "refreshes", "pause", "resume", "connect", "snapshots"].map((a) => ({ pattern: `/sandboxes/:id/${a}`, methods: ["POST"] })),
  { pattern: "/sandboxes/:id/network", methods: ["PUT"] },
  { pattern: "/templates", methods: ["GET", "POST"] },
  { pattern: "/templates/:id", methods: ["GET", "POST", "DELETE", "PATCH"] },
  { pattern: "/templates/:id/builds/:buildID", methods: ["POST"] },
  { pattern: "/templates/:id/builds/:buildID/status", methods: ["GET"] },
  { pattern: "/templates/:id/builds/:buildID/logs", methods: ["GET"] },
  { pattern: "/snapshots", methods: ["GET"] },
  { pattern: "/volumes", methods: ["GET", "POST"] },
  { pattern: "/volumes/:id", methods: ["GET", "DELETE"] },
];
const METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/** Roles an org defines for itself; "team-N" roles inherit one of them in that org. */
const ORG_ROLES = ["deployer", "viewer", "auditor", "ci", "billing", "support", "builder", "operator"];
const TEAMS = 12;
const NAMESPACES = ["prod", "staging", "dev"];
const GLOBAL_ROLES = ["reader", "writer", "admin"];

const orgName = (i: number) => `org-${String(i).padStart(4, "0")}`;
const anchored = (methods: string[]) => (methods.length === 1 ? `^${methods[0]}$` : `^(${methods.join("|")})$`);
const resourceId = (rand: Rand, prefix: string) => `${prefix}-${Math.floor(rand() * 100_000).toString(36)}`;

/** One org's lines: rules for its roles (some pinned to a namespace or one resource) and team → role links. */
function orgLines(rand: Rand, org: string, count: number): string[] {
  const lines: string[] = [];
  let n = 0;
  while (lines.length < count) {
    if (n % 10 === 9) {
      lines.push(`g, team-${n % TEAMS}, ${ORG_ROLES[(n >> 1) % ORG_ROLES.length]}, ${org}`);
    } else {
      const role = ORG_ROLES[Math.floor(n / 3) % ORG_ROLES.length]!;
      const route = pick(rand, ROUTES);
      const ns = rand() < 0.7 ? "*" : pick(rand, NAMESPACES);
      let path = route.pattern;
      const kind = rand();
      if (kind < 0.1 && path.includes(":id")) path = path.replace(":id", resourceId(rand, path.startsWith("/templates") ? "tpl" : "sbx"));
      else if (kind < 0.15) path = `${route.pattern.split("/").slice(0, 3).join("/")}/*`;
      const methods = route.methods.filter(() => rand() < 0.7);
      const methodPattern = methods.length === 0 ? anchored(route.methods.includes("GET") ? ["GET", "HEAD"] : route.methods) : anchored(methods);
      lines.push(`p, ${role}, ${org}, ${ns}, ${path}, ${methodPattern}`);
    }
    n++;
  }
  return lines;
}

interface Generated {
  text: string;
  lines: number;
  orgsUsed: number;
}

export async function generatePolicy(lines: number, seed: number): Promise<Generated> {
  const rand = prng(seed);
  const defaults = (await readFile(join(POLICY_DIR, "policy.csv"), "utf8")).split(/\r?\n/).filter((l) => /^[pg],/.test(l.trim()));
  const out = [...defaults, "g, oncall, reader, *", "g, ci, writer, *"];
  const orgLineCount = Math.max(0, lines - out.length);
  const per = Math.floor(orgLineCount / ORGS);
  const extra = orgLineCount % ORGS;
  let orgsUsed = 0;
  for (let i = 0; i < ORGS; i++) {
    const count = per + (i < extra ? 1 : 0);
    if (count === 0) continue;
    orgsUsed++;
    out.push(`# ${orgName(i)}`, ...orgLines(rand, orgName(i), count));
  }
  const ruleLines = out.filter((l) => !l.startsWith("#")).length;
  return { text: `${out.join("\n")}\n`, lines: ruleLines, orgsUsed };
}

// ---------------------------------------------------------------- requests

function concretePath(rand: Rand, pattern: string): string {
  return pattern
    .replace(":id", resourceId(rand, pattern.startsWith("/templates") ? "tpl" : pattern.startsWith("/volumes") ? "vol" : "sbx"))
    .replace(":buildID", resourceId(rand, "bld"));
}

const OFF_ROUTE = ["/admin", "/health", "/sandboxes/sbx-1/files", "/v3/sandboxes", "/templates/tpl-1/builds", "keys", "keys/key_abc"];

/**
 * Requests from keys in any of the 1,000 orgs (whether or not the policy has
 * rules of its own for that org: the key population does not shrink with the
 * policy), 5 % from orgs the bench never names.
 */
export function makeRequests(count: number, seed: number, orgs = ORGS): PolicyRequest[] {
  const rand = prng(seed);
  const requests: PolicyRequest[] = [];
  for (let i = 0; i < count; i++) {
    const org = rand() < 0.95 ? orgName(Math.floor(rand() * orgs)) : `org-x${Math.floor(rand() * 50)}`;
    const kind = rand();
    let roles: string[];
    if (kind < 0.25) roles = [pick(rand, GLOBAL_ROLES)];
    else if (kind < 0.6) roles = [pick(rand, ORG_ROLES)];
    else if (kind < 0.8) roles = [`team-${Math.floor(rand() * TEAMS)}`];
    else if (kind < 0.92) roles = [pick(rand, ORG_ROLES), `team-${Math.floor(rand() * TEAMS)}`];
    else roles = [pick(rand, ["ghost", "intern", "oncall"])];
    const route = pick(rand, ROUTES);
    const path = rand() < 0.9 ? concretePath(rand, route.pattern) : pick(rand, OFF_ROUTE);
    const method = rand() < 0.75 ? pick(rand, route.methods) : pick(rand, METHODS);
    requests.push({ roles, org, namespace: pick(rand, NAMESPACES), path, method });
  }
  return requests;
}

// ---------------------------------------------------------------- measuring

interface Memory {
  heap: number;
  rss: number;
}
function settle(): Memory {
  gc();
  gc();
  const m = process.memoryUsage();
  return { heap: m.heapUsed, rss: m.rss };
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

interface Latency {
  n: number;
  p50: number;
  p99: number;
  mean: number;
}
function summarize(samples: ArrayLike<number>): Latency {
  const sorted = Float64Array.from(samples).sort();
  const sum = sorted.reduce((a, b) => a + b, 0);
  return { n: samples.length, p50: percentile(sorted, 50), p99: percentile(sorted, 99), mean: sum / samples.length };
}

function casbinDecide(enforcer: Enforcer, r: PolicyRequest): boolean {
  for (const role of r.roles) if (enforcer.enforceSync(role, r.org, r.namespace, r.path, r.method)) return true;
  return false;
}

interface Result {
  lines: number;
  orgsUsed: number;
  csvBytes: number;
  loadMs: number;
  heapMb: number;
  rssMb: number;
  casbinLoadMs: number;
  casbinHeapMb: number;
  compiled: Latency;
  compiledCold: Latency;
  compiledLocal: Latency;
  casbin: Latency;
  allowedPct: number;
  disagreements: number;
}

const MB = 1024 * 1024;

async function benchSize(lines: number, modelText: string): Promise<Result> {
  const generated = await generatePolicy(lines, 0x5eed + lines);
  const dir = await mkdtemp(join(tmpdir(), "keygate-policy-bench-"));
  try {
    await writeFile(join(dir, "model.conf"), modelText);
    await writeFile(join(dir, "policy.csv"), generated.text);

    // Load, compiled.
    let before = settle();
    let t0 = process.hrtime.bigint();
    const policy: Policy = await loadPolicy(dir);
    const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
    let after = settle();
    const heapMb = (after.heap - before.heap) / MB;
    const rssMb = (after.rss - before.rss) / MB;
    if (policy.info.engine !== "compiled") throw new Error("the bench policy should compile");

    // Load, Casbin (as the file adapter reads it).
    before = settle();
    t0 = process.hrtime.bigint();
    const enforcer = await newEnforcer(newModelFromString(modelText), new FileAdapter(join(dir, "policy.csv")));
    await enforcer.addNamedDomainMatchingFunc("g", (org: string, pattern: string) => pattern === "*" || org === pattern);
    const casbinLoadMs = Number(process.hrtime.bigint() - t0) / 1e6;
    after = settle();
    const casbinHeapMb = (after.heap - before.heap) / MB;

    const timed = ROUNDS * COMPILED_PER_ROUND;
    const requests = makeRequests(timed, 0xbeef + lines);
    const casbinCount = casbinPerRound(lines);
    const casbinRequests = makeRequests(ROUNDS * casbinCount + 2, 0xcafe + lines);

    // First pass over the timed requests: JIT and the (role, org) closure memo
    // start cold. Timed on its own; the rounds below measure the steady state.
    const coldSamples = new Float64Array(timed);
    for (let i = 0; i < timed; i++) {
      const start = performance.now();
      policy.decide(requests[i]!);
      coldSamples[i] = (performance.now() - start) * 1000;
    }
    casbinDecide(enforcer, casbinRequests[ROUNDS * casbinCount]!);
    casbinDecide(enforcer, casbinRequests[ROUNDS * casbinCount + 1]!);

    let allowed = 0;
    const compiledSamples = new Float64Array(timed);
    let sample = 0;
    const casbinSamples: number[] = [];
    let disagreements = 0;
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = round * COMPILED_PER_ROUND; i < (round + 1) * COMPILED_PER_ROUND; i++) {
        const request = requests[i]!;
        const start = performance.now();
        const decision = policy.decide(request);
        compiledSamples[sample++] = (performance.now() - start) * 1000;
        if (decision.allowed) allowed++;
      }
      for (let i = round * casbinCount; i < (round + 1) * casbinCount; i++) {
        const request = casbinRequests[i]!;
        const start = performance.now();
        const ok = casbinDecide(enforcer, request);
        casbinSamples.push((performance.now() - start) * 1000);
        if (ok !== policy.decide(request).allowed) disagreements++;
      }
    }

    // The same policy, keys from only LOCAL_ORGS orgs: the structures a
    // decision touches stay in the CPU caches (one warm pass, then timed).
    const local = makeRequests(COMPILED_PER_ROUND, 0xf00d + lines, LOCAL_ORGS);
    for (const request of local) policy.decide(request);
    const localSamples = new Float64Array(local.length);
    for (let i = 0; i < local.length; i++) {
      const start = performance.now();
      policy.decide(local[i]!);
      localSamples[i] = (performance.now() - start) * 1000;
    }

    return {
      lines: generated.lines,
      orgsUsed: generated.orgsUsed,
      csvBytes: Buffer.byteLength(generated.text),
      loadMs,
      heapMb,
      rssMb,
      casbinLoadMs,
      casbinHeapMb,
      compiled: summarize(compiledSamples),
      compiledCold: summarize(coldSamples),
      compiledLocal: summarize(localSamples),
      casbin: summarize(casbinSamples),
      allowedPct: (100 * allowed) / compiledSamples.length,
      disagreements,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- report

const us = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(v >= 10_000 ? 1 : 2)} ms` : v >= 100 ? `${v.toFixed(0)} µs` : `${v.toFixed(2)} µs`);
const ms = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${v.toFixed(v < 10 ? 2 : 0)} ms`);
const mb = (v: number) => `${v >= 0 ? "+" : ""}${v.toFixed(1)} MB`;
const x = (v: number) => (v >= 100 ? `${Math.round(v).toLocaleString("en-US")}×` : `${v.toFixed(v < 10 ? 2 : 1)}×`);

function table(results: Result[]): string {
  const base = results[0]!;
  const rows: [string, (r: Result) => string][] = [
    ["policy lines (p + g) / orgs", (r) => `${r.lines.toLocaleString("en-US")} / ${r.orgsUsed}`],
    ["CSV size", (r) => `${(r.csvBytes / 1024).toFixed(0)} KiB`],
    ["load: compiled loadPolicy", (r) => ms(r.loadMs)],
    ["load: Casbin newEnforcer", (r) => ms(r.casbinLoadMs)],
    ["heap Δ after load: compiled", (r) => mb(r.heapMb)],
    ["RSS Δ after load: compiled", (r) => mb(r.rssMb)],
    ["heap Δ after load: Casbin", (r) => mb(r.casbinHeapMb)],
    ["compiled decisions timed", (r) => r.compiled.n.toLocaleString("en-US")],
    ["compiled p50", (r) => us(r.compiled.p50)],
    ["compiled p99", (r) => us(r.compiled.p99)],
    ["compiled mean", (r) => us(r.compiled.mean)],
    ["compiled p99, first pass (memo cold)", (r) => us(r.compiledCold.p99)],
    [`compiled p99, keys of ${LOCAL_ORGS} orgs only`, (r) => us(r.compiledLocal.p99)],
    ["Casbin decisions timed", (r) => r.casbin.n.toLocaleString("en-US")],
    ["Casbin p50", (r) => us(r.casbin.p50)],
    ["Casbin p99", (r) => us(r.casbin.p99)],
    ["Casbin mean", (r) => us(r.casbin.mean)],
    ["Casbin / compiled, p50", (r) => x(r.casbin.p50 / r.compiled.p50)],
    ["Casbin / compiled, mean", (r) => x(r.casbin.mean / r.compiled.mean)],
    [`compiled p99 / p99 at ${base.lines} lines`, (r) => x(r.compiled.p99 / base.compiled.p99)],
    [`same, keys of ${LOCAL_ORGS} orgs only`, (r) => x(r.compiledLocal.p99 / base.compiledLocal.p99)],
    ["requests allowed", (r) => `${r.allowedPct.toFixed(0)} %`],
    ["compiled ≠ Casbin", (r) => String(r.disagreements)],
  ];
  const header = ["", ...results.map((r) => `${r.lines.toLocaleString("en-US")} lines`)];
  const body = rows.map(([label, cell]) => [label, ...results.map(cell)]);
  const widths = header.map((_, c) => Math.max(...[header, ...body].map((row) => row[c]!.length)));
  const line = (row: string[]) => `| ${row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join(" | ")} |`;
  const rule = `|${widths.map((w, c) => (c === 0 ? `:${"-".repeat(w + 1)}` : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(header), rule, ...body.map(line)].join("\n");
}

/** The few columns docs/performance.md shows, one row per policy size. */
function summaryTable(results: Result[]): string {
  const base = results[0]!;
  const header = ["policy lines", "load (compiled / Casbin)", "compiled p50 / p99", "Casbin p50 / p99", "Casbin ÷ compiled (p50)", "compiled p99 ÷ 100-line p99 (keys of 50 orgs)", "heap after load (compiled / Casbin)"];
  const body = results.map((r) => [
    r.lines.toLocaleString("en-US"),
    `${ms(r.loadMs)} / ${ms(r.casbinLoadMs)}`,
    `${us(r.compiled.p50)} / ${us(r.compiled.p99)}`,
    `${us(r.casbin.p50)} / ${us(r.casbin.p99)}`,
    x(r.casbin.p50 / r.compiled.p50),
    `${x(r.compiled.p99 / base.compiled.p99)} (${x(r.compiledLocal.p99 / base.compiledLocal.p99)})`,
    `${mb(r.heapMb)} / ${mb(r.casbinHeapMb)}`,
  ]);
  const widths = header.map((_, c) => Math.max(3, ...[header, ...body].map((row) => row[c]!.length)));
  const line = (row: string[]) => `| ${row.map((cell, c) => cell.padStart(widths[c]!)).join(" | ")} |`;
  return [line(header), `|${widths.map((w) => `${"-".repeat(w + 1)}:`).join("|")}|`, ...body.map(line)].join("\n");
}

async function main(): Promise<void> {
  if (!(globalThis as { gc?: () => void }).gc) {
    console.error("run with node --expose-gc (npm run bench:policy does)");
    process.exit(2);
  }
  const modelText = await readFile(join(POLICY_DIR, "model.conf"), "utf8");
  const started = performance.now();
  const machine = describeMachine();
  console.log(
    `keygate policy bench${QUICK ? " (--quick)" : ""}: Node ${process.version}, ${ORGS} orgs, ` +
      `${ROUNDS} alternating rounds, ${COMPILED_PER_ROUND.toLocaleString("en-US")} compiled decisions per round`,
  );
  const results: Result[] = [];
  for (const lines of SIZES) {
    process.stdout.write(`  ${lines.toLocaleString("en-US")} lines… `);
    const t0 = Date.now();
    results.push(await benchSize(lines, modelText));
    console.log(`${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  console.log();
  console.log(table(results));
  console.log();
  console.log("Latency per decision, one request at a time, including one performance.now() pair; Casbin = enforceSync per role until one allows.");

  const largest = results[results.length - 1]!;
  const first = results[0]!;
  const checks: [string, boolean][] = [
    [`compiled p99 at ${largest.lines.toLocaleString("en-US")} lines ≤ 50 µs (${us(largest.compiled.p99)})`, largest.compiled.p99 <= 50],
    [`compiled p99 at ${largest.lines.toLocaleString("en-US")} lines ≤ 2× the ${first.lines}-line figure (${x(largest.compiled.p99 / first.compiled.p99)})`, largest.compiled.p99 <= 2 * first.compiled.p99],
    [`load of ${largest.lines.toLocaleString("en-US")} lines < 2 s (${ms(largest.loadMs)})`, largest.loadMs < 2000],
    ["compiled and Casbin agree on every request Casbin decided", results.every((r) => r.disagreements === 0)],
  ];
  console.log();
  for (const [label, ok] of checks) console.log(`${ok ? "ok  " : "MISS"}  ${label}`);
  if (QUICK) console.log("(--quick: small sizes and counts; the targets are for the full run)");
  if (WRITE_DOCS) {
    const stamp = formatStamp({
      command: "npm run bench",
      seconds: (performance.now() - started) / 1000,
      machine,
      loadAtEnd: loadAverage(),
      nodes: [`${process.version} (in process; casbin ${packageVersion("casbin") ?? "?"})`],
    });
    const checkLines = checks.map(([label, ok]) => `- ${ok ? "met" : "**missed**"}: ${label}`).join("\n");
    await writeDocSection(
      "policy",
      `${stamp}\n\n${summaryTable(results)}\n\n${checkLines}\n\n` +
        `${ORGS.toLocaleString("en-US")} orgs, ${ROUNDS} alternating rounds; latency per decision, one request at a time, including one performance.now() pair; Casbin = enforceSync per role until one allows. ` +
        `Compiled and Casbin disagreed on ${results.reduce((n, r) => n + r.disagreements, 0)} of the requests Casbin decided.`,
    );
  }
  if (!results.every((r) => r.disagreements === 0)) process.exitCode = 1;
  if (STRICT && !QUICK && !checks.every(([, ok]) => ok)) process.exitCode = 1;
}

// Run when executed (not when imported, e.g. by a profiling script).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
