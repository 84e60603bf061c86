//! Frames: a fixed header (magic, version, length, checksum) in front of a payload.
//!
//! Layout, all integers little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic, chosen by the caller (for example `b"TRRMSNAP"`) |
//! | 8..12 | format version |
//! | 12..16 | reserved, zero |
//! | 16..24 | payload length in bytes |
//! | 24..32 | xxh3-64 of the payload |

use std::io::{Read, Write};

use crate::FrameError;

/// Size of the frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 32;

/// The decoded header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Identifies the kind of frame.
    pub magic: [u8; 8],
    /// Format version of the payload.
    pub version: u32,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// xxh3-64 of the payload.
    pub checksum: u64,
}

impl FrameHeader {
    fn to_bytes(self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..8].copy_from_slice(&self.magic);
        out[8..12].copy_from_slice(&self.version.to_le_bytes());
        out[16..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out[24..32].copy_from_slice(&self.checksum.to_le_bytes());
        out
    }

    fn from_bytes(b: &[u8; FRAME_HEADER_LEN]) -> Self {
        let word = |r: std::ops::Range<usize>| {
            let mut w = [0u8; 8];
            w[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(w)
        };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        Self {
            magic,
            version: u32::try_from(word(8..12)).expect("four bytes fit in a u32"),
            payload_len: word(16..24),
            checksum: word(24..32),
        }
    }
}

/// The checksum used by frames (xxh3-64).
#[must_use]
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// Writes a header and `payload` to `w`; returns the bytes written.
///
/// # Errors
/// [`FrameError::Io`] when the writer fails.
pub fn write_frame(
    w: &mut impl Write,
    magic: [u8; 8],
    version: u32,
    payload: &[u8],
) -> Result<u64, FrameError> {
    let header =
        FrameHeader { magic, version, payload_len: payload.len() as u64, checksum: checksum(payload) };
    w.write_all(&header.to_bytes())?;
    w.write_all(payload)?;
    Ok((FRAME_HEADER_LEN + payload.len()) as u64)
}

/// Reads and checks a header: magic and version, and the length against `limit`.
///
/// Returns `Ok(None)` at a clean end of input (no byte at all), so a reader of a stream of frames
/// can tell "done" from "cut in the middle".
///
/// # Errors
/// [`FrameError::Truncated`] for a partial header, [`FrameError::BadMagic`],
/// [`FrameError::UnsupportedVersion`] when `accept(version)` is false, [`FrameError::TooLarge`].
pub fn read_frame_header(
    r: &mut impl Read,
    magic: [u8; 8],
    accept: impl Fn(u32) -> bool,
    supported: &str,
    limit: u64,
) -> Result<Option<FrameHeader>, FrameError> {
    let mut buf = [0u8; FRAME_HEADER_LEN];
    let got = read_full(r, &mut buf)?;
    if got == 0 {
        return Ok(None);
    }
    if got < FRAME_HEADER_LEN {
        return Err(FrameError::Truncated { expected: FRAME_HEADER_LEN as u64, found: got as u64 });
    }
    let header = FrameHeader::from_bytes(&buf);
    if header.magic != magic {
        return Err(FrameError::BadMagic { expected: magic, found: header.magic });
    }
    if !accept(header.version) {
        return Err(FrameError::UnsupportedVersion {
            found: header.version,
            supported: supported.to_string(),
        });
    }
    if header.payload_len > limit {
        return Err(FrameError::TooLarge { len: header.payload_len, limit });
    }
    Ok(Some(header))
}

/// Reads one whole frame: header, then the payload, whose checksum is verified.
///
/// # Errors
/// Everything [`read_frame_header`] returns, plus [`FrameError::Truncated`] for a short payload
/// and [`FrameError::ChecksumMismatch`] for a damaged one.
pub fn read_frame(
    r: &mut impl Read,
    magic: [u8; 8],
    accept: impl Fn(u32) -> bool,
    supported: &str,
    limit: u64,
) -> Result<Option<(FrameHeader, Vec<u8>)>, FrameError> {
    let Some(header) = read_frame_header(r, magic, accept, supported, limit)? else {
        return Ok(None);
    };
    let len = usize::try_from(header.payload_len)
        .map_err(|_| FrameError::TooLarge { len: header.payload_len, limit })?;
    let mut payload = Vec::new();
    // `take` + `read_to_end` grows the buffer as bytes arrive, so a lying header can't make us
    // allocate its claimed length up front.
    r.take(header.payload_len).read_to_end(&mut payload)?;
    if payload.len() < len {
        return Err(FrameError::Truncated { expected: header.payload_len, found: payload.len() as u64 });
    }
    let actual = checksum(&payload);
    if actual != header.checksum {
        return Err(FrameError::ChecksumMismatch { expected: header.checksum, actual });
    }
    Ok(Some((header, payload)))
}

/// Like `read_exact`, but reports how many bytes it got before the end of input.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: [u8; 8] = *b"TESTFRAM";

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, MAGIC, 3, payload).unwrap();
        out
    }

    fn read(bytes: &[u8]) -> Result<Option<(FrameHeader, Vec<u8>)>, FrameError> {
        read_frame(&mut &bytes[..], MAGIC, |v| v == 3, "3", 1 << 20)
    }

    #[test]
    fn round_trip() {
        let (header, payload) = read(&frame(b"hello")).unwrap().unwrap();
        assert_eq!(payload, b"hello");
        assert_eq!(header.version, 3);
    }

    #[test]
    fn empty_input_is_a_clean_end() {
        assert!(read(&[]).unwrap().is_none());
    }

    #[test]
    fn every_truncation_is_detected() {
        let full = frame(b"some payload bytes");
        for cut in 1..full.len() {
            assert!(matches!(read(&full[..cut]), Err(FrameError::Truncated { .. })), "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_payload_bit_is_detected() {
        let full = frame(b"payload");
        for i in FRAME_HEADER_LEN..full.len() {
            let mut bad = full.clone();
            bad[i] ^= 0x10;
            assert!(matches!(read(&bad), Err(FrameError::ChecksumMismatch { .. })));
        }
    }

    #[test]
    fn wrong_magic_version_and_size() {
        let mut bad = frame(b"x");
        bad[0] = b'X';
        assert!(matches!(read(&bad), Err(FrameError::BadMagic { .. })));
        let mut other = Vec::new();
        write_frame(&mut other, MAGIC, 9, b"x").unwrap();
        assert!(matches!(read(&other), Err(FrameError::UnsupportedVersion { found: 9, .. })));
        let big = frame(&[0u8; 64]);
        assert!(matches!(
            read_frame(&mut &big[..], MAGIC, |_| true, "any", 10),
            Err(FrameError::TooLarge { len: 64, limit: 10 })
        ));
    }
}
