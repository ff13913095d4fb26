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

use std::cell::{RefCell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

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
pub(crate) struct Counters {
    /// Rows the worker has taken off the queue (only the worker writes it).
    pub(crate) taken: AtomicU64,
    /// Rows dropped without a thread's counter (after shutdown, or while the thread's counters
    /// are torn down); see [`Queue::dropped`] for the total.
    dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) diagnostic_rows: AtomicU64,
}

/// A page's state word: the bytes published so far, and three flags.
///
/// - `WRITING`: its producer is copying a row in (set with a compare-and-swap from the bare byte
///   count, cleared by the store that publishes the row).
/// - `SEALED`: its producer is done with it.
/// - `REVOKED`: the worker took it back from an idle producer (a compare-and-swap from the bare
///   byte count, so never while a row is being written). The producer's next compare-and-swap
///   fails, and it drops the page without touching its bytes again.
const WRITING: usize = 1 << (usize::BITS - 3);
const SEALED: usize = 1 << (usize::BITS - 2);
const REVOKED: usize = 1 << (usize::BITS - 1);
const BYTES: usize = WRITING - 1;

/// A run of encoded rows written by one producer and read by the worker. Aligned so that no two
/// pages' state words share a cache line (producers on two cores would slow each other down).
#[repr(align(128))]
pub(crate) struct Page {
    /// Taken out (left empty) only by the worker, from a revoked page it has read to the end.
    data: UnsafeCell<Box<[UnsafeCell<u8>]>>,
    capacity: usize,
    /// Published bytes and flags; see [`WRITING`], [`SEALED`], [`REVOKED`].
    state: AtomicUsize,
    /// Rows lent to the page while it is open; the worker gives back what a revoked page did not
    /// use. Set before the page is published.
    credit: AtomicUsize,
}

// SAFETY: a page has one producer at a time (the thread that took it from the pool). It writes
// only above the published bytes, either before the page is published or after it set `WRITING`,
// and publishes with a `Release` store; the worker reads only below a byte count it loaded with
// `Acquire`. The worker empties `data` only after it revoked the page (which succeeds only when
// `WRITING` is clear and makes every later `WRITING` attempt fail) and read it to the end. A page's
// memory goes back to the pool (and to another producer) only after that, or after its producer
// sealed it and the worker read it to the end.
unsafe impl Sync for Page {}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("capacity", &self.capacity)
            .field("state", &format_args!("{:#x}", self.state.load(Ordering::Relaxed)))
            .finish()
    }
}

impl Page {
    fn new(capacity: usize) -> Arc<Page> {
        Page::with_data((0..capacity).map(|_| UnsafeCell::new(0)).collect())
    }

    fn with_data(data: Box<[UnsafeCell<u8>]>) -> Arc<Page> {
        Arc::new(Page {
            capacity: data.len(),
            data: UnsafeCell::new(data),
            state: AtomicUsize::new(0),
            credit: AtomicUsize::new(0),
        })
    }

    /// Claims the page to write a row after the `bytes` its producer published; fails once the
    /// worker has revoked it.
    fn claim(&self, bytes: usize) -> bool {
        self.state
            .compare_exchange(bytes, bytes | WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Publishes the rows written up to `bytes` (and ends a claim).
    fn publish(&self, bytes: usize) {
        self.state.store(bytes, Ordering::Release);
    }

    /// Marks the page done, as its producer; fails if the worker revoked it first.
    fn seal(&self, bytes: usize) -> bool {
        self.state
            .compare_exchange(bytes, bytes | SEALED, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the page back from its producer, as the worker, if it has published exactly `bytes`
    /// and is neither being written nor sealed.
    fn revoke(&self, bytes: usize) -> bool {
        self.state
            .compare_exchange(bytes, bytes | REVOKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Bytes published, and whether that count is final (sealed or revoked).
    fn published(&self) -> (usize, bool) {
        let state = self.state.load(Ordering::Acquire);
        (state & BYTES, state & (SEALED | REVOKED) != 0)
    }

    /// Copies `row`, after its header, at `at`.
    ///
    /// # Safety
    /// The caller is the page's producer and either has not published the page yet or holds a
    /// [`claim`](Self::claim); `at` is what it has published and the row fits
    /// (`at + HEADER + row.len() <= capacity`).
    unsafe fn write(&self, at: usize, stream: u32, row: &[u8]) {
        debug_assert!(at + HEADER + row.len() <= self.capacity);
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(row.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&stream.to_le_bytes());
        // SAFETY: only the worker replaces `data`, and only on a revoked page, which its producer
        // no longer writes. In bounds (above); no one else reads or writes these bytes (see
        // `Sync`).
        unsafe {
            let base = UnsafeCell::raw_get((*self.data.get()).as_ptr());
            std::ptr::copy_nonoverlapping(header.as_ptr(), base.add(at), HEADER);
            std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(at + HEADER), row.len());
        }
    }

    /// The published bytes from `from` up to `to`.
    ///
    /// # Safety
    /// The caller is the worker of the page's queue, `from <= to`, and `to` is a count it loaded
    /// with [`published`](Self::published). The slice must be gone before the worker releases
    /// or reclaims the page.
    unsafe fn bytes(&self, from: usize, to: usize) -> &[u8] {
        // SAFETY: bytes below a published count are written and never change until the page's
        // memory is reused, which only this worker does, after the slice is gone; only this
        // worker replaces `data`.
        unsafe {
            let base = UnsafeCell::raw_get((*self.data.get()).as_ptr());
            std::slice::from_raw_parts(base.add(from), to - from)
        }
    }

    /// Takes the memory out of a page the worker revoked and read to the end.
    ///
    /// # Safety
    /// The caller is the worker, it revoked the page, and holds no slice of it.
    unsafe fn take_data(&self) -> Box<[UnsafeCell<u8>]> {
        // SAFETY: the producer never touches `data` after the revoke (see `Sync`).
        unsafe { std::mem::take(&mut *self.data.get()) }
    }
}

/// One producer thread's row counts, summed by [`Queue::counts`]. Aligned to its own cache lines:
/// its thread writes it on every row (and only its thread).
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    enqueued: AtomicU64,
    dropped: AtomicU64,
    /// Cleared when the thread's slot is gone: the counts are final and can be folded.
    live: AtomicBool,
}

/// Rows counted by producer threads: `(enqueued, dropped)`.
type Tally = (u64, u64);

#[derive(Debug, Default)]
struct Shards {
    live: Vec<Arc<Shard>>,
    /// Rows counted by slots that are gone.
    retired: Tally,
}

impl Shards {
    /// Folds the counts of threads that are gone into `retired` (so the list stays as long as
    /// the threads that write to the queue) and returns the totals.
    fn fold(&mut self) -> Tally {
        let Shards { live, retired } = self;
        let mut total = *retired;
        live.retain(|shard| {
            // `live` first: once it reads false, the counts it guards are final.
            let alive = shard.live.load(Ordering::Acquire);
            let counted = (
                shard.enqueued.load(Ordering::Acquire),
                shard.dropped.load(Ordering::Relaxed),
            );
            total = (total.0 + counted.0, total.1 + counted.1);
            if !alive {
                *retired = (retired.0 + counted.0, retired.1 + counted.1);
            }
            alive
        });
        total
    }
}

/// Row and page budgets: producers change them once per page, the worker once per page read.
/// Aligned to cache lines of their own, away from the fields producers read on every row.
#[derive(Debug)]
#[repr(align(128))]
struct Budget {
    /// Pages charged against `max_pages`: pooled ones, in use ones, and big ones (several each).
    charged: AtomicUsize,
    /// Row capacity not lent to a page.
    free_rows: AtomicUsize,
}

#[derive(Debug)]
pub(crate) struct Queue {
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
    pub(crate) counters: Counters,
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
            counters: Counters::default(),
        }
    }

    /// An empty buffer to encode a row in: this thread's reused scratch buffer when it has one.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        PRODUCER
            .try_with(|p| p.try_borrow_mut().ok()?.scratch.pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| Vec::with_capacity(FRESH_SCRATCH_BYTES))
    }

    /// Hands a buffer from [`buffer`](Self::buffer) back for reuse on this thread.
    pub(crate) fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() > MAX_KEPT_SCRATCH_BYTES {
            return;
        }
        buf.clear();
        let _ = PRODUCER.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut()
                && p.scratch.len() < KEPT_SCRATCH
            {
                p.scratch.push(buf);
            }
        });
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

    /// Counts a dropped row in this thread's own counter, or in the shared one when the thread
    /// has none (its thread locals are being torn down).
    fn count_drop(self: &Arc<Self>) {
        let counted = PRODUCER.try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            p.slot(self).count_drop();
            Some(())
        });
        if !matches!(counted, Ok(Some(()))) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Enqueues a row without blocking (unless the policy says so); on failure the row is counted
    /// as dropped. The buffer goes back to this thread for reuse. Returns whether it was enqueued.
    pub(crate) fn push(self: &Arc<Self>, stream: u32, row: Vec<u8>) -> bool {
        let mut deadline = None;
        let pushed = loop {
            // Checked before every try: a blocked producer must not publish after shutdown.
            if self.is_closed() {
                break false;
            }
            if self.append(stream, &row) {
                break true;
            }
            // Never wait on the worker's own thread (a table row sent from `on_error`): it is the
            // queue's only consumer.
            let FullPolicy::Block(wait) = self.policy else {
                break false;
            };
            if crate::thread_role::is_pipeline_worker() {
                break false;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        if !pushed {
            self.count_drop();
        }
        self.recycle(row);
        pushed
    }

    /// Writes the row into this thread's open page (opening one when needed); whether there was
    /// room.
    fn append(self: &Arc<Self>, stream: u32, row: &[u8]) -> bool {
        let appended = PRODUCER.try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            Some(p.slot(self).append(self, stream, row))
        });
        match appended {
            Ok(Some(done)) => done,
            // This thread's slots are being torn down (an event from a thread-local destructor).
            _ => self.append_unslotted(stream, row),
        }
    }

    /// A page of its own for one row, sealed at once.
    fn append_unslotted(&self, stream: u32, row: &[u8]) -> bool {
        // Counted before it is published, like rows in slots.
        self.unslotted.fetch_add(1, Ordering::Release);
        let mut slot = Slot::detached();
        let appended = slot.append(self, stream, row);
        if !appended {
            self.unslotted.fetch_sub(1, Ordering::Release);
        }
        slot.seal(Some(self));
        appended
    }

    /// Lends row capacity to a page: up to `credit` rows, none when the queue is full.
    fn take_credit(&self) -> Option<usize> {
        let mut free = self.budget.free_rows.load(Ordering::Relaxed);
        loop {
            if free == 0 {
                return None;
            }
            let take = free.min(self.credit);
            match self
                .budget
                .free_rows
                .compare_exchange_weak(free, free - take, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(take),
                Err(now) => free = now,
            }
        }
    }

    fn return_credit(&self, rows: usize) {
        if rows > 0 {
            self.budget.free_rows.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Pages charged for a page of `capacity` bytes.
    fn charge_of(&self, capacity: usize) -> usize {
        capacity.div_ceil(self.page_bytes)
    }

    /// An empty page for a row needing `need` bytes: from the pool, or allocated within the byte
    /// bound (a row bigger than a page gets a page of its own size, for which pooled pages are
    /// freed if needed).
    fn page_for(&self, need: usize) -> Option<Arc<Page>> {
        let capacity = need.max(self.page_bytes);
        if capacity == self.page_bytes
            && let Some(page) = self.pool.pop()
        {
            return Some(page);
        }
        let charge = self.charge_of(capacity);
        if charge > self.max_pages {
            // Can never fit: keep the pooled pages.
            return None;
        }
        let mut charged = self.budget.charged.load(Ordering::Relaxed);
        loop {
            if charged + charge > self.max_pages {
                // Room held by idle pooled pages is given back before giving up.
                drop(self.pool.pop()?);
                charged = self.budget.charged.fetch_sub(1, Ordering::Relaxed) - 1;
                continue;
            }
            match self.budget.charged.compare_exchange_weak(
                charged,
                charged + charge,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Page::new(capacity)),
                Err(now) => charged = now,
            }
        }
    }

    /// The worker is done with `page` (sealed by its producer, or a new header for a revoked
    /// page's memory): pooled for reuse, or freed if it is a big one.
    fn release(&self, page: Arc<Page>) {
        if page.capacity == self.page_bytes {
            page.state.store(0, Ordering::Relaxed);
            if self.pool.push(page).is_ok() {
                return;
            }
            self.budget.charged.fetch_sub(1, Ordering::Relaxed);
        } else {
            self.budget
                .charged
                .fetch_sub(self.charge_of(page.capacity), Ordering::Relaxed);
        }
    }

    /// The worker is done with `page`, which it revoked: its memory goes back (in a new page,
    /// since the idle producer still holds the old one until it writes again).
    ///
    /// # Safety
    /// As for [`Page::take_data`].
    unsafe fn reclaim(&self, page: Arc<Page>) {
        // SAFETY: as the caller promised.
        self.release(Page::with_data(unsafe { page.take_data() }));
    }

    fn register(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard {
            enqueued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            live: AtomicBool::new(true),
        });
        let mut shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        shards.fold();
        shards.live.push(shard.clone());
        shard
    }
}

thread_local! {
    static PRODUCER: RefCell<Producer> = const { RefCell::new(Producer { scratch: Vec::new(), slots: Vec::new() }) };
}

/// A thread's producer state: scratch buffers, and one slot per queue it writes to.
struct Producer {
    scratch: Vec<Vec<u8>>,
    slots: Vec<Slot>,
}

impl Producer {
    fn slot(&mut self, queue: &Arc<Queue>) -> &mut Slot {
        // A slot's `Weak` keeps its queue's allocation, so the address names one queue.
        match self
            .slots
            .iter()
            .position(|s| std::ptr::eq(s.queue.as_ptr(), Arc::as_ptr(queue)))
        {
            Some(i) => &mut self.slots[i],
            None => {
                // Slots of queues that are gone or closed only hold pages back.
                self.slots.retain(|s| s.queue.upgrade().is_some_and(|q| !q.is_closed()));
                self.slots.push(Slot::new(queue));
                self.slots.last_mut().expect("just pushed")
            }
        }
    }
}

/// A thread's open page in one queue.
struct Slot {
    queue: Weak<Queue>,
    shard: Option<Arc<Shard>>,
    page: Option<Arc<Page>>,
    bytes: usize,
    /// Rows the open page may still take (of those lent to it).
    left: usize,
    /// This thread's counts, mirrored in `shard` (which only this thread writes).
    enqueued: u64,
    dropped: u64,
}

impl Slot {
    fn new(queue: &Arc<Queue>) -> Slot {
        Slot::empty(Arc::downgrade(queue), Some(queue.register()))
    }

    /// A slot used for one row and sealed at once; its count is kept by the caller.
    fn detached() -> Slot {
        Slot::empty(Weak::new(), None)
    }

    fn empty(queue: Weak<Queue>, shard: Option<Arc<Shard>>) -> Slot {
        Slot {
            queue,
            shard,
            page: None,
            bytes: 0,
            left: 0,
            enqueued: 0,
            dropped: 0,
        }
    }

    fn append(&mut self, queue: &Queue, stream: u32, row: &[u8]) -> bool {
        let need = HEADER + row.len();
        // Page offsets are 32-bit (and share a word with flags); the service takes at most
        // 1 MiB per request anyway.
        if need > (u32::MAX as usize).min(BYTES) {
            return false;
        }
        if let Some(page) = &self.page
            && self.left > 0
            && self.bytes + need <= page.capacity
        {
            if page.claim(self.bytes) {
                // SAFETY: this slot is the page's producer and holds the claim; `bytes` is what
                // it published and the row fits.
                unsafe { page.write(self.bytes, stream, row) };
                self.bytes += need;
                self.left -= 1;
                self.enqueued += 1;
                store_count(&self.shard, self.enqueued);
                page.publish(self.bytes);
                return true;
            }
            // Revoked: the worker took the page back with its unused rows while this thread was
            // idle.
            self.forget();
        }
        self.seal(Some(queue));
        self.open(queue, stream, row)
    }

    /// Opens a page with `row` in it and hands it to the worker; false when the queue is full.
    fn open(&mut self, queue: &Queue, stream: u32, row: &[u8]) -> bool {
        let need = HEADER + row.len();
        let Some(credit) = queue.take_credit() else {
            return false;
        };
        let Some(page) = queue.page_for(need) else {
            queue.return_credit(credit);
            return false;
        };
        // SAFETY: no one else has the page yet; the row fits (`page_for`).
        unsafe { page.write(0, stream, row) };
        page.credit.store(credit, Ordering::Relaxed);
        page.publish(need);
        store_count(&self.shard, self.enqueued + 1);
        if let Err(page) = queue.published.push(page.clone()) {
            // Cannot happen: `published` holds as many pages as can be charged.
            store_count(&self.shard, self.enqueued);
            queue.release(page);
            queue.return_credit(credit);
            return false;
        }
        self.enqueued += 1;
        self.page = Some(page);
        self.bytes = need;
        self.left = credit - 1;
        true
    }

    /// Closes the open page: the worker pools it once read, and unused row capacity goes back
    /// (unless the worker revoked the page and took it back itself). `None` when the queue is
    /// gone.
    fn seal(&mut self, queue: Option<&Queue>) {
        if let Some(page) = &self.page
            && page.seal(self.bytes)
            && let Some(queue) = queue
        {
            queue.return_credit(self.left);
        }
        self.forget();
    }

    fn count_drop(&mut self) {
        self.dropped += 1;
        if let Some(shard) = &self.shard {
            shard.dropped.store(self.dropped, Ordering::Relaxed);
        }
    }

    /// Lets go of the open page without giving anything back.
    fn forget(&mut self) {
        self.page = None;
        self.bytes = 0;
        self.left = 0;
    }
}

/// Stores a thread's row count where [`Queue::counts`] sums it. Before the worker can see the
/// row, so that it never takes an uncounted one.
fn store_count(shard: &Option<Arc<Shard>>, enqueued: u64) {
    if let Some(shard) = shard {
        shard.enqueued.store(enqueued, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let queue = self.queue.upgrade();
        self.seal(queue.as_deref());
        if let Some(shard) = &self.shard {
            shard.live.store(false, Ordering::Release);
        }
    }
}

/// The worker's side: the pages producers have opened, in the order they opened them, and how
/// far each is read.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pages: Vec<Reading>,
    next_seq: u64,
}

#[derive(Debug)]
struct Reading {
    seq: u64,
    page: Arc<Page>,
    read_bytes: usize,
    /// Rows read from the page.
    rows: usize,
    /// When rows last came (or the page was seen first).
    last_row: Instant,
    /// Read to the end after its producer sealed it or the worker revoked it: goes back to the
    /// queue.
    done: Option<Ending>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Sealed,
    Revoked,
}

/// Where a flush waits: each page's published bytes when the flush was asked for.
pub(crate) type Marks = Vec<(u64, usize)>;

impl Reader {
    fn collect(&mut self, queue: &Queue, now: Instant) {
        while let Some(page) = queue.published.pop() {
            self.pages.push(Reading {
                seq: self.next_seq,
                page,
                read_bytes: 0,
                rows: 0,
                last_row: now,
                done: None,
            });
            self.next_seq += 1;
        }
    }

    /// Hands published rows to `take` in order, at most `max`; `take` returns false to leave a
    /// row (and every later one) for the next call. Pages read to the end once sealed go back to
    /// the pool, and so do pages that got no row for [`REVOKE_IDLE`]: the worker revokes them,
    /// so that idle threads do not hold room. Returns the rows taken.
    pub(crate) fn read(&mut self, queue: &Queue, max: usize, take: impl FnMut(u32, &[u8]) -> bool) -> usize {
        self.read_revoking(queue, max, REVOKE_IDLE, take)
    }

    /// [`read`](Self::read), revoking pages idle for `idle`.
    fn read_revoking(
        &mut self,
        queue: &Queue,
        max: usize,
        idle: Duration,
        mut take: impl FnMut(u32, &[u8]) -> bool,
    ) -> usize {
        let now = Instant::now();
        self.collect(queue, now);
        let mut taken = 0;
        let mut stopped = false;
        for reading in &mut self.pages {
            let page = &reading.page;
            // One load: when the count is final, every row below it is published.
            let (bytes, last) = page.published();
            // SAFETY: this is the queue's worker (it holds the `Reader`), `read_bytes` never
            // passes a published count, and `rest` is gone before pages are released below.
            let mut rest = unsafe { page.bytes(reading.read_bytes, bytes) };
            if !rest.is_empty() {
                reading.last_row = now;
            }
            while rest.len() >= HEADER {
                if taken == max {
                    stopped = true;
                    break;
                }
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                let stream = u32::from_le_bytes(rest[4..HEADER].try_into().expect("4 bytes"));
                let row = &rest[HEADER..HEADER + len];
                if !take(stream, row) {
                    stopped = true;
                    break;
                }
                taken += 1;
                reading.rows += 1;
                reading.read_bytes += HEADER + len;
                rest = &rest[HEADER + len..];
            }
            if stopped {
                break;
            }
            reading.done = if last {
                Some(Ending::Sealed)
            } else if now.saturating_duration_since(reading.last_row) >= idle && page.revoke(bytes) {
                Some(Ending::Revoked)
            } else {
                None
            };
        }
        queue.return_credit(taken);
        for reading in self.pages.extract_if(.., |r| r.done.is_some()) {
            match reading.done {
                Some(Ending::Revoked) => {
                    // The rows lent to the page and not used: its producer will not use them.
                    let credit = reading.page.credit.load(Ordering::Relaxed);
                    queue.return_credit(credit.saturating_sub(reading.rows));
                    // SAFETY: revoked above, and read to the end; no slice of it is left.
                    unsafe { queue.reclaim(reading.page) };
                }
                _ => queue.release(reading.page),
            }
        }
        taken
    }

    /// Each page's published bytes now, where a flush asked for now has to read up to.
    pub(crate) fn marks(&mut self, queue: &Queue) -> Marks {
        self.collect(queue, Instant::now());
        self.pages
            .iter()
            .filter_map(|r| {
                let (bytes, _) = r.page.published();
                (bytes > r.read_bytes).then_some((r.seq, bytes))
            })
            .collect()
    }

    /// Whether every page has been read up to `marks`.
    pub(crate) fn reached(&self, marks: &Marks) -> bool {
        marks.iter().all(|&(seq, bytes)| {
            match self.pages.binary_search_by_key(&seq, |r| r.seq) {
                Ok(i) => self.pages[i].read_bytes >= bytes,
                // Released: read to the end.
                Err(_) => true,
            }
        })
    }

    /// Counts every published row not read yet and skips it, and takes every page back from its
    /// producer (at shutdown). Not a page whose producer is writing a row at that moment: that
    /// row is counted as dropped (see [`Queue::stop`]), and the page's memory stays with its
    /// thread until the thread exits or first writes to another pipeline.
    pub(crate) fn discard(&mut self, queue: &Queue) -> u64 {
        self.read_revoking(queue, usize::MAX, Duration::ZERO, |_, _| true) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Taken by the tests that race many threads on the 2 cores: run together, their spinning
    /// readers and yielding producers slow each other down several times over.
    fn heavy() -> std::sync::MutexGuard<'static, ()> {
        static HEAVY: Mutex<()> = Mutex::new(());
        HEAVY.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_all(reader: &mut Reader, q: &Queue) -> Vec<(u32, Vec<u8>)> {
        let mut rows = Vec::new();
        reader.read(q, usize::MAX, |stream, row| {
            rows.push((stream, row.to_vec()));
            true
        });
        rows
    }

    fn push(q: &Arc<Queue>, row: &[u8]) -> bool {
        let mut buf = q.buffer();
        buf.extend_from_slice(row);
        q.push(0, buf)
    }

    #[test]
    fn rows_come_out_in_order_with_their_stream() {
        let q = Arc::new(Queue::new(1000, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        for i in 0..100u32 {
            let mut buf = q.buffer();
            buf.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes());
            assert!(q.push(i % 3, buf));
        }
        let rows = read_all(&mut reader, &q);
        assert_eq!(rows.len(), 100);
        for (i, (stream, row)) in rows.iter().enumerate() {
            assert_eq!(*stream, i as u32 % 3);
            assert_eq!(row, format!("{{\"i\":{i}}}").as_bytes());
        }
        assert_eq!(q.counts(), (100, 0));
        assert!(read_all(&mut reader, &q).is_empty());
    }

    #[test]
    fn full_queue_drops_and_counts() {
        let q = Arc::new(Queue::new(2, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        assert!(push(&q, b"{}"));
        assert!(push(&q, b"{}"));
        assert!(!push(&q, b"{}"));
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.counts(), (2, 1));
        assert_eq!(read_all(&mut reader, &q).len(), 2);
        assert!(push(&q, b"{}"), "reading gave the room back");
    }

    #[test]
    fn drops_are_counted_per_thread_and_kept_after_the_thread_ends() {
        let q = Arc::new(Queue::new(2, 1 << 20, FullPolicy::DropNewest));
        assert!(push(&q, b"{}") && push(&q, b"{}"));
        let dropping = |n: usize| {
            let q = q.clone();
            std::thread::spawn(move || (0..n).filter(|_| !push(&q, b"{}")).count())
        };
        let dropped: usize = [dropping(10), dropping(7)].map(|t| t.join().unwrap()).iter().sum();
        assert_eq!(dropped, 17);
        // The threads' counters are gone: their counts were kept. A new thread's registration
        // folds them, and they still count once.
        assert_eq!(q.counts(), (2, 17));
        assert_eq!(dropping(1).join().unwrap(), 1);
        assert_eq!(q.counts(), (2, 18));
        assert_eq!(
            q.counters.dropped.load(Ordering::Relaxed),
            0,
            "no shared counter was used"
        );
    }

    #[test]
    fn byte_cap_bounds_the_pages() {
        // 4 KiB of 1 KiB pages: rows of 500 bytes fill two per page, so eight fit.
        let q = Arc::new(Queue::new(1000, 4096, FullPolicy::DropNewest));
        let row = vec![b'x'; 500 - HEADER];
        let accepted = (0..20).filter(|_| push(&q, &row)).count();
        assert_eq!(accepted, 8);
        let mut reader = Reader::default();
        assert_eq!(read_all(&mut reader, &q).len(), 8);
        assert!(push(&q, &row), "read pages went back to the pool");
    }

    #[test]
    fn a_row_bigger_than_a_page_gets_its_own_page_within_the_byte_cap() {
        let q = Arc::new(Queue::new(1000, 8192, FullPolicy::DropNewest));
        assert!(push(&q, b"{}"));
        let big = vec![b'y'; 3000];
        assert!(push(&q, &big), "3 pages charged of 8");
        let huge = vec![b'z'; 9000];
        assert!(!push(&q, &huge), "over the whole byte cap");
        let mut reader = Reader::default();
        let rows = read_all(&mut reader, &q);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].1, big);
        assert_eq!(
            q.budget.charged.load(Ordering::Relaxed),
            1,
            "the big page was freed, the small one pooled"
        );
    }

    #[test]
    fn block_policy_waits_for_room_then_gives_up() {
        let q = Arc::new(Queue::new(1, 1 << 20, FullPolicy::Block(Duration::from_secs(5))));
        assert!(push(&q, b"{}"));
        let q2 = q.clone();
        let started = Instant::now();
        let reader = std::thread::spawn(move || {
            // Frees the row's room only after 20 ms (not a wait for a result: it makes sure the
            // producer finds the queue full and has to wait).
            std::thread::sleep(Duration::from_millis(20));
            let mut reader = Reader::default();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut read = Vec::new();
            while read.is_empty() && Instant::now() < deadline {
                read = read_all(&mut reader, &q2);
            }
            read
        });
        assert!(push(&q, b"{}"), "waited for room");
        assert!(started.elapsed() >= Duration::from_millis(20), "did not wait");
        assert_eq!(reader.join().unwrap().len(), 1, "the first row was read");

        let q = Arc::new(Queue::new(1, 1 << 20, FullPolicy::Block(Duration::from_millis(20))));
        assert!(push(&q, b"{}"));
        let started = Instant::now();
        assert!(!push(&q, b"{}"));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn rows_left_in_a_stopped_queue_count_as_dropped() {
        let q = Arc::new(Queue::new(8, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        assert!(push(&q, b"{}"));
        assert_eq!(read_all(&mut reader, &q).len(), 1);
        q.counters.taken.store(1, Ordering::Release);
        assert!(push(&q, b"{}"));
        assert_eq!(q.counts(), (2, 0));
        // A producer that passed the closed check before shutdown lands its row after the
        // worker's last read: it is counted as dropped, not as pending forever.
        q.stop();
        assert_eq!(q.counts(), (1, 1));
        assert!(!push(&q, b"{}"));
        assert_eq!(q.counts(), (1, 2));
    }

    #[test]
    fn the_largest_row_that_fits_is_known() {
        let q = Arc::new(Queue::new(16, 8 * 1024, FullPolicy::DropNewest));
        let max = q.max_row_bytes();
        assert!(!push(&q, &vec![b'x'; max + 1]), "one byte over never fits");
        assert!(push(&q, &vec![b'x'; max]), "the largest row fits an empty queue");
    }

    #[test]
    fn the_worker_thread_never_waits_for_room() {
        let q = Arc::new(Queue::new(1, 1 << 20, FullPolicy::Block(Duration::from_secs(30))));
        assert!(push(&q, b"{}"));
        std::thread::spawn(move || {
            crate::thread_role::mark_worker_thread();
            let started = Instant::now();
            assert!(!push(&q, b"{}"));
            assert!(started.elapsed() < Duration::from_secs(1));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn scratch_buffers_are_reused_on_the_thread() {
        let q = Arc::new(Queue::new(4, 1 << 20, FullPolicy::DropNewest));
        std::thread::spawn(move || {
            let mut b = q.buffer();
            b.extend_from_slice(b"hello");
            let ptr = b.as_ptr();
            assert!(q.push(0, b));
            let again = q.buffer();
            assert_eq!(again.as_ptr(), ptr);
            assert!(again.is_empty());
            q.recycle(again);
            q.recycle(Vec::with_capacity(MAX_KEPT_SCRATCH_BYTES + 1));
            let kept = q.buffer();
            assert_eq!(kept.as_ptr(), ptr, "the oversized buffer was not kept");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn rows_of_an_idle_or_exited_thread_are_read_and_counted() {
        let q = Arc::new(Queue::new(1000, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        let q2 = q.clone();
        std::thread::spawn(move || {
            for _ in 0..3 {
                assert!(push(&q2, b"{}"));
            }
        })
        .join()
        .unwrap();
        assert!(push(&q, b"{\"a\":1}"));
        assert_eq!(
            read_all(&mut reader, &q).len(),
            4,
            "the open page of this thread is read too"
        );
        assert_eq!(q.counts(), (4, 0));
        assert_eq!(
            q.shards.lock().unwrap().live.len(),
            1,
            "the exited thread's count was folded"
        );
        assert_eq!(reader.pages.len(), 1, "the exited thread's page was released");
    }

    /// Starts `n` threads that each push `row` once (waiting for room: `q` should block) and then
    /// stay alive, idle, until the returned barrier is passed. Returns once every row is in.
    fn idle_threads(
        q: &Arc<Queue>,
        reader: &mut Reader,
        n: usize,
        row: &'static [u8],
    ) -> (Arc<std::sync::Barrier>, Vec<std::thread::JoinHandle<bool>>) {
        let release = Arc::new(std::sync::Barrier::new(n + 1));
        let (pushed_tx, pushed) = std::sync::mpsc::channel();
        let threads = (0..n)
            .map(|_| {
                let (q, release, pushed_tx) = (q.clone(), release.clone(), pushed_tx.clone());
                std::thread::spawn(move || {
                    let ok = push(&q, row);
                    pushed_tx.send(()).unwrap();
                    release.wait();
                    ok
                })
            })
            .collect();
        // Read meanwhile: threads past the queue's room wait for idle pages to be revoked.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut done = 0;
        while done < n && Instant::now() < deadline {
            read_all(reader, q);
            done += pushed.try_iter().count();
        }
        assert_eq!(done, n, "idle threads still waiting for room");
        (release, threads)
    }

    /// Reads until the worker has taken every open page back (at most 10 s).
    fn read_until_all_revoked(reader: &mut Reader, q: &Queue) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !reader.pages.is_empty() && Instant::now() < deadline {
            read_all(reader, q);
        }
        assert!(reader.pages.is_empty(), "idle threads' pages were not taken back");
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn idle_threads_give_their_rows_back() {
        let _one_at_a_time = heavy();
        // Default sizes. 300 threads log once and stay alive: without revocation, 256 of them
        // would hold every row of the queue (256 lent to each open page).
        let q = Arc::new(Queue::new(65_536, 32 << 20, FullPolicy::Block(Duration::from_secs(30))));
        let mut reader = Reader::default();
        let (release, idle) = idle_threads(&q, &mut reader, 300, b"{}");
        read_until_all_revoked(&mut reader, &q);
        // Nothing is read from now on: the whole row capacity must be free (checked first, so
        // that a failure does not leave every push below waiting 30 s).
        assert_eq!(q.room(), 65_536, "idle threads held rows");
        let row = vec![b'x'; 300];
        let accepted = (0..65_536).filter(|_| push(&q, &row)).count();
        assert_eq!(accepted, 65_536);
        release.wait();
        assert!(idle.into_iter().all(|t| t.join().unwrap()));
        assert_eq!(q.counts(), (300 + 65_536, 0));
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn idle_threads_give_their_pages_back() {
        let _one_at_a_time = heavy();
        // 64 pages of 1 KiB, each held by an idle thread with one row in it.
        let q = Arc::new(Queue::new(65_536, 64 << 10, FullPolicy::Block(Duration::from_secs(30))));
        let mut reader = Reader::default();
        let (release, idle) = idle_threads(&q, &mut reader, 64, b"{}");
        read_until_all_revoked(&mut reader, &q);
        assert_eq!(
            q.budget.charged.load(Ordering::Relaxed),
            64,
            "no page over the byte bound"
        );
        assert_eq!(q.pool.len(), 64, "every page's memory went back to the pool");
        let row = vec![b'x'; 1000 - HEADER];
        let accepted = (0..64).filter(|_| push(&q, &row)).count();
        assert_eq!(accepted, 64, "idle threads held pages");
        release.wait();
        assert!(idle.into_iter().all(|t| t.join().unwrap()));
        assert_eq!(q.budget.charged.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn a_thread_whose_page_was_revoked_writes_into_a_new_one() {
        let q = Arc::new(Queue::new(1000, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let (wrote_tx, wrote) = std::sync::mpsc::channel::<()>();
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..3 {
                    go.recv().unwrap();
                    assert!(push(&q, format!("{{\"i\":{i}}}").as_bytes()));
                    wrote_tx.send(()).unwrap();
                }
                // Alive until the reads are checked: exiting seals the page, which a revoke
                // racing it would lose (the page is then released on the next read).
                let _ = go.recv();
            })
        };
        let mut rows = Vec::new();
        for _ in 0..3 {
            go_tx.send(()).unwrap();
            wrote.recv().unwrap();
            reader.read_revoking(&q, usize::MAX, Duration::ZERO, |_, row| {
                rows.push(String::from_utf8(row.to_vec()).unwrap());
                true
            });
            assert!(reader.pages.is_empty(), "revoked once read");
        }
        drop(go_tx);
        producer.join().unwrap();
        assert_eq!(rows, [r#"{"i":0}"#, r#"{"i":1}"#, r#"{"i":2}"#]);
        assert_eq!(q.counts(), (3, 0));
        assert_eq!(
            q.budget.free_rows.load(Ordering::Relaxed),
            1000,
            "every lent row came back"
        );
        assert_eq!(
            q.pool.len(),
            q.budget.charged.load(Ordering::Relaxed),
            "every page is pooled"
        );
    }

    #[test]
    fn threads_that_come_and_go_do_not_grow_the_counts_list() {
        let q = Arc::new(Queue::new(100_000, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        for _ in 0..50 {
            let q = q.clone();
            std::thread::spawn(move || assert!(push(&q, b"{}"))).join().unwrap();
        }
        assert!(
            q.shards.lock().unwrap().live.len() <= 1,
            "folded when the next thread registered"
        );
        assert_eq!(q.counts(), (50, 0));
        assert_eq!(read_all(&mut reader, &q).len(), 50);
        assert_eq!(reader.pages.len(), 0, "every exited thread's page was released");
    }

    #[test]
    fn flush_marks_wait_for_rows_published_before_them_only() {
        let q = Arc::new(Queue::new(1000, 1 << 20, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        assert!(push(&q, b"{\"a\":1}"));
        let marks = reader.marks(&q);
        assert!(!reader.reached(&marks));
        // Read one row; rows published after the mark do not matter.
        assert!(push(&q, b"{\"a\":2}"));
        let mut first = true;
        reader.read(&q, usize::MAX, |_, _| std::mem::take(&mut first));
        assert!(reader.reached(&marks));
        let later = reader.marks(&q);
        assert!(!reader.reached(&later));
    }

    /// `producers` threads push 20,000 rows each (yielding now and then) while a reader that
    /// revokes pages idle for `idle` takes them: every row must come exactly once, every page and
    /// every lent row must come back.
    fn every_row_exactly_once(producers: u32, idle: Duration) {
        let _one_at_a_time = heavy();
        let q = Arc::new(Queue::new(4096, 1 << 20, FullPolicy::Block(Duration::from_secs(30))));
        let done = Arc::new(AtomicBool::new(false));
        let consumer = {
            let (q, done) = (q.clone(), done.clone());
            std::thread::spawn(move || {
                let mut reader = Reader::default();
                let mut seen = std::collections::HashSet::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let finished = done.load(Ordering::Acquire);
                    reader.read_revoking(&q, usize::MAX, idle, |stream, row| {
                        assert!(seen.insert((stream, row.to_vec())), "a row came twice");
                        true
                    });
                    // Sealed pages of exited producers are released by the read after `done`.
                    if finished || Instant::now() > deadline {
                        return (seen.len(), reader.pages.len());
                    }
                }
            })
        };
        let threads: Vec<_> = (0..producers)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let mut buf = q.buffer();
                        buf.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes());
                        assert!(q.push(t, buf));
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        done.store(true, Ordering::Release);
        let rows = u64::from(producers) * 20_000;
        let (seen, open) = consumer.join().unwrap();
        assert_eq!(seen as u64, rows);
        assert_eq!(open, 0, "every page was revoked or sealed, and released");
        assert_eq!(q.counts(), (rows, 0));
        assert_eq!(
            q.budget.free_rows.load(Ordering::Relaxed),
            4096,
            "every lent row came back"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn many_threads_every_row_exactly_once() {
        every_row_exactly_once(4, REVOKE_IDLE);
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn revoking_pages_while_threads_write_loses_and_repeats_no_row() {
        // The reader revokes every page as soon as it has read it, racing producers that are
        // between rows or in the middle of one.
        every_row_exactly_once(3, Duration::ZERO);
    }

    // ---- Revocation: races and accounting (small enough for Miri) ----

    /// A row that says who wrote it: producer, sequence number, and a pattern derived from both
    /// (a torn or misplaced copy shows as a bad pattern).
    fn tagged_row(t: u32, i: u32, len: usize) -> Vec<u8> {
        let mut row = Vec::with_capacity(len.max(8));
        row.extend_from_slice(&t.to_le_bytes());
        row.extend_from_slice(&i.to_le_bytes());
        row.extend((8..len.max(8)).map(|k| (k as u32 ^ t.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8));
        row
    }

    /// The worker's side of a race: reads with `read_revoking` in random batches, sometimes
    /// leaving a row, and checks each row (intact, once, in order in its stream) and the bounds.
    struct Checker {
        reader: Reader,
        rng: fastrand::Rng,
        idle: Duration,
        max_rows: usize,
        seen: std::collections::HashSet<(u32, u32)>,
        last: std::collections::HashMap<u32, u32>,
    }

    impl Checker {
        fn new(max_rows: usize, idle: Duration, seed: u64) -> Self {
            Checker {
                reader: Reader::default(),
                rng: fastrand::Rng::with_seed(seed),
                idle,
                max_rows,
                seen: Default::default(),
                last: Default::default(),
            }
        }

        fn read(&mut self, q: &Queue) {
            let max = if self.rng.bool() {
                usize::MAX
            } else {
                self.rng.usize(1..4)
            };
            let refuse = self.rng.u8(..8) == 0;
            let mut first = true;
            let Checker {
                reader,
                seen,
                last,
                idle,
                ..
            } = self;
            reader.read_revoking(q, max, *idle, |stream, row| {
                if refuse && !std::mem::take(&mut first) {
                    return false;
                }
                let t = u32::from_le_bytes(row[..4].try_into().unwrap());
                let i = u32::from_le_bytes(row[4..8].try_into().unwrap());
                assert_eq!(row, tagged_row(t, i, row.len()), "corrupted row {t}/{i}");
                assert_eq!(stream % 100, t, "row in the wrong stream");
                assert!(seen.insert((stream, i)), "row {stream}/{i} came twice");
                if let Some(prev) = last.insert(stream, i) {
                    assert!(prev < i, "stream {stream}: row {i} after row {prev}");
                }
                true
            });
            let charged = q.budget.charged.load(Ordering::Relaxed);
            assert!(charged <= q.max_pages, "{charged} pages charged of {}", q.max_pages);
            assert!(
                q.budget.free_rows.load(Ordering::Relaxed) <= self.max_rows,
                "more rows free than exist"
            );
        }

        /// A flush: once the marks are reached, every row whose push returned before them is read.
        fn flush(&mut self, q: &Queue, published: &[(u32, u32)]) {
            let marks = self.reader.marks(q);
            while !self.reader.reached(&marks) {
                self.read(q);
            }
            for &(stream, i) in published {
                assert!(
                    self.seen.contains(&(stream, i)),
                    "flush reached without row {stream}/{i}"
                );
            }
        }
    }

    /// How a race is run: producers, rows each, the size of row `i`, how often (1 in n) a row is
    /// written unslotted (in stream 100 + t) or a producer pauses, and the worker's revoke delay.
    #[derive(Clone, Copy)]
    struct Race {
        producers: u32,
        rows: u32,
        len: fn(u32) -> usize,
        unslotted_every: u32,
        pause_every: u32,
        pause: Duration,
        idle: Duration,
        seed: u64,
    }

    /// Producers write tagged rows while this thread reads, revokes and flushes. Then checks:
    /// every accepted row read exactly once; counts exact; every lent row and every page back.
    fn race(q: &Arc<Queue>, max_rows: usize, r: Race) {
        let (published_tx, published) = std::sync::mpsc::channel::<(u32, u32)>();
        let producers: Vec<_> = (0..r.producers)
            .map(|t| {
                let (q, published_tx) = (q.clone(), published_tx.clone());
                std::thread::spawn(move || {
                    let mut accepted = 0u64;
                    for i in 0..r.rows {
                        let row = tagged_row(t, i, (r.len)(i));
                        let unslotted = r.unslotted_every > 0 && i % r.unslotted_every == r.unslotted_every - 1;
                        let (stream, ok) = if unslotted {
                            let ok = q.append_unslotted(100 + t, &row);
                            if !ok {
                                q.counters.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                            (100 + t, ok)
                        } else {
                            let mut buf = q.buffer();
                            buf.extend_from_slice(&row);
                            (t, q.push(t, buf))
                        };
                        if ok {
                            accepted += 1;
                            published_tx.send((stream, i)).unwrap();
                        }
                        if r.pause_every > 0 && i % r.pause_every == r.pause_every - 1 {
                            std::thread::sleep(r.pause);
                        } else {
                            std::thread::yield_now();
                        }
                    }
                    accepted
                })
            })
            .collect();
        drop(published_tx);

        let mut checker = Checker::new(max_rows, r.idle, r.seed);
        let mut flushed = Vec::new();
        loop {
            let done = producers.iter().all(|p| p.is_finished());
            checker.read(q);
            if checker.rng.u8(..4) == 0 {
                flushed.extend(published.try_iter());
                checker.flush(q, &flushed);
                flushed.clear();
            }
            if done {
                break;
            }
        }
        let accepted: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
        // The producers are gone: their last pages are sealed.
        checker.idle = Duration::ZERO;
        for _ in 0..100 {
            if checker.reader.pages.is_empty() {
                break;
            }
            checker.read(q);
        }
        assert!(
            checker.reader.pages.is_empty(),
            "pages left: {:?}",
            checker.reader.pages
        );
        flushed.extend(published.try_iter());
        checker.flush(q, &flushed);
        let attempted = u64::from(r.producers) * u64::from(r.rows);
        assert_eq!(checker.seen.len() as u64, accepted, "rows lost");
        assert_eq!(q.counts(), (accepted, attempted - accepted));
        assert_eq!(
            q.budget.free_rows.load(Ordering::Relaxed),
            max_rows,
            "lent rows not returned"
        );
        assert_eq!(
            q.pool.len(),
            q.budget.charged.load(Ordering::Relaxed),
            "pages not pooled"
        );
        assert!(q.budget.charged.load(Ordering::Relaxed) <= q.max_pages);
    }

    #[test]
    fn revokes_race_claims_seals_and_big_pages() {
        let _one_at_a_time = heavy();
        // 4 pages of 1 KiB, 1 row lent per page: every row seals a page, which races the
        // worker's revoke; rows of 1500 bytes get big pages (2 charged), reclaimed when revoked.
        for seed in 0..if cfg!(miri) { 1 } else { 20 } {
            let q = Arc::new(Queue::new(4, 4096, FullPolicy::DropNewest));
            race(
                &q,
                4,
                Race {
                    producers: 2,
                    rows: if cfg!(miri) { 6 } else { 2000 },
                    len: |i| if i % 5 == 2 { 1500 } else { 8 + i as usize % 40 },
                    unslotted_every: 7,
                    pause_every: 0,
                    pause: Duration::ZERO,
                    idle: Duration::ZERO,
                    seed,
                },
            );
        }
    }

    #[test]
    fn revokes_race_claims_on_pages_with_many_rows() {
        let _one_at_a_time = heavy();
        // 64 rows, 16 lent per page (4 pages): rows are written into open pages while the worker
        // revokes them as soon as it has read them.
        for seed in 0..if cfg!(miri) { 1 } else { 20 } {
            let q = Arc::new(Queue::new(64, 4096, FullPolicy::DropNewest));
            race(
                &q,
                64,
                Race {
                    producers: if cfg!(miri) { 2 } else { 3 },
                    rows: if cfg!(miri) { 8 } else { 5000 },
                    len: |i| 8 + (i as usize * 13) % 90,
                    unslotted_every: if cfg!(miri) { 0 } else { 97 },
                    pause_every: 0,
                    pause: Duration::ZERO,
                    idle: Duration::ZERO,
                    seed,
                },
            );
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn idle_revocation_with_pausing_producers() {
        let _one_at_a_time = heavy();
        // The real idle delay, producers that pause past it now and then, and a tight queue.
        for seed in 0..4 {
            let q = Arc::new(Queue::new(32, 8192, FullPolicy::Block(Duration::from_millis(50))));
            race(
                &q,
                32,
                Race {
                    producers: 4,
                    rows: 600,
                    len: |i| if i % 50 == 49 { 2000 } else { 8 + i as usize % 200 },
                    unslotted_every: 31,
                    pause_every: 100,
                    pause: Duration::from_millis(25),
                    idle: REVOKE_IDLE,
                    seed,
                },
            );
        }
    }

    #[test]
    fn a_revoked_big_page_frees_its_memory() {
        let q = Arc::new(Queue::new(64, 4096, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        assert!(push(&q, b"{}"));
        assert!(push(&q, &[b'x'; 1500]), "a big page, charged 2 of 4");
        assert_eq!(q.budget.charged.load(Ordering::Relaxed), 3);
        assert_eq!(reader.read_revoking(&q, usize::MAX, Duration::ZERO, |_, _| true), 2);
        assert!(reader.pages.is_empty());
        assert_eq!(
            q.budget.charged.load(Ordering::Relaxed),
            1,
            "the big page's memory was freed"
        );
        assert_eq!(q.pool.len(), 1);
        assert_eq!(q.budget.free_rows.load(Ordering::Relaxed), 64);
        // This thread still holds the revoked (empty) big page: the next row takes a new one.
        assert!(push(&q, &[b'y'; 3000]), "3 pages charged of 4");
        assert!(push(&q, b"{}"));
        let rows = read_all(&mut reader, &q);
        assert_eq!(rows.iter().map(|r| r.1.len()).collect::<Vec<_>>(), [3000, 2]);
        assert_eq!(q.counts(), (4, 0));
    }

    #[test]
    fn thread_exit_after_revocation_returns_nothing_twice() {
        let q = Arc::new(Queue::new(64, 4096, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        let (pushed_tx, pushed) = std::sync::mpsc::channel();
        let (exit_tx, exit) = std::sync::mpsc::channel::<()>();
        let thread = {
            let q = q.clone();
            std::thread::spawn(move || {
                assert!(push(&q, b"{\"a\":1}"));
                pushed_tx.send(()).unwrap();
                exit.recv().unwrap();
            })
        };
        pushed.recv().unwrap();
        assert_eq!(reader.read_revoking(&q, usize::MAX, Duration::ZERO, |_, _| true), 1);
        assert!(reader.pages.is_empty(), "revoked");
        assert_eq!(q.budget.free_rows.load(Ordering::Relaxed), 64);
        exit_tx.send(()).unwrap();
        thread.join().unwrap();
        // The exiting thread's seal failed: it gave back nothing more.
        assert_eq!(q.budget.free_rows.load(Ordering::Relaxed), 64);
        assert!(read_all(&mut reader, &q).is_empty());
        assert_eq!(q.pool.len(), q.budget.charged.load(Ordering::Relaxed));
        assert_eq!(q.counts(), (1, 0));
    }

    #[test]
    fn threads_exit_after_the_queue_is_gone() {
        // One thread's page was revoked, the other's is still open; then the queue and its
        // reader go away, and the threads exit (their slots seal without a queue).
        let q = Arc::new(Queue::new(64, 4096, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        let spawn = |q: &Arc<Queue>| {
            let q = q.clone();
            let (pushed_tx, pushed) = std::sync::mpsc::channel();
            let (exit_tx, exit) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::spawn(move || {
                assert!(push(&q, b"{}"));
                drop(q);
                pushed_tx.send(()).unwrap();
                exit.recv().unwrap();
            });
            pushed.recv().unwrap();
            (thread, exit_tx)
        };
        let (first, exit_first) = spawn(&q);
        assert_eq!(reader.read_revoking(&q, usize::MAX, Duration::ZERO, |_, _| true), 1);
        let (second, exit_second) = spawn(&q);
        drop(reader);
        drop(q);
        exit_second.send(()).unwrap();
        exit_first.send(()).unwrap();
        second.join().unwrap();
        first.join().unwrap();
    }

    #[test]
    fn discard_at_shutdown_takes_back_pages_threads_still_hold() {
        let q = Arc::new(Queue::new(64, 4096, FullPolicy::DropNewest));
        let mut reader = Reader::default();
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (q, barrier) = (q.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let first = (0..3).filter(|_| push(&q, b"{}")).count();
                    barrier.wait(); // rows in, pages held
                    barrier.wait(); // shut down
                    let after = (0..2).filter(|_| push(&q, b"{}")).count();
                    (first, after)
                })
            })
            .collect();
        barrier.wait();
        let mut taken = 0;
        reader.read(&q, 2, |_, _| {
            taken += 1;
            true
        });
        assert_eq!(taken, 2);
        // What the worker does at shutdown.
        q.close();
        taken += reader.discard(&q);
        q.counters.taken.store(taken, Ordering::Release);
        q.stop();
        assert_eq!(taken, 6);
        assert!(reader.pages.is_empty(), "every page taken back");
        barrier.wait();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results, [(3, 0), (3, 0)]);
        assert_eq!(q.counts(), (6, 4));
        assert_eq!(q.budget.free_rows.load(Ordering::Relaxed), 64);
        assert_eq!(q.pool.len(), q.budget.charged.load(Ordering::Relaxed));
    }

    #[test]
    fn discard_racing_producers_keeps_the_counts_exact() {
        let _one_at_a_time = heavy();
        for _ in 0..if cfg!(miri) { 1 } else { 200 } {
            let q = Arc::new(Queue::new(64, 4096, FullPolicy::DropNewest));
            let mut reader = Reader::default();
            let rows = if cfg!(miri) { 4 } else { 50 };
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    std::thread::spawn(move || {
                        let mut accepted = 0u64;
                        for _ in 0..rows {
                            accepted += u64::from(push(&q, b"{}"));
                            std::thread::yield_now();
                        }
                        accepted
                    })
                })
                .collect();
            let mut taken = reader.read_revoking(&q, usize::MAX, Duration::ZERO, |_, _| true) as u64;
            q.close();
            taken += reader.discard(&q);
            q.counters.taken.store(taken, Ordering::Release);
            q.stop();
            let accepted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
            // Every accepted row was counted, every refused one dropped, and the worker took no
            // row that was not counted.
            assert_eq!(q.tally().0, accepted);
            assert_eq!(accepted + q.dropped(), 2 * rows);
            assert!(taken <= accepted, "took {taken} rows, {accepted} counted");
            let (enqueued, dropped) = q.counts();
            assert_eq!(enqueued + dropped, 2 * rows);
        }
    }
}
