//! The hot path's only shared state: a bounded queue made of pages that each producer thread
//! fills on its own, so that emitting threads share no cache line per event.
//!
//! - A producer thread encodes a row in its reused scratch buffer, copies it into *its* open page
//!   and publishes it: one uncontended compare-and-swap on the page's state word claims the page
//!   (see [`WRITING`]), one release store publishes the row. No lock, no allocation, no wake-up,
//!   no cache line shared with another producer. Only when a page is full (of bytes, or of the
//!   rows lent to it) does it touch shared state: it seals the page and takes the next one from
//!   the pool (page memory is reused; only pages made for rows bigger than a page are freed).
//! - A page is handed to the worker when it is opened, so rows of an idle thread are read (and
//!   flushed) without that thread's help.
//! - Bounds: `max_bytes` of pages (pages of up to 64 KiB) and `max_rows` rows, the latter lent to
//!   each open page in small chunks. When either runs out the row is dropped and counted, or the
//!   producer waits up to the `Block` timeout.
//! - Idle threads: a page that got no row for [`REVOKE_IDLE`] is revoked by the worker, which
//!   takes back its memory (into a new page header, since the idle thread still holds the old
//!   one) and its unused rows. Otherwise threads that log once and then sit idle would hold the
//!   whole queue (256 of them with the defaults).
//! - Counts: each producer thread counts its rows, and the rows it dropped, in counters of its
//!   own; `counts()` sums them. Two threads dropping under overload share no counter either.

mod page;
mod pool;
mod producer;
mod reader;
mod tally;
#[cfg(test)]
mod tests;

use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use page::{BYTES, Page};
use pool::Budget;
pub(crate) use reader::{Marks, Reader};
use tally::{Shard, Shards, Tally, store_count};

/// Page size for the default 32 MiB queue; smaller queues use smaller pages (down to 1 KiB).
/// (16 KiB pages, tried to hold less back per idle thread, cost 30% more per event.)
const MAX_PAGE_BYTES: usize = 64 * 1024;
const MIN_PAGE_BYTES: usize = 1024;
/// Each row in a page: its length and its stream, then its JSON.
const HEADER: usize = 8;
/// Rows a page may hold at most, as a share of the queue's row capacity: what an idle thread's
/// open page can hold back from the others.
const CREDIT_SHARE: usize = 256;
const MAX_CREDIT: usize = 1024;
/// An open page that got no row for this long is taken back from its producer by the worker,
/// with its unused rows: an idle thread holds no room in the queue.
const REVOKE_IDLE: Duration = Duration::from_millis(20);
/// Scratch buffers kept per thread, and the capacity above which one is not kept.
const KEPT_SCRATCH: usize = 4;
const MAX_KEPT_SCRATCH_BYTES: usize = 64 * 1024;
const FRESH_SCRATCH_BYTES: usize = 512;

/// What a producer does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullPolicy {
    /// Drop the new row and count it (default): the application never waits.
    DropNewest,
    /// Wait up to this long for room, then drop and count. The calling thread stalls meanwhile.
    Block(Duration),
}

/// Counters that producers and the worker update. Aligned to cache lines of their own: the
/// worker writes `taken` on every read, and producers read their queue's other fields per row.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct QueueCounters {
    /// Rows the worker has taken off the queue (only the worker writes it).
    pub(crate) taken: AtomicU64,
    /// Rows dropped without a thread's counter (after shutdown, or while the thread's counters
    /// are torn down); see [`Queue::dropped`] for the total.
    dropped: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Queue {
    max_rows: usize,
    page_bytes: usize,
    max_pages: usize,
    budget: Budget,
    pool: ArrayQueue<Arc<Page>>,
    /// Pages opened by producers, in order, not yet seen by the worker.
    published: ArrayQueue<Arc<Page>>,
    credit: usize,
    policy: FullPolicy,
    closed: AtomicBool,
    /// Set once the worker has taken its last row: rows published then are never sent.
    stopped: AtomicBool,
    shards: Mutex<Shards>,
    /// Rows written without a thread slot (from thread-local destructors).
    unslotted: AtomicU64,
    pub(crate) counters: QueueCounters,
}

impl Queue {
    pub(crate) fn new(max_rows: usize, max_bytes: usize, policy: FullPolicy) -> Self {
        let max_rows = max_rows.max(1);
        let page_bytes = (max_bytes / 64).clamp(MIN_PAGE_BYTES, MAX_PAGE_BYTES);
        let max_pages = (max_bytes / page_bytes).max(1);
        // Enough rows per page that the row capacity can be reached with every page in use.
        let credit = (max_rows / CREDIT_SHARE)
            .max(max_rows.div_ceil(max_pages))
            .clamp(1, MAX_CREDIT);
        Queue {
            max_rows,
            page_bytes,
            max_pages,
            budget: Budget {
                charged: AtomicUsize::new(0),
                free_rows: AtomicUsize::new(max_rows),
            },
            pool: ArrayQueue::new(max_pages),
            published: ArrayQueue::new(max_pages),
            credit,
            policy,
            closed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            shards: Mutex::new(Shards::default()),
            unslotted: AtomicU64::new(0),
            counters: QueueCounters::default(),
        }
    }

    /// Whether producers should stop (the guard is gone); their rows count as dropped.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Whether a producer should encode a row now. Not on the pipeline's own worker thread: the
    /// HTTP stack's events and records there never re-enter the pipeline. Not after shutdown: the
    /// row is counted as dropped.
    pub(crate) fn admit(&self) -> bool {
        if crate::thread_role::is_pipeline_worker() {
            return false;
        }
        if self.is_closed() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// The worker has taken its last row. A producer that passed the `closed` check just before
    /// shutdown may still publish a row; such rows count as dropped (see [`counts`]).
    ///
    /// [`counts`]: Queue::counts
    pub(crate) fn stop(&self) {
        self.close();
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// `(enqueued, dropped)`. Once the pipeline has stopped, rows the worker never took are
    /// dropped rather than enqueued, so `sent + failed + dropped` always equals what producers
    /// emitted.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let stopped = self.stopped.load(Ordering::SeqCst);
        // `taken` first: every row the worker took was counted before it was published.
        let taken = self.counters.taken.load(Ordering::Acquire);
        let (enqueued, dropped) = self.tally();
        let enqueued = enqueued.max(taken);
        if stopped {
            (taken, dropped + (enqueued - taken))
        } else {
            (enqueued, dropped)
        }
    }

    /// The largest row this queue can ever hold (in one page of its own, the whole byte bound).
    pub(crate) fn max_row_bytes(&self) -> usize {
        (self.max_pages * self.page_bytes)
            .min((u32::MAX as usize).min(BYTES))
            .saturating_sub(HEADER)
    }

    /// Whether more than half the queue is taken, in rows or in page memory: rows that wait now
    /// may soon be dropped.
    pub(crate) fn under_pressure(&self) -> bool {
        let rows_free = self.budget.free_rows.load(Ordering::Relaxed);
        let pages_in_use = self
            .budget
            .charged
            .load(Ordering::Relaxed)
            .saturating_sub(self.pool.len());
        rows_free < self.max_rows / 2 || pages_in_use > self.max_pages / 2
    }

    /// Row capacity neither queued nor lent to an open page.
    pub(crate) fn room(&self) -> usize {
        self.budget.free_rows.load(Ordering::Relaxed)
    }

    /// Rows published, and rows dropped, by every producer so far.
    fn tally(&self) -> Tally {
        let (enqueued, dropped) = self.shards.lock().unwrap_or_else(|e| e.into_inner()).fold();
        (
            self.unslotted.load(Ordering::Acquire) + enqueued,
            self.counters.dropped.load(Ordering::Relaxed) + dropped,
        )
    }

    /// Rows dropped so far (before shutdown; see [`counts`](Self::counts) for the final figure).
    pub(crate) fn dropped(&self) -> u64 {
        self.tally().1
    }
}
