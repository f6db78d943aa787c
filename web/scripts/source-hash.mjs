#!/usr/bin/env node
// The hash of everything the web bundle is built from, so a test can tell
// whether the bundle a server serves is stale: sha256 over the app's sources
// and the client library's, files sorted by path, each hashed as its path
// (relative to the repository root), a NUL, its length, a NUL and its bytes.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { dirname, join, relative, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

/** web/, wherever this script is run from. */
export const webDir = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function walk(dir, out) {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) walk(p, out);
    else if (st.isFile()) out.push(p);
  }
  return out;
}

/** The files the hash covers, as absolute paths sorted by repo-relative path. */
export function sourceFiles(web = webDir) {
  const root = resolve(web, "..");
  const files = [
    join(web, "index.html"),
    join(web, "package-lock.json"),
    join(web, "vite.config.ts"),
    ...walk(join(web, "src"), []),
    ...walk(join(root, "clients", "typescript", "src"), []),
  ].filter((f) => existsSync(f));
  const rel = (f) => relative(root, f).split(sep).join("/");
  return files
    .map((f) => ({ abs: f, rel: rel(f) }))
    .sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
}

/** The hex sha256 of the sources. */
export function sourceHash(web = webDir) {
  const h = createHash("sha256");
  for (const { abs, rel } of sourceFiles(web)) {
    const body = readFileSync(abs);
    h.update(rel);
    h.update("\0");
    h.update(String(body.length));
    h.update("\0");
    h.update(body);
  }
  return h.digest("hex");
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.argv.includes("--list")) {
    for (const { rel } of sourceFiles()) console.log(rel);
  }
  console.log(sourceHash());
}
