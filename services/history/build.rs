// `sqlx::migrate!` embeds the migrations when this crate compiles; on stable
// Rust, cargo does not know a migration was added or changed unless told.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
