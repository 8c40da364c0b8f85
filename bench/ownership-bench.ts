/**
 * Ownership bench: what the ownership check adds to a decision on a warm
 * entry (issue 13: ≤ 2 µs). In this process, the real authorizer over the
 * shipped policy, a warm key (the lookup answers from memory, as a warm key
 * cache does) and the real ledger over an in-memory PGlite whose owner cache
 * holds every sandbox asked about: the same requests decided with ownership
 * off (the baseline) and on, in alternating rounds so machine noise hits
 * both. Reported: mean µs per decision of each, the difference, and the
 * on-path's p99.
 *
 *   npm run bench:ownership              full run
 *   npm run bench:ownership -- --quick   fewer rounds, for CI to check it still runs
 *   npm run bench:ownership -- --no-docs a full run that leaves docs/performance.md alone
 *
 * A full run writes its table between the bench:ownership markers of docs/performance.md.
 */
import { PGlite } from "@electric-sql/pglite";
import { pathToFileURL } from "node:url";
import { createAuthorizer, type Authorize } from "../src/core/authorize/authorizer.js";
import type { AuthorizeInput } from "../src/core/authorize/decision.js";
import { openStore } from "../src/core/db/connect.js";
import { migrateToLatest } from "../src/core/db/migrate.js";
import type { KeyRecord } from "../src/core/keys/key-record.js";
import { loadPolicy } from "../src/core/policy/policy.js";
import { createResourceCache } from "../src/core/resources/resource-cache.js";
import { createResourceLedger } from "../src/core/resources/resource-ledger.js";
import { writeDocSection, writesDocs } from "./support/docs.js";
import { describeMachine, formatStamp, loadAverage } from "./support/machine.js";

const QUICK = process.argv.includes("--quick");
const WRITE_DOCS = writesDocs(process.argv.slice(2));
const ROUNDS = QUICK ? 4 : 20;
const PER_ROUND = QUICK ? 20_000 : 200_000;
const SANDBOXES = 1_000;
const TARGET_US = 2;
const POLICY_DIR = new URL("../../policies", import.meta.url).pathname;

const at = new Date("2026-01-01T00:00:00Z");
const KEY: KeyRecord = {
  id: "key_bench",
  name: "bench",
  org: "acme",
  namespace: "*",
  roles: ["writer"],
  enabled: true,
  displayPrefix: "sk-sb-bench",
  createdAt: at,
  updatedAt: at,
  expiresAt: null,
  revokedAt: null,
  lastUsedAt: null,
  rotatedFrom: null,
  rateLimit: null,
  maxSandboxes: null,
  budgetId: "key_bench",
  parentBudgets: [],
  createdBy: "local",
};
const FOUND = { status: "ok" as const, key: KEY };

/** Mean µs per decision over `inputs`, and each decision's time (for p99). */
async function round(authorize: Authorize, inputs: readonly AuthorizeInput[], samples: Float64Array | undefined): Promise<number> {
  const started = performance.now();
  for (let i = 0; i < inputs.length; i++) {
    const t0 = samples ? performance.now() : 0;
    const decision = await authorize(inputs[i]!);
    if (samples) samples[i] = performance.now() - t0;
    if (!decision.allowed) throw new Error(`denied: ${decision.reason} ${decision.message}`);
  }
  return ((performance.now() - started) * 1000) / inputs.length;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  const started = performance.now();
  const machine = describeMachine();
  const policy = await loadPolicy(POLICY_DIR);
  const pglite = new PGlite();
  const store = await openStore({ kind: "pglite-instance", pglite, location: "memory" });
  await migrateToLatest(store.db);
  const ledger = createResourceLedger({
    db: store.db,
    cache: createResourceCache({ ttlMs: 3_600_000, negativeTtlMs: 3_600_000, maxEntries: 100_000, now: () => 0 }),
    now: () => at,
  });
  const methods = ["GET", "DELETE", "POST"];
  const suffix = ["", "", "/timeout"];
  const inputs: AuthorizeInput[] = [];
  for (let i = 0; i < SANDBOXES; i++) {
    const id = `sbx-${i.toString(36).padStart(6, "0")}`;
    await ledger.claim({ kind: "sandboxes", id }, { org: "acme", namespace: "default", keyId: KEY.id });
    await ledger.owner({ kind: "sandboxes", id }); // warm
  }
  for (let i = 0; i < PER_ROUND; i++) {
    const id = `sbx-${(i % SANDBOXES).toString(36).padStart(6, "0")}`;
    const m = i % 3;
    inputs.push({ credential: "sk-sb-bench", path: `/sandboxes/${id}${suffix[m]}`, method: methods[m]!, namespace: "", org: "" });
  }
  const base = { lookupKey: async () => FOUND, policy: () => policy, now: () => at };
  const off = createAuthorizer(base);
  const on = createAuthorizer({ ...base, ownership: ledger });

  console.log(`keygate ownership bench${QUICK ? " (--quick)" : ""}: Node ${process.version}, ${ROUNDS} alternating rounds of ${PER_ROUND.toLocaleString("en-US")} decisions, ${SANDBOXES} warm sandboxes`);
  // Warm the JIT on both paths.
  await round(off, inputs, undefined);
  await round(on, inputs, undefined);
  const offMeans: number[] = [];
  const onMeans: number[] = [];
  const samples = new Float64Array(PER_ROUND);
  const p99s: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const order = r % 2 === 0 ? ["off", "on"] : ["on", "off"];
    for (const which of order) {
      if (which === "off") offMeans.push(await round(off, inputs, undefined));
      else {
        onMeans.push(await round(on, inputs, r === ROUNDS - 1 ? samples : undefined));
      }
    }
  }
  const sorted = Array.from(samples).sort((a, b) => a - b);
  p99s.push(sorted[Math.floor(sorted.length * 0.99)]! * 1000);
  const offUs = median(offMeans);
  const onUs = median(onMeans);
  const added = onUs - offUs;
  const met = added <= TARGET_US;
  const row = (label: string, value: string) => `| ${label} | ${value} |`;
  const table = [
    "| measure | value |",
    "|---|---:|",
    row("decision, ownership off (baseline): mean µs", offUs.toFixed(2)),
    row("decision, ownership on, warm owner: mean µs", onUs.toFixed(2)),
    row("added by the ownership check: µs", added.toFixed(2)),
    row("ownership on: p99 µs (last round, incl. one performance.now() pair)", p99s[0]!.toFixed(2)),
  ].join("\n");
  console.log(table);
  const check = `${met ? "met" : "**missed**"}: the ownership check on a warm entry adds ≤ ${TARGET_US} µs to a decision (${added.toFixed(2)} µs; medians of ${ROUNDS} rounds)`;
  console.log(check);
  if (WRITE_DOCS) {
    const stamp = formatStamp({ command: "npm run bench", seconds: (performance.now() - started) / 1000, machine, loadAtEnd: loadAverage(), nodes: [`${process.version} (in process)`] });
    await writeDocSection("ownership", `${stamp}\n\n${table}\n\n- ${check}`);
  }
  await store.close();
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
