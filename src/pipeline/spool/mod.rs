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
mod lend;
mod recover;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Spool, SpoolFull, SpoolMode, SpoolSync};
pub(crate) use cursor::Position;
use disk::Disk;
use frame::SEGMENT_MAGIC;
pub(crate) use frame::SpooledBatch;

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

/// The error for file operation `what` on `path`, for `map_err`.
fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let path = path.to_owned();
    move |source| SpoolError::Io { what, path, source }
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
        let io = |what| io_error(what, &path);
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
