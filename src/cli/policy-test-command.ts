import { CliError } from "./connect.js";

export async function runPolicyTest(_args: string[]): Promise<number> {
  throw new CliError("policy test: being built");
}
