//! `Outbox`: the write-behind's spill file. An append-only sequence of checksummed frames, one
//! [`WriteBatch`] per frame, replayed front to back.
//!
//! Layout: frames of `terrarium_codec` (magic `TRRMOUTB`, version 1, xxh3 of the payload), each
//! payload a codec-encoded `WriteBatch`. Frames are appended in batch order; the file is
//! truncated once every frame has reached the store. A torn or damaged tail (a crash mid-append)
//! is cut off when the file is opened; the cut bytes are kept next to it (`<file>.corrupt`) and
//! counted, never dropped silently. Given-up batches go to `<file>.dead`, same format.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use terrarium_codec::{FRAME_HEADER_LEN, FrameError, checksum, read_frame_header, write_frame};

use crate::WriteBatch;

/// Magic of outbox frames.
pub(crate) const MAGIC: [u8; 8] = *b"TRRMOUTB";
/// Format version of outbox frames.
pub(crate) const VERSION: u32 = 1;

/// The spill file, opened for reading and appending.
#[derive(Debug)]
pub(crate) struct Outbox {
    path: PathBuf,
    file: File,
    /// Bytes of valid frames.
    len: u64,
    /// Offset of the first frame not yet in the store.
    read_pos: u64,
    /// Frames from `read_pos` to `len`.
    pending: u64,
    max_frame_bytes: u64,
    dead: Option<File>,
}

/// What opening an outbox found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Frames waiting to be replayed.
    pub frames: u64,
    /// Frames whose checksum did not match (skipped at replay, counted as dropped).
    pub damaged_frames: u64,
    /// Bytes cut off the end (a torn or unreadable tail), saved to `<file>.corrupt`.
    pub cut_bytes: u64,
}

/// Frames read back for one store call.
#[derive(Debug, Default)]
pub(crate) struct Group {
    /// The batches, in file order.
    pub batches: Vec<WriteBatch>,
    /// Offset just past the last frame read.
    pub end: u64,
    /// Frames consumed (batches plus damaged frames skipped).
    pub frames: u64,
    /// Damaged or undecodable frames skipped, with their size in bytes.
    pub skipped: Vec<u64>,
}

impl Outbox {
    /// Opens (or creates) the spill file and checks every frame in it.
    pub fn open(path: &Path, max_frame_bytes: u64) -> std::io::Result<(Self, Recovered)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut rec = Recovered::default();
        let total = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(1 << 20, &mut file);
        let mut pos = 0u64;
        loop {
            match scan_frame(&mut reader, max_frame_bytes) {
                Ok(None) => break,
                Ok(Some((size, intact))) => {
                    pos += size;
                    rec.frames += 1;
                    if !intact {
                        rec.damaged_frames += 1;
                    }
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), offset = pos, error = %e, "outbox tail unreadable; cutting it off");
                    break;
                }
            }
        }
        drop(reader);
        if pos < total {
            rec.cut_bytes = total - pos;
            let mut tail = Vec::new();
            file.seek(SeekFrom::Start(pos))?;
            file.read_to_end(&mut tail)?;
            let mut aside =
                OpenOptions::new().create(true).append(true).open(with_suffix(path, "corrupt"))?;
            aside.write_all(&tail)?;
            aside.sync_all()?;
            file.set_len(pos)?;
            file.sync_all()?;
        }
        let outbox = Self {
            path: path.to_path_buf(),
            file,
            len: pos,
            read_pos: 0,
            pending: rec.frames,
            max_frame_bytes,
            dead: None,
        };
        Ok((outbox, rec))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Frames not yet in the store.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Bytes in the file.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Appends `batches` as frames and syncs the file; returns the bytes appended. Nothing is
    /// appended when it would grow the file past `max_bytes` (an `StorageFull` error then).
    pub fn append(&mut self, batches: &[WriteBatch], max_bytes: u64) -> std::io::Result<u64> {
        let mut encoded = Vec::with_capacity(batches.len());
        let mut size = 0u64;
        for b in batches {
            let bytes = terrarium_codec::encode(b).map_err(std::io::Error::other)?;
            if bytes.len() as u64 > self.max_frame_bytes {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("batch {} encodes to {} bytes, over max_frame_bytes", b.id, bytes.len()),
                ));
            }
            size += (FRAME_HEADER_LEN + bytes.len()) as u64;
            encoded.push(bytes);
        }
        if self.len + size > max_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("outbox would grow to {} bytes, over max_outbox_bytes {max_bytes}", self.len + size),
            ));
        }
        self.file.seek(SeekFrom::Start(self.len))?;
        let mut w = BufWriter::with_capacity(1 << 20, &mut self.file);
        for bytes in &encoded {
            write_frame(&mut w, MAGIC, VERSION, bytes).map_err(frame_to_io)?;
        }
        w.flush()?;
        drop(w);
        if let Err(e) = self.file.sync_data() {
            // The frames may or may not be on disk: cut them off again so the file stays a
            // clean sequence, and let the caller keep the batches in memory.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += size;
        self.pending += batches.len() as u64;
        Ok(size)
    }

    /// Reads frames from the replay position: at least one batch when any is pending, then
    /// more while under `max_batches` and `max_rows`.
    pub fn read_group(&mut self, max_batches: usize, max_rows: usize) -> std::io::Result<Group> {
        let mut group = Group { end: self.read_pos, ..Group::default() };
        if self.pending == 0 {
            return Ok(group);
        }
        self.file.seek(SeekFrom::Start(self.read_pos))?;
        let mut reader = BufReader::with_capacity(1 << 20, &mut self.file);
        let mut rows = 0usize;
        while group.frames < self.pending && group.batches.len() < max_batches.max(1) {
            if !group.batches.is_empty() && rows >= max_rows {
                break;
            }
            let Some(header) = read_frame_header(
                &mut reader,
                MAGIC,
                |v| v == VERSION,
                &VERSION.to_string(),
                self.max_frame_bytes,
            )
            .map_err(frame_to_io)?
            else {
                break;
            };
            let size = FRAME_HEADER_LEN as u64 + header.payload_len;
            let mut payload = Vec::new();
            (&mut reader).take(header.payload_len).read_to_end(&mut payload)?;
            group.end += size;
            group.frames += 1;
            let decoded = (checksum(&payload) == header.checksum)
                .then(|| terrarium_codec::decode::<WriteBatch>(&payload, payload.len()).ok())
                .flatten();
            match decoded {
                Some(batch) => {
                    rows += batch.len();
                    group.batches.push(batch);
                }
                None => group.skipped.push(size),
            }
        }
        Ok(group)
    }

    /// Marks the frames of a group as stored; empties the file once nothing is pending.
    pub fn consume(&mut self, group: &Group) -> std::io::Result<()> {
        self.read_pos = group.end;
        self.pending = self.pending.saturating_sub(group.frames);
        if self.pending == 0 {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            self.read_pos = 0;
        }
        Ok(())
    }

    /// Keeps a batch the store refused for good in `<file>.dead`.
    pub fn dead_letter(&mut self, batch: &WriteBatch) -> std::io::Result<()> {
        if self.dead.is_none() {
            self.dead =
                Some(OpenOptions::new().create(true).append(true).open(with_suffix(&self.path, "dead"))?);
        }
        let file = self.dead.as_mut().expect("opened just above");
        let bytes = terrarium_codec::encode(batch).map_err(std::io::Error::other)?;
        let mut w = BufWriter::new(&mut *file);
        write_frame(&mut w, MAGIC, VERSION, &bytes).map_err(frame_to_io)?;
        w.flush()?;
        drop(w);
        file.sync_data()
    }
}

/// Reads one frame's header and payload; `(size, checksum ok)`, or `None` at a clean end.
fn scan_frame(r: &mut impl Read, limit: u64) -> Result<Option<(u64, bool)>, FrameError> {
    let Some(header) = read_frame_header(r, MAGIC, |v| v == VERSION, &VERSION.to_string(), limit)? else {
        return Ok(None);
    };
    let mut payload = Vec::new();
    r.take(header.payload_len).read_to_end(&mut payload)?;
    if (payload.len() as u64) < header.payload_len {
        return Err(FrameError::Truncated { expected: header.payload_len, found: payload.len() as u64 });
    }
    Ok(Some((FRAME_HEADER_LEN as u64 + header.payload_len, checksum(&payload) == header.checksum)))
}

fn frame_to_io(e: FrameError) -> std::io::Error {
    match e {
        FrameError::Io(io) => io,
        other => std::io::Error::new(std::io::ErrorKind::InvalidData, other),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BatchId, PositionRow};

    fn batch(seq: u64) -> WriteBatch {
        WriteBatch {
            id: BatchId { run: 7, seq },
            tick: seq,
            positions: vec![PositionRow { npc_id: seq, tick: seq, x: 1.0, y: 2.0, z: 3.0 }],
            ..WriteBatch::default()
        }
    }

    #[test]
    fn appended_frames_come_back_in_order_and_the_file_empties_when_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(rec, Recovered::default());
        ob.append(&[batch(1), batch(2)], u64::MAX).unwrap();
        ob.append(&[batch(3)], u64::MAX).unwrap();
        let g = ob.read_group(2, usize::MAX).unwrap();
        assert_eq!(g.batches.iter().map(|b| b.id.seq).collect::<Vec<_>>(), [1, 2]);
        ob.consume(&g).unwrap();
        // Reopening (a restart) replays from the start of the file: consumed frames come again,
        // which the store skips by batch id.
        drop(ob);
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.frames, 3);
        let g = ob.read_group(10, usize::MAX).unwrap();
        assert_eq!(g.batches.iter().map(|b| b.id.seq).collect::<Vec<_>>(), [1, 2, 3]);
        ob.consume(&g).unwrap();
        assert_eq!((ob.pending(), std::fs::metadata(&path).unwrap().len()), (0, 0));
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut ob, _) = Outbox::open(&path, 1 << 20).unwrap();
        ob.append(&[batch(1), batch(2)], u64::MAX).unwrap();
        drop(ob);
        let full = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(full - 5).unwrap();
        drop(f);
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.frames, 1);
        assert!(rec.cut_bytes > 0);
        assert_eq!(std::fs::metadata(with_suffix(&path, "corrupt")).unwrap().len(), rec.cut_bytes);
        assert_eq!(ob.read_group(10, usize::MAX).unwrap().batches, [batch(1)]);
    }

    #[test]
    fn a_damaged_frame_is_skipped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut ob, _) = Outbox::open(&path, 1 << 20).unwrap();
        ob.append(&[batch(1), batch(2), batch(3)], u64::MAX).unwrap();
        drop(ob);
        let mut bytes = std::fs::read(&path).unwrap();
        let second = bytes.len() / 3 + FRAME_HEADER_LEN + 2;
        bytes[second] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!((rec.frames, rec.damaged_frames), (3, 1));
        let g = ob.read_group(10, usize::MAX).unwrap();
        assert_eq!(g.batches.iter().map(|b| b.id.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(g.skipped.len(), 1);
    }

    #[test]
    fn the_size_bound_refuses_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut ob, _) = Outbox::open(&dir.path().join("o.bin"), 1 << 20).unwrap();
        let err = ob.append(&[batch(1)], 10).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!((ob.pending(), ob.bytes()), (0, 0));
    }
}
