import type { KeygateProcess } from "./keygate-process.js";

/** The proxy's port, from the server's "keygate listening" log line (`"proxy":"HOST:PORT"`). */
export function proxyUrlOf(server: KeygateProcess): string {
  const match = /"proxy":"[^"]*:(\d+)"/.exec(server.output());
  if (!match) throw new Error(`no proxy address in the server's log:\n${server.output()}`);
  return `http://127.0.0.1:${match[1]}`;
}
