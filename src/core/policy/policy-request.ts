/** A question to the policy, its answer, and (explaining a deny) the rules that did not match. */

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
  /** "policy.csv:12" for the rule that allowed (the first in file order); "" on deny. */
  rule: string;
}

/** A rule that did not match a request, and why: for explaining a deny. */
export interface RuleMiss {
  rule: string;
  text: string;
  reasons: string[];
}
