//! The spool as a user configures it: [`Spool`] and its policies.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::disk::{Disk, RealDisk};
use super::{SpoolError, SpoolStore};

/// A directory where the pipeline keeps batches the service cannot take now, and sends them from
/// later, also after a restart. Set it with
/// [`AzureLogsBuilder::spool`](crate::AzureLogsBuilder::spool).
///
/// What goes to disk depends on the [`SpoolMode`]. In the default,
/// [`OnBackpressure`](SpoolMode::OnBackpressure): a batch whose retries ran out (the service was down or unreachable for
/// longer than the retry deadline) instead of failing; a closed batch waiting for an upload slot
/// while the queue is more than half full (uploads cannot keep up), instead of leaving rows to be
/// dropped; and, at shutdown, every batch and queued row not yet confirmed instead of being
/// reported failed. In [`Always`](SpoolMode::Always), also every closed batch, before its first
/// upload, so that a crash loses no closed batch. Spooled batches are sent again oldest first,
/// in the upload slots the new rows leave free (one at a time until the service answers); the next process on the
/// same directory sends what this one left. Delivery stays at-least-once: a batch confirmed just
/// before a crash may be sent again after it (see
/// [`AzureLogsBuilder::row_id_column`](crate::AzureLogsBuilder::row_id_column)).
///
/// Pitfalls: one process per directory (a second one gets an error at build); rows not yet in a
/// closed batch when the process is killed (SIGKILL, a crash) are not on disk: at most the last
/// `max_delay` of rows, in either mode.
#[derive(Clone, Debug)]
pub struct Spool {
    pub(crate) dir: PathBuf,
    pub(crate) max_bytes: u64,
    pub(crate) when_full: SpoolFull,
    pub(crate) sync: SpoolSync,
    pub(crate) mode: SpoolMode,
    pub(crate) segment_bytes: u64,
    pub(crate) disk: Arc<dyn Disk>,
}

/// Which batches go to disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpoolMode {
    /// Only batches that cannot be delivered now: retries ran out, uploads fall behind, or the
    /// pipeline stops (default). No disk writes while the service keeps up; a crash loses the
    /// batches in memory (about the last `max_delay` plus the uploads in flight).
    #[default]
    OnBackpressure,
    /// Every closed batch is written before its first upload and leaves the spool once the
    /// service confirmed it: a crash loses at most the rows not yet in a closed batch (the last
    /// `max_delay`). Costs one gzip and one disk write per batch while the service keeps up.
    /// When the disk fails, batches go out from memory as in `OnBackpressure`, and the error is
    /// counted.
    Always,
}

/// What gives way when the spool holds `max_bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpoolFull {
    /// The batch that does not fit is not spooled: its rows are reported failed (default).
    #[default]
    DropNewest,
    /// The oldest spooled batches are deleted to make room; their rows are lost and counted.
    DropOldest,
}

/// When spooled batches are made durable (fsync).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpoolSync {
    /// At most this long after a batch was written (default 500 ms), and at shutdown.
    Interval(Duration),
    /// After every batch: slowest, loses nothing written to a power cut.
    EveryBatch,
    /// Never explicitly: the OS writes the files back when it likes; a power cut may lose the
    /// last seconds (a process crash does not).
    Never,
}

impl Default for SpoolSync {
    fn default() -> Self {
        SpoolSync::Interval(SpoolSync::default_interval())
    }
}

impl SpoolSync {
    pub(crate) fn default_interval() -> Duration {
        Duration::from_millis(500)
    }
}

impl Spool {
    /// A spool in `dir` (created if missing) that holds at most `max_bytes` on disk.
    pub fn dir(dir: impl Into<PathBuf>, max_bytes: u64) -> Spool {
        Spool {
            dir: dir.into(),
            max_bytes,
            when_full: SpoolFull::default(),
            sync: SpoolSync::default(),
            mode: SpoolMode::default(),
            segment_bytes: 32 * 1024 * 1024,
            disk: Arc::new(RealDisk),
        }
    }

    /// What gives way when the spool is full. Default [`SpoolFull::DropNewest`].
    pub fn when_full(mut self, when_full: SpoolFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Which batches go to disk. Default [`SpoolMode::OnBackpressure`].
    pub fn mode(mut self, mode: SpoolMode) -> Self {
        self.mode = mode;
        self
    }

    /// When written batches are synced to disk. Default `SpoolSync::Interval(500 ms)`.
    pub fn sync(mut self, sync: SpoolSync) -> Self {
        self.sync = sync;
        self
    }

    /// Opens the directory (taking its lock) and recovers what an earlier process left.
    pub(crate) fn open(&self) -> Result<SpoolStore, SpoolError> {
        // Segments of at most a quarter of the bound, so that DropOldest frees room in steps.
        let segment_bytes = self.segment_bytes.min(self.max_bytes / 4).max(64 * 1024);
        SpoolStore::open(
            &self.dir,
            self.max_bytes,
            segment_bytes,
            self.when_full,
            self.disk.clone(),
        )
    }
}
