//! Generates the gRPC code and the file descriptor set that reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The public RPC `Connect` would collide with the generated `connect`
        // constructor; clients are built with `ChatClient::new(channel)`.
        .build_transport(false)
        .file_descriptor_set_path(out.join("confab_descriptor.bin"))
        .compile_protos(
            &["confab/v1/chat.proto", "confab/internal/v1/pipeline.proto"],
            &["."],
        )?;
    println!("cargo:rerun-if-changed=confab");
    Ok(())
}
