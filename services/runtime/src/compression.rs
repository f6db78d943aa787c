//! Compressed calls: every Confab server (public, internal, health and
//! reflection) takes requests compressed with gzip, deflate or zstd, as
//! grpc-go, grpc-java and mobile clients are often set up to send them, and
//! answers compressed in the first of those the client accepts (its
//! `grpc-accept-encoding`), when the answer is large enough for it to pay
//! off ([`answer`]). Decompressing is bounded by the largest decoded
//! message, like any request (`confab_layers::decoding`).

use tonic::codec::{CompressionEncoding, SingleMessageCompressionOverride};

/// Every encoding a server takes and answers in.
pub const ENCODINGS: [CompressionEncoding; 3] = [
    CompressionEncoding::Gzip,
    CompressionEncoding::Zstd,
    CompressionEncoding::Deflate,
];

/// Answers smaller than this many encoded bytes go uncompressed whatever
/// the client accepts: an ack, a conversation or a short page is a few
/// hundred bytes, which compression barely shrinks (gzip adds 18 bytes of
/// its own) for the CPU of a compressor on both sides
/// (docs/benchmarks.md, "Compression").
pub const COMPRESS_FROM_BYTES: usize = 1024;

/// Takes requests in, and answers in, every one of [`ENCODINGS`]: for a
/// generated tonic server (or a `tonic::server::Grpc`), which have no trait
/// in common for it.
#[macro_export]
macro_rules! compressed {
    ($server:expr) => {{
        let mut server = $server;
        for encoding in $crate::compression::ENCODINGS {
            server = server.accept_compressed(encoding).send_compressed(encoding);
        }
        server
    }};
}

/// `message` as a unary answer, left uncompressed when it is under
/// [`COMPRESS_FROM_BYTES`].
pub fn answer<T: prost::Message>(message: T) -> tonic::Response<T> {
    let len = message.encoded_len();
    answer_of_len(message, len)
}

/// [`answer`] for an answer already encoded (`len` bytes).
pub fn answer_of_len<T>(message: T, len: usize) -> tonic::Response<T> {
    let mut response = tonic::Response::new(message);
    if len < COMPRESS_FROM_BYTES {
        uncompressed(&mut response);
    }
    response
}

/// Leaves `response` (every message of it, for a stream) uncompressed.
pub fn uncompressed<T>(response: &mut tonic::Response<T>) {
    response
        .extensions_mut()
        .insert(SingleMessageCompressionOverride::Disable);
}
