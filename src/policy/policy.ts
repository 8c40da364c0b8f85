import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { BasicCsvParser, Helper, newEnforcer, newModelFromString, type Adapter, type Enforcer, type Model } from "casbin";

/**
 * The policy: Casbin's model file is the definition of a decision, the CSV
 * files in the policy directory are its rules. This module loads both,
 * remembers where each rule came from (for `matched_rule`), and answers
 * decisions for a set of roles.
 */

export interface PolicyRequest {
  roles: readonly string[];
  org: string;
  namespace: string;
  /** Normalized path (or a management resource such as "keys/key_…"). */
  path: string;
  /** Upper-case HTTP method. */
  method: string;
}

export interface PolicyDecision {
  allowed: boolean;
  /** "policy.csv:12" for the rule that allowed; "" on deny. */
  rule: string;
}

export interface Policy {
  decide(request: PolicyRequest): PolicyDecision;
  /** The roles given plus every role they inherit in `org`. */
  inheritedRoles(roles: readonly string[], org: string): Promise<Set<string>>;
  readonly info: PolicyInfo;
}

export interface PolicyInfo {
  dir: string;
  files: string[];
  /** Number of p and g lines. */
  rules: number;
  /** Short content hash of model and rules: changes whenever they do. */
  version: string;
  loadedAt: Date;
}

export class PolicyLoadError extends Error {
  override readonly name = "PolicyLoadError";
}

const MODEL_FILE = "model.conf";
const FIELD_COUNT: Record<string, number> = { p: 5, g: 3 };

interface SourcedLine {
  text: string;
  where: string;
}

export async function loadPolicy(dir: string, now: () => Date = () => new Date()): Promise<Policy> {
  let modelText: string;
  try {
    modelText = await readFile(join(dir, MODEL_FILE), "utf8");
  } catch (error) {
    throw new PolicyLoadError(`cannot read ${join(dir, MODEL_FILE)}: ${(error as Error).message}`, { cause: error });
  }
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (error) {
    throw new PolicyLoadError(`cannot read policy directory ${dir}: ${(error as Error).message}`, { cause: error });
  }
  const files = entries.filter((name) => name.endsWith(".csv")).sort();
  if (files.length === 0) throw new PolicyLoadError(`no .csv policy files in ${dir}`);

  const hash = createHash("sha256").update(modelText);
  const parser = new BasicCsvParser();
  const lines: SourcedLine[] = [];
  const ruleSource = new Map<string, string>();
  for (const file of files) {
    const text = await readFile(join(dir, file), "utf8");
    hash.update(`\0${file}\0${text}`);
    text.split(/\r?\n/).forEach((raw, index) => {
      const where = `${file}:${index + 1}`;
      const line = raw.trim();
      if (line === "" || line.startsWith("#")) return;
      const tokens = parser.parse(line)?.[0];
      const ptype = tokens?.[0];
      if (!tokens || !ptype || !(ptype in FIELD_COUNT)) {
        throw new PolicyLoadError(`${where}: expected a "p" or "g" line, got "${line.slice(0, 80)}"`);
      }
      if (tokens.length - 1 !== FIELD_COUNT[ptype]) {
        throw new PolicyLoadError(`${where}: a "${ptype}" line has ${FIELD_COUNT[ptype]} fields, this one has ${tokens.length - 1}`);
      }
      if (tokens.some((t) => t === "")) throw new PolicyLoadError(`${where}: empty field`);
      if (ptype === "p") {
        const method = tokens[5]!;
        try {
          new RegExp(method);
        } catch (error) {
          throw new PolicyLoadError(`${where}: invalid method pattern "${method}": ${(error as Error).message}`);
        }
        const key = tokens.slice(1).join("\0");
        if (!ruleSource.has(key)) ruleSource.set(key, where);
      }
      lines.push({ text: line, where });
    });
  }

  let model: Model;
  try {
    model = newModelFromString(modelText);
  } catch (error) {
    throw new PolicyLoadError(`${MODEL_FILE}: ${(error as Error).message}`, { cause: error });
  }
  const adapter: Adapter = {
    async loadPolicy(target: Model) {
      for (const { text, where } of lines) {
        try {
          Helper.loadPolicyLine(text, target);
        } catch (error) {
          throw new PolicyLoadError(`${where}: ${(error as Error).message}`, { cause: error });
        }
      }
    },
    savePolicy: async () => false,
    addPolicy: async () => {},
    removePolicy: async () => {},
    removeFilteredPolicy: async () => {},
  };
  const enforcer = await newEnforcer(model, adapter);
  // "*" as the org of a g line means the inheritance holds in every org.
  await enforcer.addNamedDomainMatchingFunc("g", (org: string, pattern: string) => pattern === "*" || org === pattern);

  const info: PolicyInfo = {
    dir,
    files,
    rules: lines.length,
    version: hash.digest("hex").slice(0, 12),
    loadedAt: now(),
  };
  return createCasbinPolicy(enforcer, ruleSource, info);
}

function createCasbinPolicy(enforcer: Enforcer, ruleSource: Map<string, string>, info: PolicyInfo): Policy {
  return {
    info,
    decide({ roles, org, namespace, path, method }) {
      for (const role of roles) {
        const [allowed, rule] = enforcer.enforceExSync(role, org, namespace, path, method);
        if (allowed) return { allowed: true, rule: ruleSource.get(rule.join("\0")) ?? "" };
      }
      return { allowed: false, rule: "" };
    },
    async inheritedRoles(roles, org) {
      const result = new Set<string>(roles);
      for (const role of roles) {
        for (const inherited of await enforcer.getImplicitRolesForUser(role, org)) result.add(inherited);
      }
      return result;
    },
  };
}
