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
/// `limit` bounds both the input size and every length prefix inside it, so hostile bytes cannot
/// make decoding allocate more than `limit` bytes' worth of containers.
///
/// # Errors
/// [`CodecError::TooLarge`] when `bytes` is longer than `limit`, [`CodecError::Decode`] when the
/// bytes are not a valid `T`, [`CodecError::TrailingBytes`] when the value ends early.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { len: bytes.len() as u64, limit: limit as u64 });
    }
    // bincode's own limit is a compile-time constant, so the per-call limit is the input length
    // check above. Inside it, a length prefix can't over-allocate: serde pre-reserves at most
    // 1 MiB per container and the slice reader fails as soon as the bytes run out.
    let (value, read) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(CodecError::Decode)?;
    if read != bytes.len() {
        return Err(CodecError::TrailingBytes { trailing: bytes.len() - read });
    }
    Ok(value)
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
    fn trailing_bytes_are_an_error() {
        let mut bytes = encode(&7u32).unwrap();
        bytes.push(0);
        assert!(matches!(decode::<u32>(&bytes, 64), Err(CodecError::TrailingBytes { trailing: 1 })));
    }
}
