//! The hot path's only shared state: a bounded lock-free row queue, and a free list of emptied
//! buffers the worker hands back so that producers reuse memory instead of allocating (and the
//! worker never frees what an application thread allocated).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

/// Buffers larger than this are not kept for reuse (one huge event must not pin memory).
const MAX_POOLED_CAPACITY: usize = 1024;
/// Buffers kept for reuse at most: enough for bursts of tens of thousands of events between two
/// worker ticks, and at most 32 MiB even if every one grew to the largest pooled size. Rows over
/// 1 KiB allocate their buffer each time.
const MAX_POOLED_BUFFERS: usize = 32 * 1024;
const FRESH_CAPACITY: usize = 512;

/// What a producer does when the queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FullPolicy {
    /// Drop the new row and count it (default): the application never waits.
    DropNewest,
    /// Wait up to this long for room, then drop and count. The calling thread stalls meanwhile.
    Block(Duration),
}

/// One encoded row and the stream it goes to.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) stream: u32,
    pub(crate) json: Vec<u8>,
}

/// Counters that producers and the worker update.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Rows the worker has taken off the queue (only the worker writes it).
    pub(crate) taken: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) diagnostic_rows: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Queue {
    rows: ArrayQueue<Queued>,
    free: ArrayQueue<Vec<u8>>,
    /// Capacity of the queued rows' buffers: what they really occupy.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    policy: FullPolicy,
    closed: AtomicBool,
    /// Set once the worker has taken its last row: rows still queued then are never sent.
    stopped: AtomicBool,
    pub(crate) counters: Counters,
}

impl Queue {
    pub(crate) fn new(max_rows: usize, max_bytes: usize, policy: FullPolicy) -> Self {
        Queue {
            rows: ArrayQueue::new(max_rows.max(1)),
            free: ArrayQueue::new(max_rows.clamp(1, MAX_POOLED_BUFFERS)),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            policy,
            closed: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    /// An empty buffer, reused when one is free.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(FRESH_CAPACITY))
    }

    /// Hands an emptied buffer back for reuse, unless it is oversized or the pool is full.
    pub(crate) fn recycle(&self, mut buf: Vec<u8>) {
        if buf.capacity() <= MAX_POOLED_CAPACITY {
            buf.clear();
            let _ = self.free.push(buf);
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
        if super::worker::in_worker() {
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
    /// shutdown may still land a row in the queue; such rows count as dropped (see [`counts`]).
    ///
    /// [`counts`]: Queue::counts
    pub(crate) fn stop(&self) {
        self.close();
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// `(enqueued, dropped)`: rows taken by the worker plus those queued, and rows dropped. Once
    /// the pipeline has stopped, rows left in the queue are dropped rather than enqueued, so
    /// `sent + failed + dropped` always equals what producers emitted.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let taken = self.counters.taken.load(Ordering::Acquire);
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        let queued = self.rows.len() as u64;
        if self.stopped.load(Ordering::SeqCst) {
            (taken, dropped + queued)
        } else {
            (taken + queued, dropped)
        }
    }

    /// Enqueues a row without blocking (unless the policy says so); on failure the row is counted
    /// as dropped and its buffer recycled. Returns whether it was enqueued.
    pub(crate) fn push(&self, stream: u32, json: Vec<u8>) -> bool {
        let charge = json.capacity();
        let mut item = Queued { stream, json };
        let mut deadline = None;
        loop {
            // Checked before every try: a blocked producer must not land a row after shutdown.
            if self.is_closed() {
                return self.drop_row(item.json);
            }
            // Reserve the bytes first (one atomic add), give them back if the row does not go in.
            if self.queued_bytes.fetch_add(charge, Ordering::Relaxed) + charge <= self.max_bytes {
                match self.rows.push(item) {
                    Ok(()) => return true,
                    Err(back) => item = back,
                }
            }
            self.queued_bytes.fetch_sub(charge, Ordering::Relaxed);
            // Never wait on the worker's own thread (a table row sent from `on_error`): it is the
            // queue's only consumer.
            let FullPolicy::Block(wait) = self.policy else {
                return self.drop_row(item.json);
            };
            if super::worker::in_worker() {
                return self.drop_row(item.json);
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + wait);
            if Instant::now() >= deadline {
                return self.drop_row(item.json);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn drop_row(&self, json: Vec<u8>) -> bool {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.recycle(json);
        false
    }

    /// Rows in the queue now.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// The next row, for the worker.
    pub(crate) fn pop(&self) -> Option<Queued> {
        let item = self.rows.pop()?;
        self.queued_bytes.fetch_sub(item.json.capacity(), Ordering::Relaxed);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts() {
        let q = Queue::new(2, 1 << 20, FullPolicy::DropNewest);
        assert!(q.push(0, b"{}".to_vec()));
        assert!(q.push(0, b"{}".to_vec()));
        assert!(!q.push(0, b"{}".to_vec()));
        assert_eq!(q.counters.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(q.counts(), (2, 1));
        assert!(q.pop().is_some());
        assert!(q.push(0, b"{}".to_vec()));
    }

    #[test]
    fn byte_cap_counts_buffer_capacity_and_drops_before_the_row_cap() {
        let q = Queue::new(100, 10, FullPolicy::DropNewest);
        assert!(q.push(0, Vec::with_capacity(6)));
        assert!(!q.push(0, Vec::with_capacity(6)));
        assert!(q.push(0, Vec::with_capacity(4)));
        assert!(q.pop().is_some());
        assert!(q.push(0, Vec::with_capacity(6)), "popping gave the bytes back");
    }

    #[test]
    fn block_policy_waits_for_room_then_gives_up() {
        let q = std::sync::Arc::new(Queue::new(1, 1 << 20, FullPolicy::Block(Duration::from_secs(5))));
        assert!(q.push(0, b"{}".to_vec()));
        let q2 = q.clone();
        let popper = std::thread::spawn(move || {
            // Frees the slot, whenever the producer is waiting on it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while q2.pop().is_none() && Instant::now() < deadline {}
        });
        assert!(q.push(0, b"{}".to_vec()), "waited for room");
        popper.join().unwrap();

        let q = Queue::new(1, 1 << 20, FullPolicy::Block(Duration::from_millis(20)));
        assert!(q.push(0, b"{}".to_vec()));
        let started = Instant::now();
        assert!(!q.push(0, b"{}".to_vec()));
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn rows_left_in_a_stopped_queue_count_as_dropped() {
        let q = Queue::new(8, 1 << 20, FullPolicy::DropNewest);
        assert!(q.push(0, b"{}".to_vec()));
        assert!(q.push(0, b"{}".to_vec()));
        q.pop();
        q.counters.taken.store(1, Ordering::Release);
        assert_eq!(q.counts(), (2, 0));
        // A producer that passed the closed check before shutdown lands its row after the
        // worker's last drain: it is counted as dropped, not as pending forever.
        q.stop();
        assert_eq!(q.counts(), (1, 1));
        assert!(!q.push(0, b"{}".to_vec()));
        assert_eq!(q.counts(), (1, 2));
    }

    #[test]
    fn the_worker_thread_never_waits_for_room() {
        let q = Queue::new(1, 1 << 20, FullPolicy::Block(Duration::from_secs(30)));
        assert!(q.push(0, b"{}".to_vec()));
        super::super::worker::mark_worker_thread_for_test();
        let started = Instant::now();
        assert!(!q.push(0, b"{}".to_vec()));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn recycled_buffers_are_reused_and_oversized_ones_are_not() {
        let q = Queue::new(4, 1 << 20, FullPolicy::DropNewest);
        let mut b = q.buffer();
        b.extend_from_slice(b"hello");
        let ptr = b.as_ptr();
        q.recycle(b);
        let again = q.buffer();
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        q.recycle(Vec::with_capacity(MAX_POOLED_CAPACITY + 1));
        assert_eq!(q.buffer().capacity(), FRESH_CAPACITY);
    }
}
