//! Errors of the codec: one for values, one for frames.

/// A value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded (for example a map with non-string keys where that is needed).
    #[error("could not encode value")]
    Encode(#[source] bincode::error::EncodeError),
    /// The bytes are not a valid encoding of the expected type, or they claim more than the limit.
    #[error("could not decode value")]
    Decode(#[source] bincode::error::DecodeError),
    /// The input is larger than the caller's limit.
    #[error("{len} bytes is over the decode limit of {limit} bytes")]
    TooLarge {
        /// The size of the input (or what it claims).
        len: u64,
        /// The caller's limit.
        limit: u64,
    },
    /// Compressed bytes are damaged or not LZ4.
    #[error("could not decompress payload")]
    Decompress(#[source] lz4_flex::block::DecompressError),
    /// Decoding stopped before the end of the input: the bytes were not produced by `encode`.
    #[error("{trailing} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left over.
        trailing: usize,
    },
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The reader or writer failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// The input ended before the header or payload did.
    #[error("truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the header says there should be.
        expected: u64,
        /// Bytes that were there.
        found: u64,
    },
    /// The first bytes are not this kind of frame.
    #[error("bad magic: expected {expected:?}, found {found:?}")]
    BadMagic {
        /// The magic the caller expects.
        expected: [u8; 8],
        /// What the input starts with.
        found: [u8; 8],
    },
    /// The frame was written by a format version this build does not read.
    #[error("unsupported format version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
        /// The version(s) this build reads, for the message.
        supported: String,
    },
    /// The payload does not match its checksum: the bytes were damaged.
    #[error("checksum mismatch: header says {expected:#018x}, payload hashes to {actual:#018x}")]
    ChecksumMismatch {
        /// Checksum stored in the header.
        expected: u64,
        /// Checksum of the payload as read.
        actual: u64,
    },
    /// The header claims a payload larger than the caller's limit.
    #[error("payload of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// Payload length from the header.
        len: u64,
        /// The caller's limit.
        limit: u64,
    },
}
