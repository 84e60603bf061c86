//! LZ4 block compression with the uncompressed size in front, and a limit on the way back.

use crate::CodecError;

/// Compresses `bytes` (LZ4 block format, original size prepended).
#[must_use]
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    lz4_flex::compress_prepend_size(bytes)
}

/// Reverses [`compress`]; refuses output larger than `limit` before allocating it.
///
/// # Errors
/// [`CodecError::TooLarge`] when the stored size is over `limit`, [`CodecError::Decompress`] when the
/// bytes are not valid LZ4.
pub fn decompress(bytes: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let Some(size) = bytes.get(..4) else {
        return Err(CodecError::Decompress(lz4_flex::block::DecompressError::ExpectedAnotherByte));
    };
    let size = u32::from_le_bytes(size.try_into().expect("slice of four bytes")) as usize;
    if size > limit {
        return Err(CodecError::TooLarge { len: size as u64, limit: limit as u64 });
    }
    lz4_flex::decompress_size_prepended(bytes).map_err(CodecError::Decompress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limit() {
        let data = vec![7u8; 10_000];
        let packed = compress(&data);
        assert!(packed.len() < data.len() / 10);
        assert_eq!(decompress(&packed, 10_000).unwrap(), data);
        assert!(matches!(decompress(&packed, 9_999), Err(CodecError::TooLarge { .. })));
        assert!(decompress(&packed[..packed.len() / 2], 10_000).is_err());
    }
}
