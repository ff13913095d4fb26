//! A page: a run of rows one producer writes and the worker reads in place. The queue's only
//! `unsafe` lives here.

use super::*;

/// A page's state word: the bytes published so far, and three flags.
///
/// - `WRITING`: its producer is copying a row in (set with a compare-and-swap from the bare byte
///   count, cleared by the store that publishes the row).
/// - `SEALED`: its producer is done with it.
/// - `REVOKED`: the worker took it back from an idle producer (a compare-and-swap from the bare
///   byte count, so never while a row is being written). The producer's next compare-and-swap
///   fails, and it drops the page without touching its bytes again.
pub(super) const WRITING: usize = 1 << (usize::BITS - 3);
pub(super) const SEALED: usize = 1 << (usize::BITS - 2);
pub(super) const REVOKED: usize = 1 << (usize::BITS - 1);
pub(super) const BYTES: usize = WRITING - 1;

/// A run of encoded rows written by one producer and read by the worker. Aligned so that no two
/// pages' state words share a cache line (producers on two cores would slow each other down).
#[repr(align(128))]
pub(crate) struct Page {
    /// Taken out (left empty) only by the worker, from a revoked page it has read to the end.
    pub(super) data: UnsafeCell<Box<[UnsafeCell<u8>]>>,
    pub(super) capacity: usize,
    /// Published bytes and flags; see [`WRITING`], [`SEALED`], [`REVOKED`].
    pub(super) state: AtomicUsize,
    /// Rows lent to the page while it is open; the worker gives back what a revoked page did not
    /// use. Set before the page is published.
    pub(super) credit: AtomicUsize,
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
    pub(super) fn new(capacity: usize) -> Arc<Page> {
        Page::with_data((0..capacity).map(|_| UnsafeCell::new(0)).collect())
    }

    pub(super) fn with_data(data: Box<[UnsafeCell<u8>]>) -> Arc<Page> {
        Arc::new(Page {
            capacity: data.len(),
            data: UnsafeCell::new(data),
            state: AtomicUsize::new(0),
            credit: AtomicUsize::new(0),
        })
    }

    /// Claims the page to write a row after the `bytes` its producer published; fails once the
    /// worker has revoked it.
    pub(super) fn claim(&self, bytes: usize) -> bool {
        self.state
            .compare_exchange(bytes, bytes | WRITING, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Publishes the rows written up to `bytes` (and ends a claim).
    pub(super) fn publish(&self, bytes: usize) {
        self.state.store(bytes, Ordering::Release);
    }

    /// Marks the page done, as its producer; fails if the worker revoked it first.
    pub(super) fn seal(&self, bytes: usize) -> bool {
        self.state
            .compare_exchange(bytes, bytes | SEALED, Ordering::Release, Ordering::Relaxed)
            .is_ok()
    }

    /// Takes the page back from its producer, as the worker, if it has published exactly `bytes`
    /// and is neither being written nor sealed.
    pub(super) fn revoke(&self, bytes: usize) -> bool {
        self.state
            .compare_exchange(bytes, bytes | REVOKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Bytes published, and whether that count is final (sealed or revoked).
    pub(super) fn published(&self) -> (usize, bool) {
        let state = self.state.load(Ordering::Acquire);
        (state & BYTES, state & (SEALED | REVOKED) != 0)
    }

    /// Copies `row`, after its header, at `at`.
    ///
    /// # Safety
    /// The caller is the page's producer and either has not published the page yet or holds a
    /// [`claim`](Self::claim); `at` is what it has published and the row fits
    /// (`at + HEADER + row.len() <= capacity`).
    pub(super) unsafe fn write(&self, at: usize, stream: u32, row: &[u8]) {
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
    pub(super) unsafe fn bytes(&self, from: usize, to: usize) -> &[u8] {
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
    pub(super) unsafe fn take_data(&self) -> Box<[UnsafeCell<u8>]> {
        // SAFETY: the producer never touches `data` after the revoke (see `Sync`).
        unsafe { std::mem::take(&mut *self.data.get()) }
    }
}
