//! The producer side: each thread's scratch buffers and its open page (a slot) per queue.

use super::*;

thread_local! {
    pub(super) static PRODUCER: RefCell<Producer> = const { RefCell::new(Producer { scratch: Vec::new(), slots: Vec::new() }) };
}

/// A thread's producer state: scratch buffers, and one slot per queue it writes to.
pub(super) struct Producer {
    pub(super) scratch: Vec<Vec<u8>>,
    pub(super) slots: Vec<Slot>,
}

impl Producer {
    pub(super) fn slot(&mut self, queue: &Arc<Queue>) -> &mut Slot {
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
pub(super) struct Slot {
    pub(super) queue: Weak<Queue>,
    pub(super) shard: Option<Arc<Shard>>,
    pub(super) page: Option<Arc<Page>>,
    pub(super) bytes: usize,
    /// Rows the open page may still take (of those lent to it).
    pub(super) left: usize,
    /// This thread's counts, mirrored in `shard` (which only this thread writes).
    pub(super) enqueued: u64,
    pub(super) dropped: u64,
}

impl Slot {
    pub(super) fn new(queue: &Arc<Queue>) -> Slot {
        Slot::empty(Arc::downgrade(queue), Some(queue.register()))
    }

    /// A slot used for one row and sealed at once; its count is kept by the caller.
    pub(super) fn detached() -> Slot {
        Slot::empty(Weak::new(), None)
    }

    pub(super) fn empty(queue: Weak<Queue>, shard: Option<Arc<Shard>>) -> Slot {
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

    pub(super) fn append(&mut self, queue: &Queue, stream: u32, row: &[u8]) -> bool {
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
    pub(super) fn open(&mut self, queue: &Queue, stream: u32, row: &[u8]) -> bool {
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
    pub(super) fn seal(&mut self, queue: Option<&Queue>) {
        if let Some(page) = &self.page
            && page.seal(self.bytes)
            && let Some(queue) = queue
        {
            queue.return_credit(self.left);
        }
        self.forget();
    }

    pub(super) fn count_drop(&mut self) {
        self.dropped += 1;
        if let Some(shard) = &self.shard {
            shard.dropped.store(self.dropped, Ordering::Relaxed);
        }
    }

    /// Lets go of the open page without giving anything back.
    pub(super) fn forget(&mut self) {
        self.page = None;
        self.bytes = 0;
        self.left = 0;
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

/// The hot path: a producer thread's part of the queue.
impl Queue {
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
    pub(super) fn append_unslotted(&self, stream: u32, row: &[u8]) -> bool {
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
}
