// Generates src/gen from ../../proto with the system protoc and the
// protoc-gen-es plugin from node_modules. `node scripts/generate.mjs <dir>`
// writes into <dir> instead (the staleness test regenerates into a temp dir).
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const protoRoot = resolve(root, "../../proto");
const out = resolve(process.argv[2] ?? join(root, "src/gen"));
const protoc = process.env.PROTOC ?? "protoc";
const plugin = join(root, "node_modules/.bin/protoc-gen-es");

// protoc's well-known types (google/protobuf/timestamp.proto): the apt
// package puts them in /usr/include; PROTOC_INCLUDE overrides.
const wktCandidates = [process.env.PROTOC_INCLUDE, "/usr/include", "/usr/local/include"].filter(Boolean);
const wkt = wktCandidates.find((d) => existsSync(join(d, "google/protobuf/timestamp.proto")));
if (!wkt) {
  console.error(`google/protobuf/timestamp.proto not found in ${wktCandidates.join(", ")}; set PROTOC_INCLUDE`);
  process.exit(1);
}

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(
  protoc,
  [
    `--plugin=protoc-gen-es=${plugin}`,
    `--es_out=${out}`,
    "--es_opt=target=ts,import_extension=none",
    `-I${protoRoot}`,
    `-I${wkt}`,
    "confab/v1/chat.proto",
  ],
  { stdio: "inherit" },
);
