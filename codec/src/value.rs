//! Values: bincode 2 in serde mode, with a hard limit on what decoding may allocate.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CodecError;

/// The bincode configuration every Terrarium byte stream uses. Variable-length integers keep
/// rows and events small; the decode limit is added per call.
fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` into a new buffer.
///
/// # Errors
/// [`CodecError::Encode`] when serde refuses the value.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(CodecError::Encode)
}

/// Encodes `value` at the end of `out` and returns how many bytes were appended.
///
/// # Errors
/// [`CodecError::Encode`] when serde refuses the value.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    let before = out.len();
    bincode::serde::encode_into_std_write(value, out, config()).map_err(CodecError::Encode)?;
    Ok(out.len() - before)
}

/// Decodes one value that fills `bytes` exactly.
///
/// `limit` bounds the input size. Inside it, no length prefix can make decoding allocate much
/// more than the input: containers are pre-reserved by serde's cautious hint (at most 1 MiB each,
/// then they grow with what is really read), and strings and byte vectors, which bincode
/// allocates whole from their length prefix before reading them, may together claim at most the
/// step above the input's length (see [`decode`]'s body).
///
/// # Errors
/// [`CodecError::TooLarge`] when `bytes` is longer than `limit`, [`CodecError::Decode`] when the
/// bytes are not a valid `T` (a string or byte vector longer than the input included),
/// [`CodecError::TrailingBytes`] when the value ends early.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { len: bytes.len() as u64, limit: limit as u64 });
    }
    // bincode counts the bytes strings and byte vectors claim (they are allocated whole from
    // their length prefix, then filled) against a limit that is a compile-time constant: the
    // smallest of a few steps at or above 16 times the input's length is used (bincode also
    // counts claims that are not the input's own bytes, and a real snapshot of a mining world
    // went over a limit of 1× its length), so what they allocate is at most 256 times the
    // input, and a prefix near `usize::MAX` is an error, not a panic.
    let n = bytes.len().saturating_mul(16);
    let (value, read) = if n <= 1 << 12 {
        decode_within::<T, { 1 << 12 }>(bytes)
    } else if n <= 1 << 16 {
        decode_within::<T, { 1 << 16 }>(bytes)
    } else if n <= 1 << 20 {
        decode_within::<T, { 1 << 20 }>(bytes)
    } else if n <= 1 << 24 {
        decode_within::<T, { 1 << 24 }>(bytes)
    } else if n <= 1 << 28 {
        decode_within::<T, { 1 << 28 }>(bytes)
    } else if n <= 1 << 32 {
        decode_within::<T, { 1 << 32 }>(bytes)
    } else {
        decode_within::<T, { 1 << 36 }>(bytes)
    }
    .map_err(CodecError::Decode)?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes { trailing: bytes.len() - read });
    }
    Ok(value)
}

fn decode_within<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    bincode::serde::decode_from_slice::<T, _>(bytes, config().with_limit::<LIMIT>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let v = (1u64, vec![1.5f32, -2.0], "x".to_string());
        let bytes = encode(&v).unwrap();
        let back: (u64, Vec<f32>, String) = decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn over_limit_is_refused() {
        let bytes = encode(&vec![0u8; 100]).unwrap();
        assert!(matches!(decode::<Vec<u8>>(&bytes, 10), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A varint length of u64::MAX followed by nothing: must fail, not try to reserve.
        let bytes = [251u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(decode::<Vec<u64>>(&bytes, 1 << 20), Err(CodecError::Decode(_))));
    }

    #[test]
    fn hostile_string_and_byte_lengths_are_errors_not_allocations() {
        // bincode allocates a string or byte vector whole from its length prefix: 2⁴⁰ bytes
        // (would abort on allocation) and 2⁶³ (a capacity-overflow panic) behind 10 bytes.
        for len in [1u64 << 40, 1 << 63, 5000] {
            let mut bytes = vec![253u8];
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.push(b'x');
            let err = decode::<String>(&bytes, 1 << 20).unwrap_err();
            assert!(matches!(err, CodecError::Decode(_)), "{len}: {err}");
            let err = decode::<(u8, Vec<u8>)>(&[[7u8].as_slice(), &bytes].concat(), 1 << 20).unwrap_err();
            assert!(matches!(err, CodecError::Decode(_)), "{len}: {err}");
        }
        // Strings as long as the input still decode, at every step of the limit.
        for n in [10, 5000, 70_000, 2_000_000] {
            let s = "y".repeat(n);
            assert_eq!(decode::<String>(&encode(&s).unwrap(), usize::MAX).unwrap(), s);
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u32>(&bytes, 64), Err(CodecError::TrailingBytes { trailing: 1 })));
    }
}
