//! The outbox file from the outside: write one, read one back as a restarting write-behind
//! does, and wrap any bytes in a frame whose checksums hold (fuzzing and damaged-file tests).

use std::path::Path;

use crate::WriteBatch;
use crate::WriteBehindError;
use crate::outbox::{OpenError, Outbox};

/// What [`replay_outbox`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutboxReplay {
    /// Batches read back intact.
    pub batches: u64,
    /// Rows in them.
    pub rows: u64,
    /// Frames cut out at open (damaged headers or payloads, torn tails).
    pub lost_frames: u64,
    /// Frames whose checksum held but whose payload did not decode into a batch.
    pub skipped: u64,
}

/// Opens `path` as a write-behind outbox (checking and repairing it, as a restart does) and
/// reads every pending frame back, at most `max_frame_bytes` per frame.
///
/// # Errors
/// [`WriteBehindError::Outbox`] when the file can't be read or repaired,
/// [`WriteBehindError::OutboxUnreadable`] for a frame of another format version or layout.
pub fn replay_outbox(path: &Path, max_frame_bytes: u64) -> Result<OutboxReplay, WriteBehindError> {
    let io = |source| WriteBehindError::Outbox { path: path.to_path_buf(), source };
    let (mut outbox, recovered) = Outbox::open(path, max_frame_bytes).map_err(|e| match e {
        OpenError::Io(source) => io(source),
        OpenError::Unreadable { offset, version, layout } => {
            WriteBehindError::OutboxUnreadable { path: path.to_path_buf(), offset, version, layout }
        }
    })?;
    let mut out = OutboxReplay { lost_frames: recovered.lost_frames, ..OutboxReplay::default() };
    while outbox.pending() > 0 {
        let group = outbox.read_group(64, 1 << 20).map_err(io)?;
        if group.frames == 0 {
            break;
        }
        out.batches += group.batches.len() as u64;
        out.rows += group.batches.iter().map(|b| b.len() as u64).sum::<u64>();
        out.skipped += group.skipped.len() as u64;
        outbox.consume(&group).map_err(io)?;
    }
    Ok(out)
}

/// The ids of the batches the outbox file at `path` holds, front to back: what a restart
/// would replay. Read from a copy (`<path>.peek`, removed afterwards), so the file is left
/// exactly as it was; no file is no batches.
///
/// # Errors
/// As [`replay_outbox`].
pub fn outbox_batch_ids(path: &Path, max_frame_bytes: u64) -> Result<Vec<crate::BatchId>, WriteBehindError> {
    let io = |source| WriteBehindError::Outbox { path: path.to_path_buf(), source };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".peek");
    let copy = path.with_file_name(name);
    match std::fs::copy(path, &copy) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    }
    let read = || {
        let (mut outbox, _) = Outbox::open(&copy, max_frame_bytes).map_err(|e| match e {
            OpenError::Io(source) => io(source),
            OpenError::Unreadable { offset, version, layout } => {
                WriteBehindError::OutboxUnreadable { path: path.to_path_buf(), offset, version, layout }
            }
        })?;
        let mut ids = Vec::new();
        while outbox.pending() > 0 {
            let group = outbox.read_group(64, 1 << 20).map_err(io)?;
            if group.frames == 0 {
                break;
            }
            ids.extend(group.batches.iter().map(|b| b.id));
            outbox.consume(&group).map_err(io)?;
        }
        Ok(ids)
    };
    let ids = read();
    let _ = std::fs::remove_file(&copy);
    ids
}

/// Writes `batches` to `path` as outbox frames (appending when the file exists).
///
/// # Errors
/// As [`replay_outbox`], plus [`WriteBehindError::Outbox`] when a batch does not fit
/// `max_frame_bytes`.
pub fn write_outbox(
    path: &Path,
    batches: &[WriteBatch],
    max_frame_bytes: u64,
) -> Result<(), WriteBehindError> {
    let io = |source| WriteBehindError::Outbox { path: path.to_path_buf(), source };
    let (mut outbox, _) = Outbox::open(path, max_frame_bytes).map_err(|e| match e {
        OpenError::Io(source) => io(source),
        OpenError::Unreadable { offset, version, layout } => {
            WriteBehindError::OutboxUnreadable { path: path.to_path_buf(), offset, version, layout }
        }
    })?;
    outbox.append(batches, u64::MAX).map_err(io)?;
    Ok(())
}

/// One current-version outbox frame around `payload`, whatever it holds, with a header that
/// says `rows` rows and checksums that hold: a fuzzer gets past the checksums to the batch
/// decoder.
#[must_use]
pub fn outbox_frame(payload: &[u8], rows: u64) -> Vec<u8> {
    let mut frame = crate::outbox::header_v2(payload, rows).to_vec();
    frame.extend_from_slice(payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchId, PositionRow};

    #[test]
    fn batches_written_are_read_back_and_garbage_in_a_good_frame_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let batch = WriteBatch {
            id: BatchId { run: 1, seq: 1 },
            positions: vec![PositionRow { npc_id: 3, tick: 1, x: 1.0, y: 2.0, z: 3.0 }],
            ..WriteBatch::default()
        };
        write_outbox(&path, &[batch.clone(), batch], 1 << 20).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(outbox_frame(&[0xFF; 40], 7));
        std::fs::write(&path, &bytes).unwrap();
        let ids = outbox_batch_ids(&path, 1 << 20).unwrap();
        assert_eq!(ids, vec![BatchId { run: 1, seq: 1 }; 2]);
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "peeking leaves the file as it was");
        assert_eq!(outbox_batch_ids(&dir.path().join("none"), 1 << 20).unwrap(), vec![]);
        let got = replay_outbox(&path, 1 << 20).unwrap();
        assert_eq!(got, OutboxReplay { batches: 2, rows: 2, lost_frames: 0, skipped: 1 });
    }

    #[test]
    fn a_frame_whose_strings_claim_more_than_the_frame_is_skipped() {
        // Found by the outbox fuzzer: a payload whose record string claims a length near 2⁶³
        // made bincode panic (capacity overflow) before the codec capped string lengths.
        const PAYLOAD: [u8; 37] = [
            0x54, 0x54, 0x00, 0x00, 0x00, 0x00, 0x54, 0x52, 0x01, 0x00, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x81, 0x54, 0x00, 0x00, 0x81, 0x00, 0x54, 0x00, 0x00, 0x00, 0x00, 0x81, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00, 0x81,
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        std::fs::write(&path, outbox_frame(&PAYLOAD, 1)).unwrap();
        let got = replay_outbox(&path, 1 << 20).unwrap();
        assert_eq!((got.batches, got.skipped), (0, 1));
    }
}
