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
