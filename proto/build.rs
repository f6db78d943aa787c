//! Generates the gRPC code and the file descriptor set that reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The public RPC `Connect` would collide with the generated `connect`
        // constructor; clients are built with `ChatClient::new(channel)`.
        .build_transport(false)
        // Small first buffers per call (see `codec::LeanCodec`).
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out.join("confab_descriptor.bin"))
        .compile_protos(
            &[
                "confab/v1/chat.proto",
                "confab/internal/v1/pipeline.proto",
                "confab/internal/v1/services.proto",
            ],
            &["."],
        )?;
    // The gateway faces clients: its reflection lists the public API only.
    let all = std::fs::read(out.join("confab_descriptor.bin"))?;
    let mut set = <prost_types::FileDescriptorSet as prost::Message>::decode(all.as_slice())?;
    set.file
        .retain(|f| !f.name().starts_with("confab/internal/"));
    std::fs::write(
        out.join("confab_public_descriptor.bin"),
        prost::Message::encode_to_vec(&set),
    )?;
    println!("cargo:rerun-if-changed=confab");
    Ok(())
}
