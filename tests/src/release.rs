//! The previous release, for the upgrade tests: its commit is named in
//! `tests/previous-release`, and `tests/previous-release.sh` (which `make
//! test` runs) builds its binaries into `~/.cache/confab/previous/<commit>/`.

use std::path::PathBuf;

/// The commit of the previous release.
pub fn previous_commit() -> String {
    let file = crate::make_stack::repo_root().join("tests/previous-release");
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("{} names no commit", file.display()))
        .to_string()
}

/// The directory of the previous release's `confab`, `confab-gateway`,
/// `confab-router` and `confab-history`; panics, saying how to build them,
/// when they are missing.
pub fn previous_release() -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let dir = PathBuf::from(home)
        .join(".cache/confab/previous")
        .join(previous_commit());
    assert!(
        dir.join(".done").exists(),
        "the previous release's binaries are not built in {}: run tests/previous-release.sh (make test does)",
        dir.display()
    );
    dir
}
