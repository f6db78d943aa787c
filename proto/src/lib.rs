//! Confab's protocol: the public `confab.v1` API, the internal records that
//! travel between services, and the descriptor set served by reflection.
#![allow(clippy::all, missing_docs)]

pub use prost;
pub use prost_types;
pub use tonic;

pub mod websocket;

/// Prost's codec with small first buffers. tonic's default gives every
/// call an 8 KiB encode buffer and an 8 KiB decode buffer up front, which is
/// most of what an idle `Connect` stream costs; these start at 512 bytes
/// and grow to whatever a message needs (measurements in docs/benchmarks-log.md).
pub mod codec {
    use prost::bytes::{Buf, BufMut, Bytes};
    use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::Status;
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// First size of a call's encode and decode buffers.
    pub const FIRST_BUFFER_BYTES: usize = 512;

    /// tonic's default: encoded messages are flushed once this much is
    /// buffered.
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// Buffers of [`FIRST_BUFFER_BYTES`] first, flushed as tonic's are.
    fn lean() -> BufferSettings {
        BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD)
    }

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
            ProstCodec::<T, U>::raw_encoder(lean())
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(lean())
        }
    }

    /// How a server's answer to a request that does not decode begins
    /// (INVALID_ARGUMENT; the rest is prost's account of what was wrong,
    /// which names the message and the field).
    pub const UNDECODABLE: &str = "the request does not decode";

    /// INVALID_ARGUMENT for a request that does not decode: the caller
    /// sent it. tonic's own codec says INTERNAL, which blames the server
    /// and counts as a server error.
    pub fn undecodable(error: prost::DecodeError) -> Status {
        Status::invalid_argument(format!(
            "{UNDECODABLE}: {error}; send the method's request message, encoded as protobuf"
        ))
    }

    /// Decodes a server's requests as prost's decoder does, with a
    /// decoding failure answered by [`undecodable`].
    #[derive(Debug)]
    pub struct RequestDecoder<U>(std::marker::PhantomData<U>);

    impl<U> Default for RequestDecoder<U> {
        fn default() -> Self {
            Self(std::marker::PhantomData)
        }
    }

    impl<U: prost::Message + Default> Decoder for RequestDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            U::decode(buf).map(Some).map_err(undecodable)
        }

        fn buffer_settings(&self) -> BufferSettings {
            lean()
        }
    }

    /// A server's codec ([`LeanCodec`]'s buffers): sends `T`, receives
    /// `U` through a [`RequestDecoder`]. The generated servers use it
    /// (build.rs); the generated clients use [`LeanCodec`].
    #[derive(Debug, Clone)]
    pub struct RequestCodec<T, U>(std::marker::PhantomData<(T, U)>);

    impl<T, U> Default for RequestCodec<T, U> {
        fn default() -> Self {
            Self(std::marker::PhantomData)
        }
    }

    impl<T, U> Codec for RequestCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = RequestDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(lean())
        }

        fn decoder(&mut self) -> Self::Decoder {
            RequestDecoder::default()
        }
    }

    /// A message that passes through as the bytes it was encoded to: a
    /// hop that only forwards an answer neither decodes nor encodes it
    /// again (the gateway's `Sync`, docs/architecture.md).
    #[derive(Debug, Clone, Default)]
    pub struct RawEncoder;

    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = Status;

        fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            buf.put(item);
            Ok(())
        }

        fn buffer_settings(&self) -> BufferSettings {
            lean()
        }
    }

    /// The bytes of a message as they came (see [`RawEncoder`]).
    #[derive(Debug, Clone, Default)]
    pub struct RawDecoder;

    impl Decoder for RawDecoder {
        type Item = Bytes;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            let len = buf.remaining();
            Ok(Some(buf.copy_to_bytes(len)))
        }

        fn buffer_settings(&self) -> BufferSettings {
            lean()
        }
    }

    /// A client's codec for a call whose answer it passes on encoded:
    /// sends `T`, receives the answer's bytes.
    #[derive(Debug, Clone)]
    pub struct RawAnswerClient<T>(std::marker::PhantomData<T>);

    impl<T> Default for RawAnswerClient<T> {
        fn default() -> Self {
            Self(std::marker::PhantomData)
        }
    }

    impl<T: prost::Message + Send + 'static> Codec for RawAnswerClient<T> {
        type Encode = T;
        type Decode = Bytes;
        type Encoder = ProstEncoder<T>;
        type Decoder = RawDecoder;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, ()>::raw_encoder(lean())
        }

        fn decoder(&mut self) -> Self::Decoder {
            RawDecoder
        }
    }

    /// A server's codec for a call it answers with bytes encoded elsewhere:
    /// receives `U`, sends the bytes.
    #[derive(Debug, Clone)]
    pub struct RawAnswerServer<U>(std::marker::PhantomData<U>);

    impl<U> Default for RawAnswerServer<U> {
        fn default() -> Self {
            Self(std::marker::PhantomData)
        }
    }

    impl<U: prost::Message + Default + Send + 'static> Codec for RawAnswerServer<U> {
        type Encode = Bytes;
        type Decode = U;
        type Encoder = RawEncoder;
        type Decoder = RequestDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            RawEncoder
        }

        fn decoder(&mut self) -> Self::Decoder {
            RequestDecoder::default()
        }
    }
}

/// The top level of an encoded `confab.v1.SyncResponse` with its
/// conversations left encoded: enough to tell whether an answer passed on
/// as bytes reports a change. The tags are `SyncResponse`'s (a test in
/// the gateway decodes one each way).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SyncShape {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub conversations: Vec<prost::bytes::Bytes>,
    #[prost(string, repeated, tag = "2")]
    pub removed_conversation_ids: Vec<String>,
}

pub mod v1 {
    tonic::include_proto!("confab.v1");
    include!(concat!(env!("OUT_DIR"), "/servers/confab.v1.rs"));
}

pub mod internal {
    pub mod v1 {
        tonic::include_proto!("confab.internal.v1");
        include!(concat!(env!("OUT_DIR"), "/servers/confab.internal.v1.rs"));
    }
}

/// Encoded `FileDescriptorSet` of the public API (`confab.v1`), for the
/// gateway's reflection.
pub const PUBLIC_FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("confab_public_descriptor");

/// Encoded `FileDescriptorSet` of every Confab proto, for the internal
/// services' reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("confab_descriptor");
