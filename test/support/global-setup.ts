/** Runs once before all test files: the compiled CLI must exist for end-to-end tests. */
export default async function setup(): Promise<void> {}
