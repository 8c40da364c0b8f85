import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";

/**
 * What a figure was measured on, for the console, the JSON and the dated
 * lines above the tables in docs/performance.md: every bench figure depends
 * on the machine, on what else it was doing, and on the Node and database
 * versions.
 */
export interface Machine {
  cpus: number;
  cpu_model: string;
  memory_bytes: number;
  os: string;
  /** The bench's own Node: the load generator's and that of every server not started on another line. */
  node: string;
  /** Other work on the machine skews every figure: the 1-minute load average when the bench started. */
  load_average_at_start: number;
}

export function describeMachine(): Machine {
  const cpus = os.cpus();
  return {
    cpus: cpus.length,
    cpu_model: cpus[0]?.model.trim() ?? "unknown CPU",
    memory_bytes: os.totalmem(),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    load_average_at_start: loadAverage(),
  };
}

/** The 1-minute load average, two decimals. */
export const loadAverage = () => Number(os.loadavg()[0]!.toFixed(2));

/** The installed version of a dependency (e.g. "@electric-sql/pglite"), from its package.json in node_modules. */
export function packageVersion(name: string): string | undefined {
  try {
    const file = fileURLToPath(new URL(`../../../node_modules/${name}/package.json`, import.meta.url));
    return (JSON.parse(readFileSync(file, "utf8")) as { version?: string }).version;
  } catch {
    return undefined;
  }
}

/** `redis-server --version`'s v=…, or undefined without one on PATH. */
export function redisVersion(): string | undefined {
  try {
    return /v=(\S+)/.exec(execFileSync("redis-server", ["--version"], { encoding: "utf8" }))?.[1];
  } catch {
    return undefined;
  }
}

export interface Stamp {
  /** What ran ("npm run bench"), and how long this part of it took. */
  command: string;
  seconds: number;
  machine: Machine;
  loadAtEnd: number;
  /** Each Node version and what ran on it, e.g. ["v20.20.2 (bench, load generator, servers)", "v24.22.3 (the Node 24 servers)"]. */
  nodes: string[];
  /** Each database version and where, e.g. ["Postgres 15.19 (server)", "PGlite 0.5.16 (Postgres 18.1)"]; empty for none. */
  databases?: string[];
}

/** The dated line above a table in docs/performance.md. */
export function formatStamp(stamp: Stamp, date = new Date()): string {
  const { machine } = stamp;
  const gib = (machine.memory_bytes / 1024 ** 3).toFixed(1);
  const when = date.toISOString().replace("T", " ").slice(0, 16);
  const databases = stamp.databases && stamp.databases.length > 0 ? ` Databases: ${stamp.databases.join(", ")}.` : "";
  return (
    `Measured ${when} UTC by \`${stamp.command}\` (this part: ${Math.round(stamp.seconds)} s). ` +
    `Machine: ${machine.cpus} × ${machine.cpu_model}, ${gib} GiB, ${machine.os}; load average ${machine.load_average_at_start} at the start, ${stamp.loadAtEnd} at the end. ` +
    `Node: ${stamp.nodes.join("; ")}.${databases}`
  );
}
