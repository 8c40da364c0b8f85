import { runPolicyDiff } from "./policy-diff-command.js";
import { runPolicyLint } from "./policy-lint-command.js";
import { runPolicyTest } from "./policy-test-command.js";
import { CliError } from "./args.js";

/** `keygate policy lint|test|diff`: tools for policy authors. They read files only, never the database. */
export async function runPolicy(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case "lint":
      return runPolicyLint(rest);
    case "test":
      return runPolicyTest(rest);
    case "diff":
      return runPolicyDiff(rest);
    default:
      throw new CliError(sub ? `unknown policy command "${sub}"; use lint, test or diff` : "policy needs a command: lint, test or diff");
  }
}
