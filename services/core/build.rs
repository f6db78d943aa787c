//! Generates `vars.rs`'s constants and its `ALL` table from `vars.tsv`,
//! the one table of Confab's `CONFAB_*` variables.

use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=vars.tsv");
    let table = std::fs::read_to_string("vars.tsv").expect("services/core/vars.tsv");
    let (mut consts, mut all) = (String::new(), String::new());
    for (n, line) in table.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        let [id, name, default, meaning] = cells[..] else {
            panic!("vars.tsv line {}: expected 4 tab-separated cells", n + 1);
        };
        assert!(
            name.starts_with("CONFAB_"),
            "vars.tsv line {}: {name}",
            n + 1
        );
        let _ = writeln!(consts, "/// `{name}`: {meaning} (default: {default}).");
        let _ = writeln!(consts, "pub const {id}: &str = {name:?};");
        let _ = writeln!(
            all,
            "    Var {{ name: {name:?}, default: {default:?}, meaning: {meaning:?} }},"
        );
    }
    let out = format!("{consts}\n/// Every variable, in the order of `vars.tsv`.\npub const ALL: &[Var] = &[\n{all}];\n");
    let path = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("vars.rs");
    std::fs::write(path, out).expect("write vars.rs");
}
