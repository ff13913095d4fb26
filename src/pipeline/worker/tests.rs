//! The worker against a scripted, in-memory [`Transport`]: batching, flush ordering, failure
//! accounting and shutdown, without HTTP. Every wait has a deadline.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::{Control, Worker, WorkerConfig};
use crate::client::batch::Batch;
use crate::client::{FailedBatch, FailureReason, SendOutcome};
use crate::pipeline::Incomplete;
use crate::pipeline::destinations::{Destination, Destinations};
use crate::pipeline::guard::request_flush;
use crate::pipeline::queue::{FullPolicy, Queue};
use crate::pipeline::spool::Spool;
use crate::pipeline::spool::tests::TempDir;
use crate::pipeline::stats::Outcomes;
use crate::pipeline::transport::{Sending, SendingBody, Transport};
use crate::row::{Columns, RowShape};

const WAIT: Duration = Duration::from_secs(20);

/// What the scripted transport does with a batch.
#[derive(Clone)]
enum Script {
    Accept,
    Fail,
    /// The service stayed down for the whole retry deadline.
    Down,
    /// Wait for a permit from [`Scripted::release`], then accept.
    Hold,
    Panic,
}

/// A batch as the transport received it: its row ids and rows.
#[derive(Clone, Debug)]
struct Received {
    /// A spooled batch sent again (a gzipped body).
    replay: bool,
    accepted: bool,
    rows: Vec<String>,
    array_len: usize,
}

struct Scripted {
    max_uncompressed: usize,
    script: Box<dyn Fn(usize) -> Script + Send + Sync>,
    received: Mutex<Vec<Received>>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Scripted {
    /// `script` decides by the batch's number (0 for the first batch received).
    fn new(max_uncompressed: usize, script: impl Fn(usize) -> Script + Send + Sync + 'static) -> Arc<Scripted> {
        Arc::new(Scripted {
            max_uncompressed,
            script: Box::new(script),
            received: Mutex::new(Vec::new()),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        })
    }

    fn release(&self, uploads: usize) {
        self.gate.add_permits(uploads);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Scripted {
    /// Records what arrived and decides its fate by the script.
    fn receive(&self, rows: Vec<String>, replay: bool) -> impl Future<Output = SendOutcome> + Send + use<> {
        let array_len = rows.iter().map(String::len).sum::<usize>() + rows.len().saturating_sub(1) + 2;
        let script = {
            let mut received = self.received.lock().unwrap();
            let script = (self.script)(received.len());
            received.push(Received {
                replay,
                accepted: matches!(script, Script::Accept | Script::Hold),
                rows,
                array_len,
            });
            script
        };
        let gate = self.gate.clone();
        async move {
            let result = match script {
                Script::Accept => Ok(()),
                Script::Fail => Err(FailureReason::Rejected {
                    status: 400,
                    code: None,
                    message: "scripted".into(),
                    hint: "scripted",
                }),
                Script::Down => Err(FailureReason::RetriesExhausted {
                    attempts: 3,
                    last_error: "scripted outage".into(),
                }),
                Script::Hold => {
                    gate.acquire().await.expect("the gate stays open").forget();
                    Ok(())
                }
                Script::Panic => panic!("scripted panic"),
            };
            SendOutcome {
                attempts: 1,
                wire_bytes: 0,
                result,
            }
        }
    }
}

impl Transport for Scripted {
    fn send(&self, _: &Destination, batch: Batch) -> Sending {
        let rows: Vec<String> = batch.rows().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
        let outcome = self.receive(rows, false);
        Box::pin(async move { vec![(batch, outcome.await)] })
    }

    fn send_body(&self, _: &Destination, body: Vec<u8>) -> SendingBody {
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&body[..]), &mut json).unwrap();
        let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let rows = rows.iter().map(|r| r.to_string()).collect();
        Box::pin(self.receive(rows, true))
    }

    fn max_concurrency(&self) -> usize {
        2
    }

    fn max_uncompressed(&self) -> usize {
        self.max_uncompressed
    }

    fn gzip_level(&self) -> u32 {
        1
    }
}

struct Harness {
    queue: Arc<Queue>,
    outcomes: Arc<Outcomes>,
    destinations: Arc<Destinations>,
    control: Sender<Control>,
    worker: Option<JoinHandle<()>>,
    failures: Arc<Mutex<Vec<FailedBatch>>>,
}

impl Harness {
    fn start(transport: Arc<Scripted>) -> Harness {
        Harness::start_with(transport, None)
    }

    fn start_with(transport: Arc<Scripted>, spool: Option<&Spool>) -> Harness {
        let spool = spool.map(|s| super::spill::SpoolState::new(s.open().unwrap(), s));
        let queue = Arc::new(Queue::new(65_536, 8 << 20, FullPolicy::DropNewest));
        let outcomes = Arc::new(Outcomes::default());
        let destinations = Arc::new(Destinations::new(Destination {
            rule_id: "dcr-test".into(),
            stream: "Custom-Test_CL".into(),
        }));
        let failures: Arc<Mutex<Vec<FailedBatch>>> = Arc::default();
        let sink = failures.clone();
        let config = WorkerConfig {
            max_delay: Duration::from_millis(20),
            diagnostic_interval: Duration::from_millis(50),
            on_error: Some(Arc::new(move |f| sink.lock().unwrap().push(f))),
            shape: Arc::new(RowShape::new(&Columns::default())),
        };
        let (control, control_rx) = crossbeam_channel::unbounded();
        let worker = Worker::new(
            queue.clone(),
            destinations.clone(),
            transport,
            outcomes.clone(),
            config,
            spool,
        )
        .spawn(control_rx)
        .unwrap();
        Harness {
            queue,
            outcomes,
            destinations,
            control,
            worker: Some(worker),
            failures,
        }
    }

    /// Pushes rows `{"i":from}` .. `{"i":to-1}` on the main stream.
    fn push(&self, rows: std::ops::Range<u64>) {
        for i in rows {
            let mut row = self.queue.buffer();
            row.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes());
            assert!(self.queue.push(0, row));
        }
    }

    fn flush(&self, timeout: Duration) -> Option<Incomplete> {
        request_flush(&self.control, Some(timeout))
    }

    fn sent(&self) -> u64 {
        self.outcomes.sent.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.outcomes.failed.load(Ordering::Relaxed)
    }

    fn spooled(&self) -> u64 {
        self.outcomes.spooled.load(Ordering::Relaxed)
    }

    fn shutdown(&mut self) {
        let (reply, done) = crossbeam_channel::bounded(1);
        self.control.send(Control::Shutdown { reply }).unwrap();
        done.recv_timeout(WAIT).expect("the worker stopped");
        self.worker.take().unwrap().join().unwrap();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if self.worker.is_some() {
            self.shutdown();
        }
    }
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The `i` of each pushed row (the worker's diagnostic rows have none).
fn row_numbers(rows: &[String]) -> Vec<u64> {
    rows.iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(r).unwrap()["i"].as_u64())
        .collect()
}

#[test]
fn batches_stay_within_the_cap_and_keep_the_rows_in_order() {
    let transport = Scripted::new(200, |_| Script::Accept);
    let h = Harness::start(transport.clone());
    h.push(0..500);
    assert_eq!(h.flush(WAIT), None);
    let received = transport.received();
    assert!(received.len() >= 500 * 8 / 200, "{} batches", received.len());
    for batch in &received {
        assert!(batch.array_len <= 200, "a batch of {} bytes", batch.array_len);
    }
    let all: Vec<String> = received.iter().flat_map(|b| b.rows.clone()).collect();
    assert_eq!(
        row_numbers(&all),
        (0..500).collect::<Vec<_>>(),
        "every row once, in order"
    );
    assert_eq!(h.sent(), 500);
    assert_eq!(h.failed(), 0);
}

#[test]
fn a_flush_returns_only_once_every_earlier_batch_has_settled() {
    let transport = Scripted::new(1 << 20, |_| Script::Hold);
    let h = Harness::start(transport.clone());
    h.push(0..10);
    assert_eq!(
        h.flush(Duration::from_millis(300)),
        Some(Incomplete::TimedOut),
        "the upload is held"
    );
    assert_eq!(h.sent(), 0);
    h.push(10..20);
    // Both batches in flight (the second closes on age), then one released at a time: the
    // flush answers only when every batch before it settled.
    wait_until("both batches are in flight", || transport.received().len() == 2);
    let (reply, done) = crossbeam_channel::bounded(1);
    h.control.send(Control::Flush { reply }).unwrap();
    transport.release(1);
    wait_until("one batch settled", || h.sent() > 0);
    assert!(
        done.recv_timeout(Duration::from_millis(100)).is_err(),
        "answered before the second batch settled"
    );
    transport.release(100);
    done.recv_timeout(WAIT)
        .expect("the flush is answered once everything settled");
    assert_eq!(h.sent(), 20);
}

#[test]
fn failed_batches_are_counted_once_and_reported_with_their_rows() {
    // Every other batch is refused.
    let transport = Scripted::new(100, |n| if n % 2 == 1 { Script::Fail } else { Script::Accept });
    let h = Harness::start(transport.clone());
    h.push(0..300);
    assert_eq!(h.flush(WAIT), None);
    let received = transport.received();
    let refused: Vec<u64> = received
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 2 == 1)
        .flat_map(|(_, b)| row_numbers(&b.rows))
        .collect();
    assert!(!refused.is_empty());
    let failures = h.failures.lock().unwrap().clone();
    let reported: Vec<u64> = failures.iter().flat_map(|f| row_numbers(f.rows())).collect();
    assert_eq!(reported, refused, "on_error got exactly the refused rows, once");
    assert_eq!(h.failed(), refused.len() as u64);
    assert_eq!(h.sent() + h.failed(), 300);
    let per_stream = &h.destinations.snapshot()[0];
    assert_eq!((per_stream.sent, per_stream.failed), (h.sent(), h.failed()));
    assert!(failures.iter().all(|f| f.stream() == "Custom-Test_CL"));
}

#[test]
fn shutdown_fails_what_is_in_flight_waiting_open_or_queued() {
    let transport = Scripted::new(100, |_| Script::Hold);
    let mut h = Harness::start(transport.clone());
    h.push(0..1_000);
    wait_until("uploads are in flight", || transport.received().len() == 2);
    h.shutdown();
    let (enqueued, dropped) = h.queue.counts();
    assert_eq!(h.sent(), 0);
    assert_eq!(h.failed() + dropped, 1_000, "every row failed or dropped, none lost");
    assert_eq!(enqueued + dropped, 1_000);
    let failures = h.failures.lock().unwrap();
    let mut ids: Vec<usize> = failures.iter().flat_map(|f| f.indices().to_vec()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=1_000).collect::<Vec<_>>(),
        "each row reported once, by its id"
    );
    assert!(
        failures
            .iter()
            .all(|f| matches!(f.reason(), FailureReason::Shutdown(_))),
        "{failures:?}"
    );
}

#[test]
fn a_panicking_upload_fails_its_batch_as_a_bug_and_the_worker_goes_on() {
    let transport = Scripted::new(1 << 20, |n| if n == 0 { Script::Panic } else { Script::Accept });
    let h = Harness::start(transport.clone());
    h.push(0..5);
    assert_eq!(h.flush(WAIT), None);
    h.push(5..8);
    assert_eq!(h.flush(WAIT), None);
    assert_eq!((h.sent(), h.failed()), (3, 5));
    let failures = h.failures.lock().unwrap();
    assert!(
        matches!(failures[0].reason(), FailureReason::UploadPanicked { message } if message.contains("scripted panic")),
        "{failures:?}"
    );
}

/// Rows the transport accepted, by number, each as often as it was accepted.
fn accepted_rows(transport: &Scripted) -> Vec<u64> {
    let mut rows: Vec<u64> = transport
        .received()
        .iter()
        .filter(|r| r.accepted)
        .flat_map(|r| row_numbers(&r.rows))
        .collect();
    rows.sort_unstable();
    rows
}

#[test]
fn an_outage_past_the_retry_deadline_goes_to_the_spool_and_comes_back() {
    let dir = TempDir::new("worker-outage");
    // The first six uploads find the service down for their whole retry deadline.
    let transport = Scripted::new(100, |n| if n < 6 { Script::Down } else { Script::Accept });
    let h = Harness::start_with(transport.clone(), Some(&Spool::dir(&dir.0, 1 << 20)));
    h.push(0..300);
    assert_eq!(h.flush(WAIT), None);
    assert_eq!(h.failed(), 0, "nothing fails: it is spooled");
    // (Replay may be done already: later uploads got through, so the spool is sent at once.)
    wait_until("the spool was sent again", || h.sent() == 300);
    assert_eq!(h.spooled(), 0);
    assert_eq!(
        accepted_rows(&transport),
        (0..300).collect::<Vec<_>>(),
        "every row once"
    );
    assert!(transport.received().iter().any(|r| r.replay && r.accepted));
}

#[test]
fn shutdown_spools_what_it_holds_and_the_next_worker_sends_it() {
    let dir = TempDir::new("worker-restart");
    let spool = Spool::dir(&dir.0, 1 << 20);
    let held = Scripted::new(100, |_| Script::Hold);
    let mut first = Harness::start_with(held.clone(), Some(&spool));
    first.push(0..1_000);
    wait_until("uploads are in flight", || held.received().len() == 2);
    first.shutdown();
    let (enqueued, dropped) = first.queue.counts();
    assert_eq!((first.sent(), first.failed(), dropped), (0, 0, 0));
    assert_eq!(
        first.spooled(),
        1_000,
        "in flight, waiting, open and queued rows are all on disk"
    );
    assert_eq!(enqueued, 1_000);
    drop(first);

    let transport = Scripted::new(100, |_| Script::Accept);
    let second = Harness::start_with(transport.clone(), Some(&spool));
    wait_until("the first process's rows were sent", || {
        second.outcomes.replayed.load(Ordering::Relaxed) == 1_000
    });
    assert_eq!(accepted_rows(&transport), (0..1_000).collect::<Vec<_>>());
    assert_eq!((second.sent(), second.spooled()), (0, 0), "not this process's rows");
    // Confirmed on disk: a third worker would send nothing again.
    let mut second = second;
    second.shutdown();
    assert!(
        spool.open().unwrap().next().unwrap().is_none(),
        "every replayed batch was acked"
    );
}

#[test]
fn a_spool_that_cannot_take_a_batch_fails_it_and_counts_the_error() {
    let dir = TempDir::new("worker-full");
    let transport = Scripted::new(100, |_| Script::Down);
    // Room for a segment header and not one batch.
    let h = Harness::start_with(transport, Some(&Spool::dir(&dir.0, 20)));
    h.push(0..50);
    assert_eq!(h.flush(WAIT), None);
    assert_eq!(h.failed(), 50, "refused by the full spool: failed as without one");
    assert_eq!(h.spooled(), 0);
    assert!(h.outcomes.spool_errors.load(Ordering::Relaxed) > 0);
    let failures = h.failures.lock().unwrap();
    let mut rows = row_numbers(&failures.iter().flat_map(|f| f.rows().to_vec()).collect::<Vec<_>>());
    rows.sort_unstable();
    assert_eq!(
        rows,
        (0..50).collect::<Vec<_>>(),
        "on_error got each refused row's text"
    );
}

#[test]
fn a_full_disk_under_the_spool_fails_what_it_cannot_take_says_so_and_shipping_goes_on() {
    let dir = TempDir::new("worker-enospc");
    // The service is down for the first eight uploads; the disk fills after 1,500 bytes.
    // Batches of up to 1,000 bytes: room for the diagnostic row too.
    let transport = Scripted::new(1_000, |n| if n < 8 { Script::Down } else { Script::Accept });
    let mut spool = Spool::dir(&dir.0, 1 << 20);
    spool.disk = Arc::new(crate::pipeline::spool::tests::FillingDisk {
        room: std::sync::atomic::AtomicU64::new(1_500),
    });
    let h = Harness::start_with(transport.clone(), Some(&spool));
    h.push(0..2_000);
    assert_eq!(h.flush(WAIT), None);
    wait_until("the spooled rows were sent", || h.spooled() == 0);
    let errors = h.outcomes.spool_errors.load(Ordering::Relaxed);
    assert!(errors > 0, "the full disk was counted");
    assert!(
        h.failed() > 0 && h.sent() > 0,
        "sent {} failed {}",
        h.sent(),
        h.failed()
    );
    assert_eq!(h.sent() + h.failed(), 2_000, "every row sent or reported failed");
    let reported: usize = h.failures.lock().unwrap().iter().map(FailedBatch::len).sum();
    assert_eq!(reported as u64, h.failed());
    // A diagnostic row said the spool failed (in a batch of its own time: sent, or spooled and
    // failed like the rows around it while the service was down).
    assert!(
        transport.received().iter().any(|r| r.replay && r.accepted),
        "what the spool took was sent from it"
    );
    let failed_rows = row_numbers(
        &h.failures
            .lock()
            .unwrap()
            .iter()
            .flat_map(|f| f.rows().to_vec())
            .collect::<Vec<_>>(),
    );
    let mut every = accepted_rows(&transport);
    every.extend(failed_rows);
    every.sort_unstable();
    assert_eq!(every, (0..2_000).collect::<Vec<_>>(), "each row sent or failed, once");
    let diagnostic_total = || {
        transport
            .received()
            .iter()
            .flat_map(|r| r.rows.clone())
            .filter_map(|row| serde_json::from_str::<serde_json::Value>(&row).ok())
            .filter_map(|row| row["Properties"]["spool_errors_total"].as_u64())
            .max()
    };
    wait_until("a diagnostic row about the spool was uploaded", || {
        diagnostic_total().is_some()
    });
    assert!(diagnostic_total() >= Some(1));
    // Later rows still go out.
    h.push(2_000..2_010);
    assert_eq!(h.flush(WAIT), None);
    assert_eq!(h.sent() + h.failed(), 2_010);
}

#[test]
fn drop_oldest_moves_this_process_rows_from_spooled_to_dropped() {
    let dir = TempDir::new("worker-drop-oldest");
    let transport = Scripted::new(1_000, |_| Script::Down);
    // Segments of 64 KiB at least, so a 200 KiB bound holds about three of them.
    let spool = Spool::dir(&dir.0, 200 * 1024).when_full(crate::pipeline::spool::SpoolFull::DropOldest);
    let mut h = Harness::start_with(transport, Some(&spool));
    // 1.7 MB of rows that gzip poorly: the spool overflows.
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..20_000u64 {
        let mut row = h.queue.buffer();
        let noise: String = (0..60).map(|_| rng.alphanumeric()).collect();
        row.extend_from_slice(format!("{{\"i\":{i},\"n\":\"{noise}\"}}").as_bytes());
        assert!(h.queue.push(0, row));
    }
    assert_eq!(h.flush(WAIT), None);
    let dropped = h.outcomes.spool_dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "the spool overflowed");
    assert!(h.outcomes.spool_bytes.load(Ordering::Relaxed) <= 200 * 1024);
    assert_eq!(
        h.spooled() + dropped + h.failed() + h.sent(),
        20_000,
        "every row counted once"
    );
    // `spooled` is what the files hold.
    h.shutdown();
    let mut store = spool.open().unwrap();
    let mut on_disk = 0u64;
    while let Some((batch, _, _)) = store.next().unwrap() {
        on_disk += u64::from(batch.rows);
    }
    assert_eq!(h.spooled(), on_disk);
}

fn always(dir: &TempDir) -> Spool {
    Spool::dir(&dir.0, 1 << 20).mode(crate::pipeline::spool::SpoolMode::Always)
}

/// The `i` of every row in the spool's files, read from the files themselves.
fn rows_on_disk(dir: &TempDir) -> Vec<u64> {
    let mut rows = Vec::new();
    for batch in crate::pipeline::spool::tests::batches_on_disk(&dir.0) {
        let mut json = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&batch.body[..]), &mut json).unwrap();
        let values: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        rows.extend(values.iter().filter_map(|v| v["i"].as_u64()));
    }
    rows.sort_unstable();
    rows
}

#[test]
fn always_writes_every_batch_to_disk_before_its_upload_and_drops_it_once_confirmed() {
    let dir = TempDir::new("worker-always");
    let spool = always(&dir);
    let transport = Scripted::new(100, |_| Script::Hold);
    let mut h = Harness::start_with(transport.clone(), Some(&spool));
    h.push(0..40);
    wait_until("uploads are in flight", || transport.received().len() >= 2);
    // Held by the service: what is in flight is in the files already.
    let in_flight: Vec<u64> = row_numbers(
        &transport
            .received()
            .iter()
            .flat_map(|r| r.rows.clone())
            .collect::<Vec<_>>(),
    );
    let on_disk = rows_on_disk(&dir);
    assert!(!in_flight.is_empty());
    assert!(
        in_flight.iter().all(|i| on_disk.contains(i)),
        "in flight {in_flight:?}, on disk {on_disk:?}"
    );
    assert!(transport.received().iter().all(|r| r.replay), "sent as spooled");
    assert!(h.spooled() > 0, "rows in flight are counted spooled");
    transport.release(1_000);
    assert_eq!(h.flush(WAIT), None);
    assert_eq!((h.sent(), h.failed(), h.spooled()), (40, 0, 0));
    assert_eq!(accepted_rows(&transport), (0..40).collect::<Vec<_>>(), "each row once");
    h.shutdown();
    // Confirmed: the next process on the directory sends nothing again.
    assert!(spool.open().unwrap().next().unwrap().is_none());
}

#[test]
fn always_keeps_what_the_service_did_not_take_and_sends_it_when_it_answers() {
    let dir = TempDir::new("worker-always-outage");
    // The first two uploads find the service down for their whole retry deadline (more would
    // only make the test wait through replay's backoff: 1 s, then 2 s, ...).
    let transport = Scripted::new(100, |n| if n < 2 { Script::Down } else { Script::Accept });
    let h = Harness::start_with(transport.clone(), Some(&always(&dir)));
    h.push(0..300);
    assert_eq!(h.flush(WAIT), None);
    wait_until("every row was sent", || h.sent() == 300);
    assert_eq!((h.failed(), h.spooled()), (0, 0));
    assert_eq!(accepted_rows(&transport), (0..300).collect::<Vec<_>>(), "each row once");
    let refused = transport.received().iter().filter(|r| !r.accepted).count();
    assert_eq!(refused, 2, "the outage was seen");
}

#[test]
fn always_on_a_failing_disk_ships_from_memory_and_says_so() {
    #[derive(Debug)]
    struct BrokenDisk;
    impl crate::pipeline::spool::disk::Disk for BrokenDisk {
        fn append(&self, _: &mut std::fs::File, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("Input/output error (os error 5)"))
        }
        fn sync(&self, _: &std::fs::File) -> std::io::Result<()> {
            Err(std::io::Error::other("Input/output error (os error 5)"))
        }
    }
    let dir = TempDir::new("worker-always-eio");
    let mut spool = always(&dir);
    spool.disk = Arc::new(BrokenDisk);
    let transport = Scripted::new(1_000, |_| Script::Accept);
    let h = Harness::start_with(transport.clone(), Some(&spool));
    h.push(0..2_000);
    assert_eq!(h.flush(WAIT), None);
    assert_eq!((h.sent(), h.failed(), h.spooled()), (2_000, 0, 0));
    assert_eq!(accepted_rows(&transport), (0..2_000).collect::<Vec<_>>());
    assert!(transport.received().iter().all(|r| !r.replay), "sent from memory");
    assert!(
        h.outcomes.spool_errors.load(Ordering::Relaxed) > 0,
        "the errors are counted"
    );
    wait_until("a diagnostic row about the spool was uploaded", || {
        transport
            .received()
            .iter()
            .flat_map(|r| r.rows.clone())
            .filter_map(|row| serde_json::from_str::<serde_json::Value>(&row).ok())
            .any(|row| row["Properties"]["spool_errors_total"].as_u64() >= Some(1))
    });
}

#[test]
fn always_puts_every_closed_batch_on_disk_even_while_uploads_stall() {
    let dir = TempDir::new("worker-always-stall");
    // The service holds every request: both upload slots stay taken.
    let transport = Scripted::new(100, |_| Script::Hold);
    let h = Harness::start_with(transport.clone(), Some(&always(&dir)));
    h.push(0..2_000);
    // Nothing waits in memory behind the stalled uploads (a crash would lose it): every row is
    // in the files within a few `max_delay`s, though the queue is far from full.
    wait_until("every row is on disk", || {
        rows_on_disk(&dir) == (0..2_000).collect::<Vec<_>>()
    });
    assert_eq!(h.spooled(), 2_000);
    assert_eq!(transport.received().len(), 2, "two uploads in flight, no more");
    transport.release(1_000_000);
    assert_eq!(h.flush(WAIT), None);
    wait_until("every row was sent", || h.sent() == 2_000);
    let mut accepted = accepted_rows(&transport);
    accepted.dedup();
    assert_eq!(accepted, (0..2_000).collect::<Vec<_>>());
}
