//! The page pool and the budgets: row credit lent to open pages, pages charged against the byte
//! bound, pooled for reuse or freed.

use super::*;

/// Row and page budgets: producers change them once per page, the worker once per page read.
/// Aligned to cache lines of their own, away from the fields producers read on every row.
#[derive(Debug)]
#[repr(align(128))]
pub(super) struct Budget {
    /// Pages charged against `max_pages`: pooled ones, in use ones, and big ones (several each).
    pub(super) charged: AtomicUsize,
    /// Row capacity not lent to a page.
    pub(super) free_rows: AtomicUsize,
}

impl Queue {
    /// Lends row capacity to a page: up to `credit` rows, none when the queue is full.
    pub(super) fn take_credit(&self) -> Option<usize> {
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

    pub(super) fn return_credit(&self, rows: usize) {
        if rows > 0 {
            self.budget.free_rows.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Pages charged for a page of `capacity` bytes.
    pub(super) fn charge_of(&self, capacity: usize) -> usize {
        capacity.div_ceil(self.page_bytes)
    }

    /// An empty page for a row needing `need` bytes: from the pool, or allocated within the byte
    /// bound (a row bigger than a page gets a page of its own size, for which pooled pages are
    /// freed if needed).
    pub(super) fn page_for(&self, need: usize) -> Option<Arc<Page>> {
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
    pub(super) fn release(&self, page: Arc<Page>) {
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
    pub(super) unsafe fn reclaim(&self, page: Arc<Page>) {
        // SAFETY: as the caller promised.
        self.release(Page::with_data(unsafe { page.take_data() }));
    }
}
