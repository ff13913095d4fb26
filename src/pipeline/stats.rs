//! What became of the rows: the counts the worker keeps ([`Outcomes`]), and what the guard
//! reports ([`Stats`], [`FlushReport`], [`StatsHandle`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::client::LogsIngestionClient;
use crate::pipeline::queue::Queue;

/// Rows settled by the worker, which alone writes them. On cache lines of their own: producers
/// never touch them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Outcomes {
    /// Application rows the service accepted.
    pub(crate) sent: AtomicU64,
    /// Application rows reported failed (through `on_error`).
    pub(crate) failed: AtomicU64,
    /// The worker's own diagnostic rows the service accepted.
    pub(crate) diagnostic_rows: AtomicU64,
    /// Application rows of this process in the spool, not yet confirmed.
    pub(crate) spooled: AtomicU64,
    /// Rows an earlier process left in the spool that this one delivered.
    pub(crate) replayed: AtomicU64,
    /// Spool writes that failed (disk full, I/O errors); their rows were reported failed.
    pub(crate) spool_errors: AtomicU64,
    /// Bytes the spool takes on disk.
    pub(crate) spool_bytes: AtomicU64,
    /// Batches in the spool not yet confirmed, this process's and earlier ones'.
    pub(crate) spool_backlog: AtomicU64,
    /// Rows deleted from the full spool to make room (`SpoolFull::DropOldest`); in `dropped`.
    pub(crate) spool_dropped: AtomicU64,
}

impl Outcomes {
    /// Rows the worker took that have an outcome: sent, failed, spooled, or dropped from the
    /// spool.
    pub(crate) fn settled(&self) -> u64 {
        [&self.sent, &self.failed, &self.spooled, &self.spool_dropped]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Counts since the pipeline started.
///
/// Every row the application emitted ends up in exactly one of `dropped` (the queue was full, or
/// the pipeline had stopped), `sent` (accepted by the service), `failed` (reported through
/// `on_error`), `spooled` (on disk, to be sent later), or is still pending:
/// `enqueued - sent - failed - spooled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Rows put on the queue.
    pub enqueued: u64,
    /// Rows dropped because the queue was full or the pipeline had stopped, or deleted from a
    /// full spool to make room (`SpoolFull::DropOldest`).
    pub dropped: u64,
    /// Rows the service accepted.
    pub sent: u64,
    /// Rows reported failed (too large, rejected, retries exhausted, or unconfirmed at shutdown).
    pub failed: u64,
    /// HTTP requests that were retries.
    pub retried: u64,
    /// HTTP requests made.
    pub uploads: u64,
    /// Request body bytes put on the wire (gzipped), retries included.
    pub wire_bytes: u64,
    /// Diagnostic rows the worker added to the log stream to report drops (not in `sent`).
    pub diagnostic_rows: u64,
    /// Rows the queue can take now, out of `queue_capacity`: what is neither waiting for the
    /// worker nor lent to a thread's open page (each is lent up to a 256th of the capacity, and
    /// the worker takes back what a page idle for 20 ms did not use). At 0, the next thread that
    /// needs room drops its row (or waits, under `FullPolicy::Block`).
    pub queue_room: u64,
    /// Rows of this process in the spool, not yet confirmed (0 without a spool). They leave it
    /// for `sent` (or `failed`, if the service refuses them) once the service answers again.
    pub spooled: u64,
    /// Rows that an earlier process left in the spool and this one delivered (not in `sent`,
    /// which counts this process's rows).
    pub replayed: u64,
    /// Spool writes that failed (disk full, an I/O error): the rows of those batches were
    /// reported failed instead.
    pub spool_errors: u64,
    /// Bytes the spool's files take on disk (0 without a spool).
    pub spool_bytes: u64,
    /// Batches in the spool the service has not confirmed yet: this process's and those an
    /// earlier process left (0 without a spool). 0 means the spool is drained.
    pub spool_backlog: u64,
    /// Of `dropped`: rows that had been enqueued and spooled, then deleted from the full spool
    /// (`SpoolFull::DropOldest`).
    pub spool_dropped: u64,
}

impl Stats {
    /// Rows enqueued but not yet sent, reported failed, spooled or dropped from the spool.
    pub fn pending(&self) -> u64 {
        self.enqueued
            .saturating_sub(self.sent + self.failed + self.spooled + self.spool_dropped)
    }
}

/// The result of a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Whether every row enqueued before the flush was sent or reported failed in time.
    pub completed: bool,
    /// Why not, when `completed` is false.
    pub incomplete: Option<Incomplete>,
    /// The counts when the flush returned.
    pub stats: Stats,
}

/// Why a flush returned before every earlier row was settled. The rows are not lost by that: they
/// stay in the pipeline (unless it was stopped, when they are counted failed or dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incomplete {
    /// The timeout passed first (a slow or unreachable service).
    TimedOut,
    /// Called on one of the crate's own threads (from `on_error`, which runs on the worker): that
    /// thread cannot wait for itself, so the call returned at once. Flush from another thread.
    OnPipelineThread,
    /// The worker had stopped (after shutdown, or a panic).
    Stopped,
}

/// Reads a pipeline's counts; cheap to clone, usable after the guard is dropped.
#[derive(Clone)]
pub struct StatsHandle {
    pub(crate) queue: Arc<Queue>,
    pub(crate) outcomes: Arc<Outcomes>,
    pub(crate) client: LogsIngestionClient,
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsHandle").field(&self.get()).finish()
    }
}

impl StatsHandle {
    /// The counts now.
    pub fn get(&self) -> Stats {
        let c = &self.outcomes;
        let client = self.client.counters();
        let (enqueued, dropped) = self.queue.counts();
        Stats {
            enqueued,
            dropped: dropped + c.spool_dropped.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: client.retries.load(Ordering::Relaxed),
            uploads: client.requests.load(Ordering::Relaxed),
            wire_bytes: client.wire_bytes.load(Ordering::Relaxed),
            diagnostic_rows: c.diagnostic_rows.load(Ordering::Relaxed),
            queue_room: self.queue.room() as u64,
            spooled: c.spooled.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            spool_errors: c.spool_errors.load(Ordering::Relaxed),
            spool_bytes: c.spool_bytes.load(Ordering::Relaxed),
            spool_backlog: c.spool_backlog.load(Ordering::Relaxed),
            spool_dropped: c.spool_dropped.load(Ordering::Relaxed),
        }
    }
}
