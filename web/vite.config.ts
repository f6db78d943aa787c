import { fileURLToPath } from "node:url";
import { defineConfig, type Plugin } from "vite";
import preact from "@preact/preset-vite";
// @ts-ignore: a plain .mjs script, shared with the tests
import { sourceHash } from "./scripts/source-hash.mjs";

// Writes dist/source-hash.txt: the hash of the sources this bundle was built
// from, which a test compares with the tree's to catch a stale bundle.
function sourceHashFile(): Plugin {
  return {
    name: "confab-source-hash",
    apply: "build",
    generateBundle() {
      this.emitFile({ type: "asset", fileName: "source-hash.txt", source: sourceHash() + "\n" });
    },
  };
}

export default defineConfig({
  plugins: [preact(), sourceHashFile()],
  resolve: {
    // The client library (a link to ../clients/typescript, TypeScript
    // source) is read as if it were inside web/node_modules, so its imports
    // resolve to web's own dependencies, one copy of each, whether or not
    // the library has a node_modules of its own.
    preserveSymlinks: true,
    dedupe: ["@bufbuild/protobuf", "@connectrpc/connect", "@connectrpc/connect-web"],
    alias: { ws: fileURLToPath(new URL("./src/ws-browser.ts", import.meta.url)) },
  },
  server: {
    // `npm run dev` against a local `confab dev` (make run) on :8080.
    proxy: {
      "/v1": { target: "http://127.0.0.1:8080", ws: true },
      "/confab.v1.Chat": { target: "http://127.0.0.1:8080" },
    },
  },
  build: { target: "es2022", sourcemap: true },
});
