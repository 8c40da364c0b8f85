import { readFileSync } from "node:fs";
import { join } from "node:path";
import { POLICY_DIR } from "./keygate-process.js";

/**
 * "FILE:LINE" of a rule, as Authorize reports it in matched_rule, found by
 * its text so tests keep working when policy authors add lines above it.
 */
export function policyLine(rule: string, file = "policy.csv", dir = POLICY_DIR): string {
  const lines = readFileSync(join(dir, file), "utf8").split(/\r?\n/);
  const index = lines.findIndex((line) => line.trim() === rule);
  if (index === -1) throw new Error(`rule not found in ${join(dir, file)}: ${rule}`);
  if (lines.findIndex((line, i) => i > index && line.trim() === rule) !== -1) throw new Error(`rule appears twice in ${file}: ${rule}`);
  return `${file}:${index + 1}`;
}
