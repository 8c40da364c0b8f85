import { describe, expect, it } from "vitest";
import { atPort, parseDirectives, parseSnippets } from "../support/doc-snippets.js";

describe("docs snippets: what the snippet test runs", () => {
  it("takes sh/bash/ts blocks with the directive on the line before, and no other fence", () => {
    const markdown = [
      "# Page",
      '<!-- snippet: expect "200 OK"; expect "a \\"quoted\\" word"; exit 1 -->',
      "```sh",
      "curl -si http://127.0.0.1:8080/healthz",
      "```",
      "",
      "```yaml",
      "a: 1",
      "```",
      "<!-- snippet: skip: needs a Docker engine; nothing else -->",
      "```bash",
      "docker compose up",
      "```",
      "```typescript",
      'console.log("x")',
      "```",
    ].join("\n");
    const snippets = parseSnippets(markdown, "page.md");
    expect(snippets.map((s) => [s.language, s.line, s.code])).toEqual([
      ["sh", 3, "curl -si http://127.0.0.1:8080/healthz"],
      ["sh", 11, "docker compose up"],
      ["ts", 14, 'console.log("x")'],
    ]);
    expect(snippets[0]!.directives).toEqual({ expects: ["200 OK", 'a "quoted" word'], exit: 1 });
    expect(snippets[1]!.directives).toEqual({ expects: [], skip: "needs a Docker engine; nothing else" });
    expect(snippets[2]!.directives).toEqual({ expects: [] });
  });

  it.each([
    ["expect 200", /unknown snippet directive "expect 200"/],
    ["exit one", /unknown snippet directive/],
    ["skip:", /unknown snippet directive/],
    ['until "x"; sleep 1', /unknown snippet directive "sleep 1"/],
  ])("refuses the directive %j, naming where", (text, error) => {
    expect(() => parseDirectives(text, "page.md:7")).toThrow(error);
    expect(() => parseDirectives(text, "page.md:7")).toThrow(/page\.md:7/);
  });

  it("refuses a directive on a block that is never run, and an unclosed fence", () => {
    expect(() => parseSnippets("<!-- snippet: exit 1 -->\n```yaml\na: 1\n```\n", "p.md")).toThrow(/p\.md:1: a snippet directive on a "yaml" block/);
    expect(() => parseSnippets("```sh\nls\n", "p.md")).toThrow(/p\.md:1: fence never closed/);
  });

  it("moves the docs' default address to the test server's port, and nothing else", () => {
    expect(atPort("curl http://127.0.0.1:8080/x localhost:8080 127.0.0.1:80800 10.0.0.1:8080", 41234)).toBe(
      "curl http://127.0.0.1:41234/x 127.0.0.1:41234 127.0.0.1:80800 10.0.0.1:8080",
    );
  });
});
