import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";

/**
 * Heap snapshots of a server started with `--heapsnapshot-signal=SIGUSR1
 * --diagnostic-dir=DIR` (soak --heap-snapshots DIR), and what grew between
 * two of them: retained objects summed by constructor (or node type) name.
 * For finding what a soak's memory growth is made of; V8 stops the server
 * while it writes one (a second or more for a 30 MB heap).
 */

/** Asks for a snapshot and resolves with its path once the file has stopped growing. */
export async function takeHeapSnapshot(pid: number, signal: (name: NodeJS.Signals) => void, dir: string, timeoutMs = 60_000): Promise<string> {
  const before = new Set(await readdir(dir));
  signal("SIGUSR1");
  const deadline = performance.now() + timeoutMs;
  let last = -1;
  for (;;) {
    if (performance.now() > deadline) throw new Error(`no heap snapshot from ${pid} in ${timeoutMs / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const file = (await readdir(dir)).find((name) => !before.has(name) && name.endsWith(".heapsnapshot"));
    if (!file) continue;
    const size = (await stat(join(dir, file))).size;
    // The snapshot ends with the strings table and a closing brace; a size that held for half a second is a written file.
    if (size > 0 && size === last) return join(dir, file);
    last = size;
  }
}

export interface HeapGroup {
  name: string;
  count: number;
  selfBytes: number;
}

/** Every node of a snapshot, grouped by "type:name" (objects by constructor, strings as one group). */
export async function summarizeHeapSnapshot(path: string): Promise<Map<string, HeapGroup>> {
  const snapshot = JSON.parse(await readFile(path, "utf8")) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snapshot.snapshot.meta.node_fields;
  const types = snapshot.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeAt = fields.indexOf("type");
  const nameAt = fields.indexOf("name");
  const sizeAt = fields.indexOf("self_size");
  const groups = new Map<string, HeapGroup>();
  const { nodes, strings } = snapshot;
  for (let i = 0; i < nodes.length; i += width) {
    const type = types[nodes[i + typeAt]!] ?? "?";
    // Strings, numbers and code are grouped by type only: their "name" is their content.
    const name = type === "object" || type === "closure" || type === "native" ? `${type}:${strings[nodes[i + nameAt]!]}` : type;
    let group = groups.get(name);
    if (!group) groups.set(name, (group = { name, count: 0, selfBytes: 0 }));
    group.count++;
    group.selfBytes += nodes[i + sizeAt]!;
  }
  return groups;
}

/** The groups that grew most from `before` to `after`, by bytes. */
export function heapGrowth(before: Map<string, HeapGroup>, after: Map<string, HeapGroup>, top = 15): { name: string; countDelta: number; bytesDelta: number }[] {
  const rows = [...after.values()].map((group) => {
    const old = before.get(group.name);
    return { name: group.name, countDelta: group.count - (old?.count ?? 0), bytesDelta: group.selfBytes - (old?.selfBytes ?? 0) };
  });
  return rows.sort((x, y) => y.bytesDelta - x.bytesDelta).slice(0, top);
}
