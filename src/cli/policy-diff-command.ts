import { CliError } from "./connect.js";

export async function runPolicyDiff(_args: string[]): Promise<number> {
  throw new CliError("policy diff: being built");
}
