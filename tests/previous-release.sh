#!/usr/bin/env bash
# Builds the previous release's binaries for the upgrade tests
# (tests/tests/upgrade.rs), once: the commit named in tests/previous-release
# is taken out of this clone's history (git archive) and built with its own
# Cargo.lock into a target directory of its own, and its four binaries
# copied to ~/.cache/confab/previous/<commit>/. Prints that directory.
#
# Why a build and not a fixture: the upgrade tests run that release's
# binaries, as a user's previous deployment would, both to write the
# databases the new release must open and side by side with the new
# binaries in a rolling upgrade.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
commit=$(grep -v '^#' "$here/tests/previous-release" | head -n 1 | tr -d '[:space:]')
out="$HOME/.cache/confab/previous/$commit"
bins=(confab confab-gateway confab-router confab-history)
if [ -x "$out/${bins[-1]}" ] && [ -f "$out/.done" ]; then
  echo "$out"
  exit 0
fi
git -C "$here" cat-file -e "$commit^{commit}" 2>/dev/null || {
  echo "previous-release: commit $commit is not in this clone's history (a shallow clone?); fetch it: git fetch --unshallow" >&2
  exit 1
}
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git -C "$here" archive "$commit" | tar -x -C "$src"
# Its own target directory: the same crates at other paths would otherwise
# replace the current build's binaries. No debug info: half the disk.
export CARGO_TARGET_DIR="$HOME/.cache/confab-target-previous"
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0
echo "previous-release: building $commit (once; about 10 minutes)" >&2
cargo build --locked --manifest-path "$src/Cargo.toml" $(printf -- '-p %s ' "${bins[@]}") >&2
mkdir -p "$out"
for b in "${bins[@]}"; do cp "$CARGO_TARGET_DIR/debug/$b" "$out/"; done
touch "$out/.done"
echo "$out"
