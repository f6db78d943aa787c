//! What the README states outside the walkthrough, checked against the
//! real thing.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_shows_what_make_help_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let marker = "`make help`:\n\n```text\n";
    let start = readme
        .find(marker)
        .expect("README shows `make help` output")
        + marker.len();
    let end = start + readme[start..].find("```").expect("closed fence");
    let out = Command::new("make")
        .args(["--no-print-directory", "help"])
        .current_dir(&root)
        .env_remove("MAKEFLAGS")
        .env_remove("MAKELEVEL")
        .output()
        .expect("run make help");
    assert!(out.status.success(), "make help failed");
    assert_eq!(
        &readme[start..end],
        String::from_utf8_lossy(&out.stdout),
        "README.md's `make help` block differs from what `make help` prints"
    );
}
