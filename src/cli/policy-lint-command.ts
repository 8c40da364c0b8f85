import { CliError } from "./connect.js";

export async function runPolicyLint(_args: string[]): Promise<number> {
  throw new CliError("policy lint: being built");
}
