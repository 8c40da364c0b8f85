export function readLayers(readme: string): Map<string, number>;
export function importsOf(text: string): string[];
export function cycles(graph: Map<string, Set<string>>): string[][];
export function checkLayers(rootDir: string): { problems: string[]; files: number; modules: number; layers: number };
