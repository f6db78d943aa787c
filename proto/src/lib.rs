//! Confab's protocol: the public `confab.v1` API, the internal records that
//! travel between services, and the descriptor set served by reflection.
#![allow(clippy::all, missing_docs)]

pub use prost;
pub use prost_types;
pub use tonic;

/// Prost's codec with small first buffers. tonic's default gives every
/// call an 8 KiB encode buffer and an 8 KiB decode buffer up front, which is
/// most of what an idle `Connect` stream costs; these start at 512 bytes
/// and grow to whatever a message needs (measurements in docs/benchmarks-log.md).
pub mod codec {
    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// First size of a call's encode and decode buffers.
    pub const FIRST_BUFFER_BYTES: usize = 512;

    /// tonic's default: encoded messages are flushed once this much is
    /// buffered.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// [`ProstCodec`] with [`FIRST_BUFFER_BYTES`] buffers.
    #[derive(Debug, Clone)]
    pub struct LeanCodec<T, U>(std::marker::PhantomData<(T, U)>);

    impl<T, U> Default for LeanCodec<T, U> {
        fn default() -> Self {
            Self(std::marker::PhantomData)
        }
    }

    impl<T, U> Codec for LeanCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(
                FIRST_BUFFER_BYTES,
                YIELD_THRESHOLD,
            ))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(
                FIRST_BUFFER_BYTES,
                YIELD_THRESHOLD,
            ))
        }
    }
}

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
