//! Generates the gRPC code and the file descriptor set that reflection serves.
//!
//! Two passes over the same protos: the messages and the clients with
//! `LeanCodec`, then the servers alone with `RequestCodec` (see
//! `codec::RequestCodec`), so that a request that does not decode is the
//! caller's mistake on a server and an answer that does not decode stays a
//! server's fault on a client.

const PROTOS: &[&str] = &[
    "confab/v1/chat.proto",
    "confab/internal/v1/pipeline.proto",
    "confab/internal/v1/services.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // The public RPC `Connect` would collide with the generated `connect`
        // constructor; clients are built with `ChatClient::new(channel)`.
        .build_transport(false)
        .build_server(false)
        // Small first buffers per call (see `codec::LeanCodec`).
        .codec_path("crate::codec::LeanCodec")
        .file_descriptor_set_path(out.join("confab_descriptor.bin"))
        .compile_protos(PROTOS, &["."])?;
    let servers = out.join("servers");
    std::fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::codec::RequestCodec")
        // The messages are the first pass's.
        .extern_path(".confab.v1", "crate::v1")
        .extern_path(".confab.internal.v1", "crate::internal::v1")
        .out_dir(&servers)
        .compile_protos(PROTOS, &["."])?;
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
