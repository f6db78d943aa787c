#!/usr/bin/env bash
# Builds the fuzz targets (cargo-fuzz, nightly) and runs each for SECONDS:
# `make fuzz` (FUZZ_SECONDS, default 300 each) and the bounded run at the end
# of `make test` (FUZZ_TEST_SECONDS, default 10 each; 0 skips it).
#
#   fuzz/run.sh SECONDS [TARGET...]
#
# Builds go to ~/.cache/confab-fuzz-target and what the runs find to
# ~/.cache/confab-fuzz-corpus/<target>, both outside the clone so that every
# run (and CI, which caches ~/.cache) starts from the last; the committed
# seeds in fuzz/corpus/<target> are only read. A target that crashes, hangs
# (an input taking over 10 s) or runs out of memory fails the run: its report
# is printed, and the input that did it is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_frame requests token wire ws_frame)
target_dir=${CONFAB_FUZZ_TARGET_DIR:-$HOME/.cache/confab-fuzz-target}
corpus=${CONFAB_FUZZ_CORPUS:-$HOME/.cache/confab-fuzz-corpus}

if [ "$seconds" = 0 ]; then
  echo "fuzz: skipped (0 seconds per target)"
  exit 0
fi

export CARGO_TARGET_DIR=$target_dir
opts=(--fuzz-dir fuzz --target-dir "$target_dir")
cargo +nightly fuzz build "${opts[@]}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$corpus/$t"
  echo "fuzz: $t for $seconds s"
  if cargo +nightly fuzz run "${opts[@]}" "$t" "$corpus/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 >"$log" 2>&1; then
    # libFuzzer's last status line: runs, coverage, corpus size, speed.
    echo "fuzz: $t ok: $(grep -E '^#[0-9]+' "$log" | tail -n 1)"
  else
    # Everything but the progress lines: the panic or sanitizer report,
    # "Failing input: fuzz/artifacts/<target>/..." and how to reproduce it.
    grep -vE '^#[0-9]+[[:space:]]|^[[:space:]]+NEW_FUNC' "$log" >&2 || true
    echo "fuzz: $t FAILED: the input is in fuzz/artifacts/$t/ (\"Failing input\" above);" \
      "reproduce with: cargo +nightly fuzz run ${opts[*]} $t <that file>" >&2
    exit 1
  fi
done
