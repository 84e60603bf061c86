//! `Outbox`: the write-behind's spill file. An append-only sequence of checksummed frames, one
//! [`WriteBatch`] per frame, replayed front to back.
//!
//! Frames (version 2, see `persistence/DESIGN.md`): a 48-byte header that carries its own
//! checksum, the batch layout the payload was encoded with and the batch's row count, then the
//! payload (a codec-encoded `WriteBatch`). Version 1 frames (the 32-byte `terrarium_codec`
//! header, no header checksum) are still read. Opening checks every frame. A damaged frame (its
//! header or its payload) is cut out, kept in `<file>.corrupt`, and counted with its rows when
//! its header is intact; after a damaged header the reader resynchronises on the next magic
//! whose header checks out, so one bad byte costs one frame, never the rest of the file. A frame
//! of a version or batch layout this build can't read refuses the open with a typed error
//! rather than skipping data. Given-up batches go to `<file>.dead`, same format.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use terrarium_codec::checksum;

use crate::WriteBatch;

/// Magic of outbox frames.
pub(crate) const MAGIC: [u8; 8] = *b"TRRMOUTB";
/// Format version of the frames this build writes.
pub(crate) const VERSION: u32 = 2;
/// Header of a version 2 frame: magic, version, layout, payload length, rows, payload checksum,
/// header checksum.
const HEADER_V2: usize = 48;
/// Header of a version 1 frame (`terrarium_codec`): magic, version, reserved, length, checksum.
const HEADER_V1: usize = 32;
/// Bytes scanned per read while looking for the next magic after a damaged header.
const SCAN_CHUNK: usize = 1 << 20;
/// Once this many bytes at the front have reached the store, and they are at least half of
/// the file, the rest is moved to the front so the file shrinks while the store catches up.
const COMPACT_BYTES: u64 = 64 << 20;

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
    /// Frames lost: damaged payloads, damaged headers (each damaged stretch between two good
    /// frames counts as one), torn tails. Cut out into `<file>.corrupt`.
    pub lost_frames: u64,
    /// Rows of the lost frames whose header was intact (a damaged header hides its count).
    pub lost_rows: u64,
    /// Bytes cut out into `<file>.corrupt`.
    pub lost_bytes: u64,
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
    /// Damaged or undecodable frames skipped: (bytes, rows when the header said).
    pub skipped: Vec<(u64, u64)>,
}

/// Why an outbox could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum OpenError {
    /// Reading, writing or syncing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An intact frame of a format or batch layout this build can't read.
    #[error(
        "outbox frame at offset {offset} has version {version}, batch layout {layout}; this build reads version 1 and 2, layout {}",
        WriteBatch::LAYOUT
    )]
    Unreadable {
        /// Where the frame starts.
        offset: u64,
        /// Its format version.
        version: u32,
        /// Its batch layout.
        layout: u32,
    },
}

/// A frame header, read and checked.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: usize,
    payload_len: u64,
    payload_sum: u64,
    /// Rows the frame says it holds (`None` for version 1).
    rows: Option<u64>,
}

/// What is at an offset.
enum Probe {
    /// The end of the file.
    End,
    /// A header that checks out.
    Frame(Header),
    /// A header that checks out but names a version or layout this build can't read.
    Unreadable { version: u32, layout: u32 },
    /// Anything else: damage.
    Damaged,
}

impl Outbox {
    /// Opens (or creates, mode 0600) the spill file, refusing to follow a symbolic link, and
    /// checks every frame; damaged frames are moved to `<file>.corrupt` and counted.
    pub fn open(path: &Path, max_frame_bytes: u64) -> Result<(Self, Recovered), OpenError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file =
            open_private(path, OpenOptions::new().read(true).write(true).create(true).truncate(false))?;
        let total = file.metadata()?.len();
        let mut rec = Recovered::default();
        // Good frames as (start, end), and damaged stretches as (start, end, rows if known).
        let mut good: Vec<(u64, u64)> = Vec::new();
        let mut bad: Vec<(u64, u64, Option<u64>)> = Vec::new();
        let mut payload = Vec::new();
        let mut pos = 0u64;
        while pos < total {
            match probe(&file, pos, total, max_frame_bytes)? {
                Probe::End => break,
                Probe::Unreadable { version, layout } => {
                    return Err(OpenError::Unreadable { offset: pos, version, layout });
                }
                Probe::Frame(h) => {
                    let end = pos + h.len as u64 + h.payload_len;
                    if end > total {
                        // A torn tail: the frame never finished.
                        bad.push((pos, total, h.rows));
                        break;
                    }
                    read_payload(&file, pos + h.len as u64, h.payload_len, &mut payload)?;
                    if checksum(&payload) == h.payload_sum {
                        good.push((pos, end));
                    } else {
                        bad.push((pos, end, h.rows));
                    }
                    pos = end;
                }
                Probe::Damaged => {
                    let next = resync(&file, pos + 1, total, max_frame_bytes)?.unwrap_or(total);
                    bad.push((pos, next, None));
                    pos = next;
                }
            }
        }
        rec.frames = good.len() as u64;
        let mut outbox = Self {
            path: path.to_path_buf(),
            file,
            len: total,
            read_pos: 0,
            pending: 0,
            max_frame_bytes,
            dead: None,
        };
        if !bad.is_empty() {
            for &(start, end, rows) in &bad {
                rec.lost_frames += 1;
                rec.lost_rows += rows.unwrap_or(0);
                rec.lost_bytes += end - start;
                tracing::error!(path = %path.display(), offset = start, bytes = end - start, rows, "damaged outbox frame cut out into <outbox>.corrupt");
            }
            let mut aside =
                open_private(&with_suffix(path, "corrupt"), OpenOptions::new().create(true).append(true))?;
            for &(start, end, _) in &bad {
                copy_range(&outbox.file, start, end, &mut aside)?;
            }
            aside.sync_all()?;
            outbox.rewrite(&good)?;
        } else {
            outbox.len = good.last().map_or(0, |&(_, end)| end);
        }
        outbox.pending = rec.frames;
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
            size += (HEADER_V2 + bytes.len()) as u64;
            encoded.push((b.len() as u64, bytes));
        }
        if self.len + size > max_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("outbox would grow to {} bytes, over max_outbox_bytes {max_bytes}", self.len + size),
            ));
        }
        let mut at = self.len;
        let mut w = BufWriter::with_capacity(1 << 20, PositionedWriter { file: &self.file, at: &mut at });
        for (rows, bytes) in &encoded {
            w.write_all(&header_v2(bytes, *rows))?;
            w.write_all(bytes)?;
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
        self.read_call(max_batches, max_rows, |_| true)
    }

    /// [`Outbox::read_group`], and stops before a batch `fits` refuses (asked of every batch
    /// read, in order; the first is taken whatever it answers; a refused frame stays pending).
    pub fn read_call(
        &mut self,
        max_batches: usize,
        max_rows: usize,
        mut fits: impl FnMut(&WriteBatch) -> bool,
    ) -> std::io::Result<Group> {
        let mut group = Group { end: self.read_pos, ..Group::default() };
        let mut rows = 0usize;
        while group.frames < self.pending && group.batches.len() < max_batches.max(1) {
            if !group.batches.is_empty() && rows >= max_rows {
                break;
            }
            let at = group.end;
            let h = match probe(&self.file, at, self.len, self.max_frame_bytes)? {
                Probe::Frame(h) if at + h.len as u64 + h.payload_len <= self.len => h,
                _ => {
                    // Checked at open; damaged since (the disk). What is left can't be found
                    // frame by frame any more: it is all counted as lost.
                    let left = self.pending - group.frames;
                    group.skipped.push((self.len - at, 0));
                    group.frames += left;
                    group.end = self.len;
                    tracing::error!(path = %self.path.display(), offset = at, frames = left, "outbox damaged after it was opened; the rest of it is lost");
                    break;
                }
            };
            let mut payload = Vec::new();
            read_payload(&self.file, at + h.len as u64, h.payload_len, &mut payload)?;
            let size = h.len as u64 + h.payload_len;
            let decoded = (checksum(&payload) == h.payload_sum)
                .then(|| terrarium_codec::decode::<WriteBatch>(&payload, payload.len()).ok())
                .flatten();
            if let Some(batch) = &decoded
                && !fits(batch)
                && !group.batches.is_empty()
            {
                break;
            }
            group.end += size;
            group.frames += 1;
            match decoded {
                Some(batch) => {
                    rows += batch.len();
                    group.batches.push(batch);
                }
                None => group.skipped.push((size, h.rows.unwrap_or(0))),
            }
        }
        Ok(group)
    }

    /// Marks the frames of a group as stored. Empties the file once nothing is pending, and
    /// moves what is pending to the front once the stored part is big (so a store that only
    /// just keeps up doesn't let the file grow to its bound).
    pub fn consume(&mut self, group: &Group) -> std::io::Result<()> {
        self.read_pos = group.end;
        self.pending = self.pending.saturating_sub(group.frames);
        if self.pending == 0 {
            self.file.set_len(0)?;
            self.file.sync_data()?;
            self.len = 0;
            self.read_pos = 0;
        } else if self.read_pos >= COMPACT_BYTES && self.read_pos >= self.len / 2 {
            self.rewrite(&[(self.read_pos, self.len)])?;
        }
        Ok(())
    }

    /// Keeps a batch the store refused for good in `<file>.dead`.
    pub fn dead_letter(&mut self, batch: &WriteBatch) -> std::io::Result<()> {
        if self.dead.is_none() {
            self.dead = Some(open_private(
                &with_suffix(&self.path, "dead"),
                OpenOptions::new().create(true).append(true),
            )?);
        }
        let file = self.dead.as_mut().expect("opened just above");
        let bytes = terrarium_codec::encode(batch).map_err(std::io::Error::other)?;
        let mut w = BufWriter::new(&mut *file);
        w.write_all(&header_v2(&bytes, batch.len() as u64))?;
        w.write_all(&bytes)?;
        w.flush()?;
        drop(w);
        file.sync_data()
    }

    /// Moves the batches of `<file>.dead` back into the outbox, each given a fresh id by
    /// `reid` (their old ids are at or below their run's mark in the store, which would skip
    /// them), then removes `<file>.dead`. Returns how many were queued again.
    pub fn requeue_dead(&mut self, mut reid: impl FnMut(&mut WriteBatch)) -> Result<u64, OpenError> {
        let dead_path = with_suffix(&self.path, "dead");
        if std::fs::symlink_metadata(&dead_path).is_err() {
            return Ok(0);
        }
        self.dead = None;
        let (mut dead, rec) = Self::open(&dead_path, self.max_frame_bytes)?;
        if rec.lost_frames > 0 {
            tracing::error!(path = %dead_path.display(), frames = rec.lost_frames, "damaged frames in the dead-letter file were set aside");
        }
        let mut queued = 0;
        while dead.pending() > 0 {
            let mut g = dead.read_group(64, usize::MAX)?;
            for b in &mut g.batches {
                reid(b);
            }
            self.append(&g.batches, u64::MAX)?;
            queued += g.batches.len() as u64;
            dead.consume(&g)?;
        }
        drop(dead);
        std::fs::remove_file(&dead_path)?;
        Ok(queued)
    }

    /// Replaces the file by the byte ranges `keep` of it (in order), through a new file that
    /// is synced and renamed over it.
    fn rewrite(&mut self, keep: &[(u64, u64)]) -> std::io::Result<()> {
        let tmp = with_suffix(&self.path, "rewrite");
        let _ = std::fs::remove_file(&tmp);
        let mut out = open_private(&tmp, OpenOptions::new().read(true).write(true).create_new(true))?;
        let mut len = 0;
        for &(start, end) in keep {
            copy_range(&self.file, start, end, &mut out)?;
            len += end - start;
        }
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.file = out;
        self.len = len;
        self.read_pos = 0;
        Ok(())
    }
}

/// Opens `path` with `options`, never through a symbolic link, creating it readable and
/// writable by its owner only: the outbox holds game data, and a link planted in a shared
/// directory must not make start-up truncate another file.
fn open_private(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// The header of a version 2 frame for `payload` holding `rows` rows.
pub(crate) fn header_v2(payload: &[u8], rows: u64) -> [u8; HEADER_V2] {
    let mut h = [0u8; HEADER_V2];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&WriteBatch::LAYOUT.to_le_bytes());
    h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[24..32].copy_from_slice(&rows.to_le_bytes());
    h[32..40].copy_from_slice(&checksum(payload).to_le_bytes());
    let sum = checksum(&h[0..40]);
    h[40..48].copy_from_slice(&sum.to_le_bytes());
    h
}

/// Reads what is at `at`: a header that checks out (version 2: its own checksum; version 1:
/// reserved bytes zero and a length within bounds), the end, or damage.
fn probe(file: &File, at: u64, total: u64, max_frame_bytes: u64) -> std::io::Result<Probe> {
    if at >= total {
        return Ok(Probe::End);
    }
    let mut h = [0u8; HEADER_V2];
    let n = read_at_most(file, at, &mut h)?;
    if n < HEADER_V1 || h[0..8] != MAGIC {
        return Ok(Probe::Damaged);
    }
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version == 1 {
        let payload_len = u64_at(16);
        if u32_at(12) != 0 || payload_len > max_frame_bytes {
            return Ok(Probe::Damaged);
        }
        return Ok(Probe::Frame(Header { len: HEADER_V1, payload_len, payload_sum: u64_at(24), rows: None }));
    }
    // From version 2 on, bytes 40..48 check bytes 0..40, whatever the version.
    if n < HEADER_V2 || checksum(&h[0..40]) != u64_at(40) {
        return Ok(Probe::Damaged);
    }
    let layout = u32_at(12);
    if version != VERSION || layout != WriteBatch::LAYOUT {
        return Ok(Probe::Unreadable { version, layout });
    }
    let payload_len = u64_at(16);
    if payload_len > max_frame_bytes {
        return Ok(Probe::Damaged);
    }
    Ok(Probe::Frame(Header { len: HEADER_V2, payload_len, payload_sum: u64_at(32), rows: Some(u64_at(24)) }))
}

/// The offset of the next header at or after `from` that checks out, scanning for the magic a
/// chunk at a time.
fn resync(file: &File, from: u64, total: u64, max_frame_bytes: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut at = from;
    while at < total {
        let n = read_at_most(file, at, &mut buf)?;
        if n < MAGIC.len() {
            break;
        }
        for i in 0..=n - MAGIC.len() {
            if buf[i..i + MAGIC.len()] == MAGIC
                && !matches!(probe(file, at + i as u64, total, max_frame_bytes)?, Probe::Damaged)
            {
                return Ok(Some(at + i as u64));
            }
        }
        // Overlap by the magic's length less one, so a magic across two chunks is found.
        at += (n - (MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// Reads into `buf` from `at` until it is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, at: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads `len` bytes at `at` into `buf` (bounded by the caller's frame limit).
fn read_payload(file: &File, at: u64, len: u64, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.clear();
    buf.resize(usize::try_from(len).map_err(std::io::Error::other)?, 0);
    file.read_exact_at(buf, at)
}

/// Streams bytes `start..end` of `file` to `out`, a chunk at a time.
fn copy_range(file: &File, start: u64, end: u64, out: &mut File) -> std::io::Result<()> {
    let mut reader = RangeReader { file, at: start, end };
    std::io::copy(&mut reader, out)?;
    Ok(())
}

/// Reads a byte range of a file without moving its cursor.
struct RangeReader<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = usize::try_from(self.end - self.at).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// Writes at an offset of a file without moving its cursor.
struct PositionedWriter<'a> {
    file: &'a File,
    at: &'a mut u64,
}

impl Write for PositionedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write_at(buf, *self.at)?;
        *self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

    fn seqs(g: &Group) -> Vec<u64> {
        g.batches.iter().map(|b| b.id.seq).collect()
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
        assert_eq!(seqs(&g), [1, 2]);
        ob.consume(&g).unwrap();
        // Reopening (a restart) replays from the start of the file: consumed frames come again,
        // which the store skips by batch id.
        drop(ob);
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!(rec.frames, 3);
        let g = ob.read_group(10, usize::MAX).unwrap();
        assert_eq!(seqs(&g), [1, 2, 3]);
        ob.consume(&g).unwrap();
        assert_eq!((ob.pending(), std::fs::metadata(&path).unwrap().len()), (0, 0));
    }

    #[test]
    fn the_file_is_private_and_a_symlink_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        drop(Outbox::open(&path, 1 << 20).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"not an outbox").unwrap();
        let link = dir.path().join("link.bin");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(Outbox::open(&link, 1 << 20).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"not an outbox");
    }

    #[test]
    fn a_torn_tail_is_cut_off_kept_aside_and_counted_with_its_rows() {
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
        assert_eq!((rec.frames, rec.lost_frames, rec.lost_rows), (1, 1, 1));
        assert_eq!(std::fs::metadata(with_suffix(&path, "corrupt")).unwrap().len(), rec.lost_bytes);
        assert_eq!(ob.read_group(10, usize::MAX).unwrap().batches, [batch(1)]);
    }

    /// Three frames written, the file's bytes, and the offset of the second frame.
    fn three_frames(path: &Path) -> (Vec<u8>, usize) {
        let (mut ob, _) = Outbox::open(path, 1 << 20).unwrap();
        ob.append(&[batch(1), batch(2), batch(3)], u64::MAX).unwrap();
        drop(ob);
        let bytes = std::fs::read(path).unwrap();
        (bytes.clone(), bytes.len() / 3)
    }

    #[test]
    fn a_damaged_payload_costs_its_frame_only_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut bytes, second) = three_frames(&path);
        bytes[second + HEADER_V2 + 2] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!((rec.frames, rec.lost_frames, rec.lost_rows), (2, 1, 1));
        assert_eq!(seqs(&ob.read_group(10, usize::MAX).unwrap()), [1, 3]);
    }

    #[test]
    fn after_a_damaged_length_the_reader_resynchronises_on_the_magic() {
        // Review M7: one bad length field used to send every later frame to `.corrupt`.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut bytes, second) = three_frames(&path);
        bytes[second + 16] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!((rec.frames, rec.lost_frames), (2, 1));
        assert_eq!(rec.lost_bytes, second as u64);
        assert_eq!(seqs(&ob.read_group(10, usize::MAX).unwrap()), [1, 3]);
        assert_eq!(std::fs::metadata(with_suffix(&path, "corrupt")).unwrap().len(), second as u64);
    }

    #[test]
    fn a_frame_of_an_unknown_batch_layout_refuses_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut bytes, second) = three_frames(&path);
        bytes[second + 12..second + 16].copy_from_slice(&(WriteBatch::LAYOUT + 1).to_le_bytes());
        let sum = checksum(&bytes[second..second + 40]);
        bytes[second + 40..second + 48].copy_from_slice(&sum.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = Outbox::open(&path, 1 << 20).unwrap_err();
        assert!(
            matches!(err, OpenError::Unreadable { layout, .. } if layout == WriteBatch::LAYOUT + 1),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
    }

    #[test]
    fn version_1_frames_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let mut file = std::fs::File::create(&path).unwrap();
        for seq in 1..=2 {
            let bytes = terrarium_codec::encode(&batch(seq)).unwrap();
            terrarium_codec::write_frame(&mut file, MAGIC, 1, &bytes).unwrap();
        }
        drop(file);
        let (mut ob, rec) = Outbox::open(&path, 1 << 20).unwrap();
        assert_eq!((rec.frames, rec.lost_frames), (2, 0));
        assert_eq!(seqs(&ob.read_group(10, usize::MAX).unwrap()), [1, 2]);
    }

    #[test]
    fn a_partly_drained_outbox_shrinks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut ob, _) = Outbox::open(&path, 1 << 30).unwrap();
        let big = |seq| WriteBatch {
            positions: vec![PositionRow { npc_id: seq, tick: seq, x: 1.0, y: 2.0, z: 3.0 }; 500_000],
            ..batch(seq)
        };
        for seq in 1..=20 {
            ob.append(&[big(seq)], u64::MAX).unwrap();
        }
        let before = ob.bytes();
        let g = ob.read_group(12, usize::MAX).unwrap();
        ob.consume(&g).unwrap();
        assert!(ob.bytes() < before / 2, "{} of {before} bytes left", ob.bytes());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), ob.bytes());
        assert_eq!(seqs(&ob.read_group(10, usize::MAX).unwrap()), (13..=20).collect::<Vec<_>>());
    }

    #[test]
    fn dead_letters_come_back_with_fresh_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.bin");
        let (mut ob, _) = Outbox::open(&path, 1 << 20).unwrap();
        ob.dead_letter(&batch(4)).unwrap();
        ob.dead_letter(&batch(5)).unwrap();
        let mut next = 0;
        let queued = ob
            .requeue_dead(|b| {
                next += 1;
                b.id = BatchId { run: 99, seq: next };
            })
            .unwrap();
        assert_eq!(queued, 2);
        let g = ob.read_group(10, usize::MAX).unwrap();
        assert_eq!(
            g.batches.iter().map(|b| (b.id.run, b.id.seq, b.tick)).collect::<Vec<_>>(),
            [(99, 1, 4), (99, 2, 5)]
        );
        assert!(!with_suffix(&path, "dead").exists());
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
