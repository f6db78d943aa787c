//! Every `CONFAB_*` environment variable, declared once in one table
//! (`services/core/vars.tsv`: its name, its default and what it means).
//! Services read configuration through these names (with
//! [`crate::config`]); `docs/operations.md` lists the same variables, and a
//! test fails when the two disagree.

/// One configuration variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The environment variable.
    pub name: &'static str,
    /// Its value when unset, as the operations guide states it.
    pub default: &'static str,
    /// Which processes read it and what it sets.
    pub meaning: &'static str,
}

// The constants (`LISTEN`, `HISTORY_ADDRS`, …) and `ALL`, from `vars.tsv`.
include!(concat!(env!("OUT_DIR"), "/vars.rs"));

/// The variable in `name`'s table row, if any.
pub fn get(name: &str) -> Option<&'static Var> {
    ALL.iter().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The variables named in `docs/operations.md`, with the lines that
    /// name them.
    fn documented() -> Vec<(String, String)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md");
        let text = std::fs::read_to_string(path).expect("docs/operations.md");
        let mut out = Vec::new();
        for line in text.lines() {
            let mut rest = line;
            while let Some(i) = rest.find("`CONFAB_") {
                let name: String = rest[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[i + 1..];
                // `CONFAB_RATE_*` names a family, and `CONFAB_STACK_*` are
                // settings of `deploy/local/stack.sh`, not of a service.
                if name.ends_with('_') || name.starts_with("CONFAB_STACK_") {
                    continue;
                }
                out.push((name, line.to_string()));
            }
        }
        out
    }

    #[test]
    fn the_operations_guide_and_the_table_name_the_same_variables() {
        let docs = documented();
        let named: BTreeSet<&str> = docs.iter().map(|(n, _)| n.as_str()).collect();
        let table: BTreeSet<&str> = ALL.iter().map(|v| v.name).collect();
        let undocumented: Vec<_> = table.difference(&named).collect();
        let unknown: Vec<_> = named.difference(&table).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "in the table but not in docs/operations.md: {undocumented:?}; \
             in docs/operations.md but not in the table: {unknown:?}"
        );
    }

    #[test]
    fn every_default_in_the_table_is_the_guides() {
        let docs = documented();
        for var in ALL {
            let rows: Vec<&String> = docs
                .iter()
                .filter(|(n, line)| n == var.name && line.starts_with('|'))
                .map(|(_, line)| line)
                .collect();
            assert!(
                !rows.is_empty(),
                "{} has no row in docs/operations.md",
                var.name
            );
            assert!(
                rows.iter().any(|row| row.contains(var.default)),
                "{}: the table's default {:?} is in none of its rows in docs/operations.md",
                var.name,
                var.default
            );
        }
    }

    #[test]
    fn names_are_unique() {
        let names: BTreeSet<&str> = ALL.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), ALL.len());
        assert_eq!(get(HISTORY_ADDRS).map(|v| v.default), Some("required"));
    }
}
