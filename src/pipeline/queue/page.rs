//! A page: a run of rows one producer writes and the worker reads in place. The queue's only
//! `unsafe` lives here.

use super::*;
use crate::sync::{AtomicUsize, Ordering};

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
    /// Under loom, one cell per 8 bytes of `data`, which `write`, `bytes` and `take_data` touch
    /// for the bytes they use: loom then checks that every read of a row happens after its write
    /// (rows are at least 8 bytes long, so each spans a multiple of 8).
    #[cfg(tal_loom)]
    shadow: Box<[loom::cell::UnsafeCell<()>]>,
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
            #[cfg(tal_loom)]
            shadow: (0..data.len().div_ceil(8))
                .map(|_| loom::cell::UnsafeCell::new(()))
                .collect(),
            data: UnsafeCell::new(data),
            state: AtomicUsize::new(0),
            credit: AtomicUsize::new(0),
        })
    }

    /// Tells loom that bytes `from..to` are written (`write`) or read.
    #[cfg(tal_loom)]
    fn touch(&self, from: usize, to: usize, write: bool) {
        for cell in &self.shadow[from.div_ceil(8)..to.div_ceil(8)] {
            if write {
                cell.with_mut(|_| ());
            } else {
                cell.with(|_| ());
            }
        }
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
        #[cfg(tal_loom)]
        self.touch(at, at + HEADER + row.len(), true);
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
        #[cfg(tal_loom)]
        self.touch(from, to, false);
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
        #[cfg(tal_loom)]
        self.touch(0, self.capacity, true);
        // SAFETY: the producer never touches `data` after the revoke (see `Sync`).
        unsafe { std::mem::take(&mut *self.data.get()) }
    }
}

/// Model checks of the page protocol: `RUSTFLAGS="--cfg tal_loom" cargo test --lib loom_`.
/// Each runs every interleaving of a producer and the worker (up to 3 preemptions) and fails on
/// a read of row bytes not ordered after their write.
#[cfg(all(test, tal_loom))]
mod loom_models {
    use super::*;

    /// Rows `(stream, bytes)` in `bytes`, as the reader parses them; panics on a torn row.
    fn rows(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let stream = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
            out.push((stream, bytes[at + HEADER..at + HEADER + len].to_vec()));
            at += HEADER + len;
        }
        assert_eq!(at, bytes.len(), "a published count ends on a row boundary");
        out
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    const ROW: &[u8] = b"{\"a\":1}";
    const ROW_BYTES: usize = HEADER + ROW.len();

    /// A 64-byte page whose producer wrote and published one row before sharing it.
    fn page_with_one_row() -> Arc<Page> {
        let page = Page::new(64);
        // SAFETY: not yet shared.
        unsafe { page.write(0, 1, ROW) };
        page.publish(ROW_BYTES);
        page
    }

    /// The producer writes a row before it publishes the page, then claims, writes and publishes
    /// a second; the worker reads whatever count it sees and finds whole rows.
    #[test]
    fn loom_claim_write_publish_against_the_reader() {
        model(|| {
            let page = page_with_one_row();
            let producer = {
                let page = page.clone();
                loom::thread::spawn(move || {
                    assert!(page.claim(ROW_BYTES), "nothing revokes here");
                    // SAFETY: this thread is the page's producer and holds the claim.
                    unsafe { page.write(ROW_BYTES, 2, ROW) };
                    page.publish(2 * ROW_BYTES);
                })
            };
            let (published, _) = page.published();
            // SAFETY: the worker reads below a count it loaded.
            let seen = rows(unsafe { page.bytes(0, published) });
            assert!(seen.len() == 1 || seen.len() == 2, "{seen:?}");
            assert_eq!(seen[0], (1, ROW.to_vec()));
            producer.join().unwrap();
            let (published, _) = page.published();
            assert_eq!(rows(unsafe { page.bytes(0, published) }).len(), 2);
        });
    }

    /// The worker revokes an idle page while its producer tries to write another row: either the
    /// claim wins and the row is published before the revoke, or the revoke wins and the
    /// producer writes nothing; then the worker reads to the end and takes the memory back.
    #[test]
    fn loom_revoke_against_a_claim() {
        model(|| {
            let page = page_with_one_row();
            let producer = {
                let page = page.clone();
                loom::thread::spawn(move || {
                    if page.claim(ROW_BYTES) {
                        unsafe { page.write(ROW_BYTES, 2, ROW) };
                        page.publish(2 * ROW_BYTES);
                        true
                    } else {
                        false
                    }
                })
            };
            // The worker revokes when it sees the page idle (no claim in progress), then reads
            // it to the end and takes its memory back while the producer may still run.
            let mut revoked = None;
            for _ in 0..3 {
                let (published, _) = page.published();
                if page.revoke(published) {
                    let seen = rows(unsafe { page.bytes(0, published) });
                    // SAFETY: revoked, read to the end, no slice held.
                    let data = unsafe { page.take_data() };
                    revoked = Some((published, seen.len(), data.len()));
                    break;
                }
                loom::thread::yield_now();
            }
            let wrote = producer.join().unwrap();
            let (published, seen, kept) = revoked.unwrap_or_else(|| {
                // Still being written each time it looked: revoke once the producer is done.
                let (published, _) = page.published();
                assert!(page.revoke(published));
                let seen = rows(unsafe { page.bytes(0, published) }).len();
                (published, seen, unsafe { page.take_data() }.len())
            });
            assert_eq!(
                seen,
                1 + usize::from(wrote),
                "a claimed row is published before the revoke"
            );
            assert_eq!(kept, 64);
            assert!(!page.claim(published), "a revoked page is never claimed again");
        });
    }

    /// The producer seals the page after its last row; a worker that sees the seal reads every row.
    #[test]
    fn loom_seal_against_the_reader() {
        model(|| {
            let page = Page::new(64);
            let producer = {
                let page = page.clone();
                loom::thread::spawn(move || {
                    unsafe { page.write(0, 1, ROW) };
                    page.publish(ROW_BYTES);
                    assert!(page.claim(ROW_BYTES));
                    unsafe { page.write(ROW_BYTES, 2, ROW) };
                    page.publish(2 * ROW_BYTES);
                    assert!(page.seal(2 * ROW_BYTES));
                })
            };
            let (published, sealed) = page.published();
            let seen = rows(unsafe { page.bytes(0, published) });
            if sealed {
                assert_eq!(seen.len(), 2, "a sealed page holds every row its producer wrote");
            }
            producer.join().unwrap();
        });
    }
}
