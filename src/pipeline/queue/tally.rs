//! Row counts per producer thread, summed on demand: threads never share a counter.

use super::*;

/// One producer thread's row counts, summed by [`Queue::counts`]. Aligned to its own cache lines:
/// its thread writes it on every row (and only its thread).
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct Shard {
    pub(super) enqueued: AtomicU64,
    pub(super) dropped: AtomicU64,
    /// Cleared when the thread's slot is gone: the counts are final and can be folded.
    pub(super) live: AtomicBool,
}

/// Rows counted by producer threads: `(enqueued, dropped)`.
pub(super) type Tally = (u64, u64);

#[derive(Debug, Default)]
pub(super) struct Shards {
    pub(super) live: Vec<Arc<Shard>>,
    /// Rows counted by slots that are gone.
    pub(super) retired: Tally,
}

impl Shards {
    /// Folds the counts of threads that are gone into `retired` (so the list stays as long as
    /// the threads that write to the queue) and returns the totals.
    pub(super) fn fold(&mut self) -> Tally {
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

impl Queue {
    pub(super) fn register(&self) -> Arc<Shard> {
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

/// Stores a thread's row count where [`Queue::counts`] sums it. Before the worker can see the
/// row, so that it never takes an uncounted one.
pub(super) fn store_count(shard: &Option<Arc<Shard>>, enqueued: u64) {
    if let Some(shard) = shard {
        shard.enqueued.store(enqueued, Ordering::Relaxed);
    }
}
