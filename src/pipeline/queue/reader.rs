//! The worker's side: the pages producers opened, in order, and how far each is read; idle pages
//! are revoked.

use super::*;

/// The worker's side: the pages producers have opened, in the order they opened them, and how
/// far each is read.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    pub(super) pages: Vec<Reading>,
    pub(super) next_seq: u64,
}

#[derive(Debug)]
pub(super) struct Reading {
    pub(super) seq: u64,
    pub(super) page: Arc<Page>,
    pub(super) read_bytes: usize,
    /// Rows read from the page.
    pub(super) rows: usize,
    /// When rows last came (or the page was seen first).
    pub(super) last_row: Instant,
    /// Read to the end after its producer sealed it or the worker revoked it: goes back to the
    /// queue.
    pub(super) done: Option<Ending>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    Sealed,
    Revoked,
}

/// Where a flush waits: each page's published bytes when the flush was asked for.
pub(crate) type Marks = Vec<(u64, usize)>;

impl Reader {
    pub(super) fn collect(&mut self, queue: &Queue, now: Instant) {
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
    pub(super) fn read_revoking(
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
        self.read_revoking_all(queue, |_, _| true) as u64
    }

    /// Hands every row still queued to `take`, taking every page back (at shutdown).
    pub(crate) fn read_revoking_all(&mut self, queue: &Queue, take: impl FnMut(u32, &[u8]) -> bool) -> usize {
        self.read_revoking(queue, usize::MAX, Duration::ZERO, take)
    }
}
