//! Confab's protocol: the public `confab.v1` API, the internal records that
//! travel between services, and the descriptor set served by reflection.
#![allow(clippy::all, missing_docs)]

pub use prost;
pub use prost_types;
pub use tonic;

pub mod v1 {
    tonic::include_proto!("confab.v1");
}

pub mod internal {
    pub mod v1 {
        tonic::include_proto!("confab.internal.v1");
    }
}

/// Encoded `FileDescriptorSet` of the public API (`confab.v1`), for the
/// gateway's reflection.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("confab_public_descriptor");

/// Encoded `FileDescriptorSet` of every Confab proto, for the internal
/// services' reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("confab_descriptor");
