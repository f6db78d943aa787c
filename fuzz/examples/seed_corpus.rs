//! Writes the seed corpora, `fuzz/corpus/<target>/<seed>`:
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seed_corpus`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in [
        ("client_frame", confab_fuzz::seeds::client_frame()),
        ("requests", confab_fuzz::seeds::requests()),
        ("token", confab_fuzz::seeds::token()),
        ("wire", confab_fuzz::seeds::wire()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
        println!("{}", dir.display());
    }
    Ok(())
}
