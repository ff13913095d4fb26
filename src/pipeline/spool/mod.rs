//! The disk spool's storage: closed batches (their gzipped bodies, ready to send again) appended
//! to segment files, read back oldest first, and deleted once the service confirmed them.
//!
//! Layout of the spool directory:
//! - `{id:020}.seg`: segments, each starting with [`SEGMENT_MAGIC`], then frames
//!   `len | crc32c | payload` ([`frame`]). A segment is appended to by one writer and rolled at
//!   `segment_bytes`.
//! - `cursor`: the first byte not yet confirmed ([`cursor`]), replaced atomically.
//! - `lock`: held (an OS file lock) while a process uses the directory; a second process gets
//!   [`SpoolError::Locked`].
//!
//! What it guards against (each a known failure of other shippers' disk buffers):
//! - Recovery streams each segment frame by frame and never loads the backlog into memory. It
//!   stops at the first bad frame of a segment (cut short, zeroes, bad length, checksum), counts
//!   what it skipped as lost with the reason, truncates the segment there, and goes on with the
//!   next segment: never a loop on a corrupt record, never a start-up that fails.
//! - Segments are deleted only after the cursor has passed them, and segments found below the
//!   cursor at start-up (a delete interrupted by a crash) are deleted then. Other files in the
//!   directory are left alone.
//! - `max_bytes` counts every byte on disk, recovered segments included, and is enforced at
//!   every append: the newest batch is refused (`DropNewest`) or the oldest segments are dropped
//!   and counted (`DropOldest`).
//! - Every failure is an error value that says what happened to the rows; nothing panics or
//!   exits.
//!
//! Delivery through the spool is at-least-once: a batch sent but not yet acknowledged when the
//! process stops is sent again after a restart.

mod config;
mod cursor;
pub(crate) mod disk;
mod frame;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Spool, SpoolFull, SpoolMode, SpoolSync};
pub(crate) use cursor::Position;
use cursor::{CURSOR_TMP, Cursor};
use disk::Disk;
pub(crate) use frame::SpooledBatch;
use frame::{Frame, SEGMENT_MAGIC, read_frame};

const MAGIC_LEN: u64 = SEGMENT_MAGIC.len() as u64;

/// Why the spool could not do what was asked. Each says what happened to the rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SpoolError {
    /// Another process (or another pipeline) has the directory; nothing was read or written.
    #[error(
        "the spool directory {dir} is in use by another process or pipeline (its lock file is held); \
         give each process a directory of its own"
    )]
    Locked { dir: PathBuf },
    /// A file operation failed (disk full, I/O error, permissions); the batch being written, if
    /// any, is not in the spool.
    #[error("spool {what} failed in {path}: {source}; the batch is not in the spool")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The spool holds `max_bytes` already and the policy is to refuse new batches; the batch
    /// is not in the spool.
    #[error("the spool is full ({bytes} of {max_bytes} bytes); the batch of {rows} row(s) is not in the spool")]
    Full { bytes: u64, max_bytes: u64, rows: u32 },
}

/// Rows or bytes the spool lost, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Loss {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    /// Bytes skipped (the rest of the segment from `offset`).
    pub(crate) bytes: u64,
    /// Rows lost, when known (a segment dropped to make room); `None` when the bytes could not
    /// be read.
    pub(crate) rows: Option<u64>,
    pub(crate) reason: &'static str,
}

/// A frame handed out: where it ends and its row count.
#[derive(Clone, Copy, Debug)]
struct Lent {
    after: Position,
    rows: u32,
}

/// A segment on disk.
#[derive(Debug, Default)]
struct Segment {
    id: u64,
    /// Bytes of it that hold good frames (the file is truncated to this at recovery).
    len: u64,
    /// Batches and rows in it (from the cursor on, for a recovered segment), and how many of
    /// them were handed out.
    batches: u64,
    rows: u64,
    read_batches: u64,
    read_rows: u64,
}

/// The spool's storage. Used by the worker only, never on the application's threads.
#[derive(Debug)]
pub(crate) struct SpoolStore {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    when_full: SpoolFull,
    /// Oldest first. The last is the one being written, once `writer` is set.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    /// The next frame to hand out in order, and the file it is read from. Every frame before it
    /// was handed out (lent).
    read: Position,
    reader: Option<(u64, BufReader<File>)>,
    /// Frames handed out and not yet settled or given back, by where they start.
    lent: BTreeMap<Position, Lent>,
    /// Frames lent as they were written ([`append_lent`](Self::append_lent)) while the reader
    /// was behind them: the reader steps over them. Start → end.
    ahead: BTreeMap<Position, Position>,
    /// Frames given back: handed out again, oldest first, before any frame after `read`.
    returned: BTreeMap<Position, Lent>,
    /// The first byte not yet confirmed, as known in memory, and as the cursor file says.
    acked: Position,
    saved: Position,
    /// The first segment this process created: it and later ones hold this process's batches.
    first_written: Option<u64>,
    bytes_on_disk: u64,
    /// Batches written or recovered and not yet handed out, given-back ones included.
    unread: u64,
    lost: Vec<Loss>,
    frame: Vec<u8>,
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

fn segment_id(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl SpoolStore {
    /// Opens (creating it if needed) the spool in `dir` and recovers what it holds.
    pub(crate) fn open(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        segment_bytes: u64,
        when_full: SpoolFull,
        disk: Arc<dyn Disk>,
    ) -> Result<SpoolStore, SpoolError> {
        let dir = dir.into();
        let io = |what: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| SpoolError::Io { what, path, source }
        };
        fs::create_dir_all(&dir).map_err(io("creating the directory", &dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening the lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        }
        let _ = fs::remove_file(dir.join(CURSOR_TMP));

        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let entry = entry.map_err(io("listing", &dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut lost = Vec::new();
        let start = match cursor::read(&dir).map_err(io("reading the cursor", &dir))? {
            Cursor::At(at) => at,
            // From the oldest segment: rows may be sent twice, none is lost.
            Cursor::Absent | Cursor::Corrupt => Position {
                segment: ids.first().copied().unwrap_or(1),
                offset: MAGIC_LEN,
            },
        };

        let mut store = SpoolStore {
            dir,
            disk,
            _lock: lock,
            max_bytes,
            segment_bytes: segment_bytes.max(MAGIC_LEN + 1),
            when_full,
            segments: VecDeque::new(),
            writer: None,
            read: start,
            reader: None,
            lent: BTreeMap::new(),
            ahead: BTreeMap::new(),
            returned: BTreeMap::new(),
            acked: start,
            saved: start,
            first_written: None,
            bytes_on_disk: 0,
            unread: 0,
            lost: Vec::new(),
            frame: Vec::new(),
        };
        for id in ids {
            let path = store.dir.join(segment_name(id));
            if id < start.segment {
                // Passed by the cursor; its delete was cut short by a stop.
                fs::remove_file(&path).map_err(io("deleting a confirmed segment", &path))?;
                continue;
            }
            let from = if id == start.segment { start.offset } else { MAGIC_LEN };
            match store.recover_segment(id, from, &mut lost)? {
                Some(segment) => {
                    store.bytes_on_disk += segment.len;
                    store.unread += segment.batches;
                    store.segments.push_back(segment);
                }
                None => fs::remove_file(&path).map_err(io("deleting an empty segment", &path))?,
            }
        }
        store.lost = lost;
        // Reading starts at the cursor, or at the first segment left if the cursor's is gone.
        if let Some(first) = store.segments.front()
            && first.id != store.read.segment
        {
            store.read = Position {
                segment: first.id,
                offset: MAGIC_LEN,
            };
        }
        Ok(store)
    }

    /// Checks segment `id` from byte `from` on: counts its good frames and truncates it after
    /// the last one. `None` for a file that holds no frame at all (empty, or not a segment).
    fn recover_segment(&self, id: u64, from: u64, lost: &mut Vec<Loss>) -> Result<Option<Segment>, SpoolError> {
        let path = self.dir.join(segment_name(id));
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| SpoolError::Io { what, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening a segment"))?;
        let len = file.metadata().map_err(io("reading a segment's size"))?.len();
        let mut reader = BufReader::new(&file);
        let mut magic = [0u8; SEGMENT_MAGIC.len()];
        if len < MAGIC_LEN || reader.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
            if len > 0 {
                lost.push(Loss {
                    segment: id,
                    offset: 0,
                    bytes: len,
                    rows: None,
                    reason: "not a spool segment (a wrong or missing header)",
                });
            }
            return Ok(None);
        }
        let mut at = from.clamp(MAGIC_LEN, len);
        reader.seek(SeekFrom::Start(at)).map_err(io("reading a segment"))?;
        let (mut batches, mut rows) = (0, 0);
        loop {
            match read_frame(&mut reader, len - at).map_err(io("reading a segment"))? {
                Frame::Good { payload, size } => {
                    batches += 1;
                    rows += u64::from(SpooledBatch::rows_in(&payload));
                    at += size;
                }
                Frame::End => break,
                Frame::Bad(reason) => {
                    lost.push(Loss {
                        segment: id,
                        offset: at,
                        bytes: len - at,
                        rows: None,
                        reason,
                    });
                    drop(reader);
                    file.set_len(at).map_err(io("truncating a segment after a bad frame"))?;
                    break;
                }
            }
        }
        Ok(Some(Segment {
            id,
            len: at,
            batches,
            rows,
            ..Segment::default()
        }))
    }

    /// Appends `batch`, to be handed out by [`next`](Self::next) in turn. Not durable until
    /// [`sync`](Self::sync).
    pub(crate) fn append(&mut self, batch: &SpooledBatch) -> Result<(), SpoolError> {
        self.write(batch).map(|_| ())
    }

    /// Appends `batch` and lends it out at once: the caller sends it now, then
    /// [`settle`](Self::settle)s it or [`give_back`](Self::give_back)s it. Where it starts.
    pub(crate) fn append_lent(&mut self, batch: &SpooledBatch) -> Result<Position, SpoolError> {
        let (start, after) = self.write(batch)?;
        self.unread -= 1;
        let last = self.segments.back_mut().expect("just written");
        last.read_batches += 1;
        last.read_rows += u64::from(batch.rows);
        self.lent.insert(
            start,
            Lent {
                after,
                rows: batch.rows,
            },
        );
        self.ahead.insert(start, after);
        self.step_over_ahead();
        Ok(start)
    }

    fn write(&mut self, batch: &SpooledBatch) -> Result<(Position, Position), SpoolError> {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        batch.encode_frame(&mut frame);
        let result = self.append_frame(&frame, batch.rows);
        self.frame = frame;
        result
    }

    fn append_frame(&mut self, frame: &[u8], rows: u32) -> Result<(Position, Position), SpoolError> {
        let size = frame.len() as u64;
        let roll = match (&self.writer, self.segments.back()) {
            (Some(_), Some(last)) => last.len > MAGIC_LEN && last.len + size > self.segment_bytes,
            _ => true,
        };
        let need = size + if roll { MAGIC_LEN } else { 0 };
        self.make_room(need, rows)?;
        if roll {
            self.roll()?;
        }
        let last = self.segments.back_mut().expect("rolled above");
        let path = self.dir.join(segment_name(last.id));
        let writer = self.writer.as_mut().expect("rolled above");
        if let Err(source) = self.disk.append(writer, frame) {
            // Cut a partial frame off, so the next append follows the last good one.
            let _ = writer.set_len(last.len);
            let _ = writer.seek(SeekFrom::Start(last.len));
            return Err(SpoolError::Io {
                what: "appending a batch",
                path,
                source,
            });
        }
        let start = Position {
            segment: last.id,
            offset: last.len,
        };
        last.len += size;
        last.batches += 1;
        last.rows += u64::from(rows);
        self.bytes_on_disk += size;
        self.unread += 1;
        Ok((
            start,
            Position {
                segment: last.id,
                offset: last.len,
            },
        ))
    }

    /// Frees room for `need` bytes under `max_bytes`, per the policy.
    fn make_room(&mut self, need: u64, rows: u32) -> Result<(), SpoolError> {
        while self.bytes_on_disk + need > self.max_bytes {
            let oldest_is_written = self.segments.len() == 1 && self.writer.is_some();
            if self.when_full == SpoolFull::DropNewest || self.segments.is_empty() || oldest_is_written {
                return Err(SpoolError::Full {
                    bytes: self.bytes_on_disk,
                    max_bytes: self.max_bytes,
                    rows,
                });
            }
            let oldest = self.segments.pop_front().expect("not empty");
            self.delete_segment(&oldest)?;
            // Rows already handed out are the caller's now; the others are lost.
            self.unread -= oldest.batches - oldest.read_batches;
            self.lost.push(Loss {
                segment: oldest.id,
                offset: MAGIC_LEN,
                bytes: oldest.len,
                rows: Some(oldest.rows - oldest.read_rows),
                reason: "dropped to make room (the spool was full, drop_oldest)",
            });
            // Lent frames of it are the caller's; given-back ones were counted lost above.
            for frames in [&mut self.lent, &mut self.returned] {
                frames.retain(|at, _| at.segment != oldest.id);
            }
            self.ahead.retain(|at, _| at.segment != oldest.id);
            if self.read.segment <= oldest.id {
                self.move_read_to_next(oldest.id);
            }
            self.step_over_ahead();
        }
        Ok(())
    }

    /// Starts a new segment after the last one.
    fn roll(&mut self) -> Result<(), SpoolError> {
        let id = self
            .segments
            .back()
            .map_or(self.read.segment.max(self.acked.segment), |s| s.id + 1);
        let path = self.dir.join(segment_name(id));
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| SpoolError::Io { what, path, source }
        };
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io("creating a segment"))?;
        if let Err(e) = self.disk.append(&mut file, SEGMENT_MAGIC) {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(io("writing a segment header")(e));
        }
        self.writer = Some(file);
        self.first_written.get_or_insert(id);
        self.bytes_on_disk += MAGIC_LEN;
        self.segments.push_back(Segment {
            id,
            len: MAGIC_LEN,
            ..Segment::default()
        });
        if self.read.segment < id && self.segments.len() == 1 {
            self.read = Position {
                segment: id,
                offset: MAGIC_LEN,
            };
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub(crate) fn sync(&mut self) -> Result<(), SpoolError> {
        if let (Some(writer), Some(last)) = (&self.writer, self.segments.back()) {
            self.disk.sync(writer).map_err(|source| SpoolError::Io {
                what: "syncing a segment",
                path: self.dir.join(segment_name(last.id)),
                source,
            })?;
            cursor::sync_dir(&self.dir).map_err(|source| SpoolError::Io {
                what: "syncing the directory",
                path: self.dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The oldest batch not yet handed out (given-back ones first), where it starts (to pass to
    /// [`settle`](Self::settle) or [`give_back`](Self::give_back)) and where it ends. Reads one
    /// frame; the batch is lent until then.
    pub(crate) fn next(&mut self) -> Result<Option<(SpooledBatch, Position, Position)>, SpoolError> {
        while let Some((start, lent)) = self.returned.pop_first() {
            self.unread = self.unread.saturating_sub(1);
            if let Some(batch) = self.read_lent(start, lent)? {
                return Ok(Some((batch, start, lent.after)));
            }
        }
        loop {
            self.step_over_ahead();
            if !self.normalize_read() {
                return Ok(None);
            }
            let index = self
                .segments
                .iter()
                .position(|s| s.id == self.read.segment)
                .expect("normalized");
            let (id, len) = (self.segments[index].id, self.segments[index].len);
            let path = self.dir.join(segment_name(id));
            let io = |what: &'static str| {
                let path = path.clone();
                move |source| SpoolError::Io { what, path, source }
            };
            if self.reader.as_ref().is_none_or(|(open, _)| *open != id) {
                let file = File::open(&path).map_err(io("opening a segment to read"))?;
                let mut reader = BufReader::new(file);
                reader
                    .seek(SeekFrom::Start(self.read.offset))
                    .map_err(io("reading a segment"))?;
                self.reader = Some((id, reader));
            }
            let (_, reader) = self.reader.as_mut().expect("opened above");
            match read_frame(reader, len - self.read.offset).map_err(io("reading a segment"))? {
                Frame::Good { payload, size } => {
                    let start = self.read;
                    self.read.offset += size;
                    self.unread = self.unread.saturating_sub(1);
                    let rows = SpooledBatch::rows_in(&payload);
                    let segment = &mut self.segments[index];
                    segment.read_batches += 1;
                    segment.read_rows += u64::from(rows);
                    match SpooledBatch::decode(&payload) {
                        Some(batch) => {
                            self.lent.insert(start, Lent { after: self.read, rows });
                            self.step_over_ahead();
                            return Ok(Some((batch, start, self.read)));
                        }
                        None => self.lost.push(Loss {
                            segment: id,
                            offset: start.offset,
                            bytes: size,
                            rows: None,
                            reason: "a record of an unknown kind",
                        }),
                    }
                }
                Frame::End => self.read.offset = len,
                Frame::Bad(reason) => {
                    // Written in this process and changed on disk since: skip the rest.
                    self.lost.push(Loss {
                        segment: id,
                        offset: self.read.offset,
                        bytes: len - self.read.offset,
                        rows: None,
                        reason,
                    });
                    self.read.offset = len;
                }
            }
        }
    }

    /// Reads a given-back frame again and lends it out. `None` (and a loss) if it no longer
    /// reads back.
    fn read_lent(&mut self, start: Position, lent: Lent) -> Result<Option<SpooledBatch>, SpoolError> {
        let Some(segment) = self.segments.iter_mut().find(|s| s.id == start.segment) else {
            return Ok(None);
        };
        let path = self.dir.join(segment_name(start.segment));
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| SpoolError::Io { what, path, source }
        };
        let mut file = File::open(&path).map_err(io("opening a segment to read"))?;
        file.seek(SeekFrom::Start(start.offset))
            .map_err(io("reading a segment"))?;
        let batch = match read_frame(&mut file, lent.after.offset - start.offset).map_err(io("reading a segment"))? {
            Frame::Good { payload, .. } => SpooledBatch::decode(&payload),
            Frame::End | Frame::Bad(_) => None,
        };
        let Some(batch) = batch else {
            self.lost.push(Loss {
                segment: start.segment,
                offset: start.offset,
                bytes: lent.after.offset - start.offset,
                rows: None,
                reason: "a batch that no longer reads back (changed on disk since it was written)",
            });
            return Ok(None);
        };
        segment.read_batches += 1;
        segment.read_rows += u64::from(lent.rows);
        self.lent.insert(start, lent);
        Ok(Some(batch))
    }

    /// Moves `read` to a frame start in a segment that exists: past the end of its segment (or
    /// from a segment dropped to make room) to the next one. False when there is none.
    fn normalize_read(&mut self) -> bool {
        loop {
            match self.segments.iter().find(|s| s.id == self.read.segment) {
                Some(segment) if self.read.offset < segment.len => return true,
                Some(segment) if self.segments.back().is_some_and(|last| last.id == segment.id) => return false,
                Some(segment) => {
                    let id = segment.id;
                    self.move_read_to_next(id);
                }
                // Its segment was dropped to make room: go on with the next one, if any.
                None => match self.segments.iter().find(|s| s.id > self.read.segment) {
                    Some(next) => {
                        self.read = Position {
                            segment: next.id,
                            offset: MAGIC_LEN,
                        };
                        self.reader = None;
                    }
                    None => return false,
                },
            }
        }
    }

    /// Steps `read` over frames lent as they were written, as long as it stands at one.
    fn step_over_ahead(&mut self) {
        while self.normalize_read() {
            let Some(after) = self.ahead.remove(&self.read) else {
                return;
            };
            self.skip_reader_to(after);
        }
    }

    fn skip_reader_to(&mut self, after: Position) {
        let skip = after.offset.saturating_sub(self.read.offset);
        let same = after.segment == self.read.segment;
        match self.reader.as_mut() {
            Some((id, reader)) if same && *id == after.segment => {
                if reader.seek_relative(skip as i64).is_err() {
                    self.reader = None;
                }
            }
            _ => self.reader = None,
        }
        self.read = after;
    }

    fn move_read_to_next(&mut self, after: u64) {
        self.reader = None;
        if let Some(next) = self.segments.iter().find(|s| s.id > after) {
            self.read = Position {
                segment: next.id,
                offset: MAGIC_LEN,
            };
        }
    }

    /// The lent batch at `start` was confirmed by the service, or refused for good: it leaves
    /// the spool. The cursor moves past every frame before the first one still unconfirmed;
    /// segments it passes are deleted (the cursor file is written first). Otherwise the cursor
    /// file is written at the next [`save_cursor`](Self::save_cursor). False if the batch was
    /// not lent (its segment was dropped to make room meanwhile).
    pub(crate) fn settle(&mut self, start: Position) -> Result<bool, SpoolError> {
        let found = self.lent.remove(&start).is_some();
        let unconfirmed = [self.lent.keys().next(), self.returned.keys().next()]
            .into_iter()
            .flatten()
            .copied()
            .chain(std::iter::once(self.read))
            .min()
            .expect("read is always there");
        self.acked = self.acked.max(unconfirmed);
        let passes_a_segment = self.segments.len() > 1
            && self.segments.front().is_some_and(|s| {
                s.id < self.acked.segment || (s.id == self.acked.segment && self.acked.offset >= s.len)
            });
        if passes_a_segment {
            self.save_cursor()?;
        }
        Ok(found)
    }

    /// Writes the cursor file if the cursor moved since it was last written, then deletes the
    /// segments it has passed.
    pub(crate) fn save_cursor(&mut self) -> Result<(), SpoolError> {
        if self.acked <= self.saved {
            return Ok(());
        }
        cursor::write(&*self.disk, &self.dir, self.acked).map_err(|source| SpoolError::Io {
            what: "writing the cursor",
            path: self.dir.join(cursor::CURSOR),
            source,
        })?;
        self.saved = self.acked;
        while let Some(oldest) = self.segments.front() {
            let passed = oldest.id < self.saved.segment
                || (oldest.id == self.saved.segment && self.saved.offset >= oldest.len && self.segments.len() > 1);
            if !passed {
                break;
            }
            let oldest = self.segments.pop_front().expect("checked");
            self.delete_segment(&oldest)?;
        }
        Ok(())
    }

    fn delete_segment(&mut self, segment: &Segment) -> Result<(), SpoolError> {
        if self.reader.as_ref().is_some_and(|(id, _)| *id == segment.id) {
            self.reader = None;
        }
        let path = self.dir.join(segment_name(segment.id));
        fs::remove_file(&path).map_err(|source| SpoolError::Io {
            what: "deleting a segment",
            path,
            source,
        })?;
        self.bytes_on_disk -= segment.len;
        Ok(())
    }

    /// The lent batch at `start` was not delivered: [`next`](Self::next) hands it out again,
    /// before any batch not yet handed out. False when its segment is gone (dropped to make
    /// room meanwhile): the batch is lost.
    pub(crate) fn give_back(&mut self, start: Position) -> bool {
        let Some(lent) = self.lent.remove(&start) else {
            return false;
        };
        let Some(segment) = self.segments.iter_mut().find(|s| s.id == start.segment) else {
            return false;
        };
        segment.read_batches = segment.read_batches.saturating_sub(1);
        segment.read_rows = segment.read_rows.saturating_sub(u64::from(lent.rows));
        self.unread += 1;
        self.returned.insert(start, lent);
        true
    }

    /// Whether segment `id` holds batches this process wrote (not an earlier one).
    pub(crate) fn written_here(&self, segment: u64) -> bool {
        self.first_written.is_some_and(|first| segment >= first)
    }

    /// Batches not yet confirmed: to hand out, given back, or lent.
    pub(crate) fn backlog(&self) -> u64 {
        self.unread + self.lent.len() as u64
    }

    /// Bytes the spool's segments take on disk.
    pub(crate) fn bytes_on_disk(&self) -> u64 {
        self.bytes_on_disk
    }

    /// Batches written or recovered and not yet handed out by [`next`](Self::next).
    pub(crate) fn unread(&self) -> u64 {
        self.unread
    }

    /// Segment files on disk.
    #[cfg(test)]
    pub(crate) fn segments(&self) -> usize {
        self.segments.len()
    }

    /// What was lost so far, and why (at recovery, or to make room).
    pub(crate) fn lost(&self) -> &[Loss] {
        &self.lost
    }
}

impl Drop for SpoolStore {
    /// Saves the cursor, so that the next process does not send confirmed batches again. A
    /// failure here costs duplicates, never rows.
    fn drop(&mut self) {
        let _ = self.save_cursor();
    }
}
