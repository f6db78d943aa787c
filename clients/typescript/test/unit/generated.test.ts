// The committed src/gen must be what `npm run generate` makes of ../../proto
// now: regenerate into a temp dir and compare file by file.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { afterAll, expect, test } from "vitest";

const root = resolve(__dirname, "../..");
const tmp = mkdtempSync(join(tmpdir(), "confab-gen-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

test("src/gen is up to date with proto/ (run `npm run generate` if this fails)", () => {
  execFileSync(process.execPath, [join(root, "scripts/generate.mjs"), tmp], { stdio: "pipe" });
  const committed = join(root, "src/gen");
  const want = files(tmp).map((f) => relative(tmp, f)).sort();
  const have = files(committed).map((f) => relative(committed, f)).sort();
  expect(have).toEqual(want);
  for (const f of want) {
    expect(readFileSync(join(committed, f), "utf8"), f).toBe(readFileSync(join(tmp, f), "utf8"));
  }
});
