//! The background worker: one thread with a current-thread tokio runtime, marked as the crate's
//! own (`thread_role`), so the HTTP stack's own events never re-enter the pipeline.
//!
//! Every tick it drains the queue into one batch builder per stream, closes batches on size, on
//! age (`max_delay`) and on flush, and keeps up to `max_concurrency` uploads in flight. It never
//! holds more than one closed batch per stream waiting for a free upload slot: when uploads fall
//! behind, rows stay in the bounded queue (which then drops and counts), so there is no unbounded
//! second buffer.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::Url;

use crate::client::batch::{Batch, BatchBuilder, Push};
use crate::client::{FailedBatch, FailureReason, LogsIngestionClient, OnError, SendOutcome};
use crate::pipeline::queue::{Marks, Queue, Reader};
use crate::pipeline::streams::{Streams, Target};
use crate::row::RowShape;
use crate::row::json::lossy;

/// How often the worker looks at the queue. Producers never wake it.
const TICK: Duration = Duration::from_millis(5);
/// Rows drained per tick at most, so control messages and finished uploads are seen promptly.
const DRAIN_PER_TICK: usize = 50_000;
/// Row ids at or above this mark the worker's own diagnostic rows.
const DIAGNOSTIC_ID: usize = 1 << 62;

/// Messages from the guard and from handles.
pub(crate) enum Control {
    /// Settle every row enqueued before this message was sent, then reply.
    Flush { reply: Sender<()> },
    /// Stop: abandon what is not sent, then reply.
    Shutdown { reply: Sender<()> },
}

/// Settings the worker runs with.
pub(crate) struct WorkerConfig {
    pub(crate) max_delay: Duration,
    pub(crate) diagnostic_interval: Duration,
    pub(crate) on_error: Option<OnError>,
    pub(crate) shape: Arc<RowShape>,
}

/// What [`Worker::add`] did with a row.
#[derive(Debug, PartialEq, Eq)]
enum Added {
    Yes,
    /// The stream's open batch is full and a closed one is already waiting for a slot.
    Blocked,
    TooLarge,
    UnknownStream,
}

/// An upload's result: its batch id, stream, and each part sent, or the panic that ended it.
type Uploaded = (u64, u32, Result<Vec<(Batch, SendOutcome)>, String>);
type Upload = Pin<Box<dyn Future<Output = Uploaded> + Send>>;

struct Stream {
    target: Target,
    url: Url,
    builder: BatchBuilder,
    opened: Option<Instant>,
    /// Batches of this stream closed so far.
    closed: u64,
}

/// A flush asked for and not yet answered.
struct PendingFlush {
    stage: Stage,
    /// Flushes asked for while this one waited for its rows join it (its marks cover theirs),
    /// and so do later flushes whose batches this one waits for anyway.
    replies: Vec<Sender<()>>,
}

/// Where a flush is: its rows are read, then the open batches holding them are closed, then the
/// closed batches settle.
enum Stage {
    /// How far each page must be read: the rows published before the flush was asked for.
    Reading(Marks),
    /// Each stream whose open batch held some of its rows, and the count of closed batches that
    /// stream has to reach. Streams close one by one: under overload a stream's slot for a
    /// waiting batch is free only now and then, and rarely for every stream at once.
    Closing(Vec<(u32, u64)>),
    /// Every row is in a closed batch: batches with lower ids must settle.
    Settling(u64),
}

impl PendingFlush {
    /// Whether `later` is done once this flush is: it needs no batch closed or settled that this
    /// one does not.
    fn covers(&self, later: &PendingFlush) -> bool {
        match (&self.stage, &later.stage) {
            (Stage::Settling(mine), Stage::Settling(theirs)) => mine == theirs,
            (Stage::Closing(mine), Stage::Closing(theirs)) => theirs
                .iter()
                .all(|&(stream, closed)| mine.iter().any(|&(s, c)| s == stream && c >= closed)),
            _ => false,
        }
    }
}

pub(crate) struct Worker {
    queue: Arc<Queue>,
    registry: Arc<Streams>,
    client: LogsIngestionClient,
    config: WorkerConfig,
    streams: Vec<Option<Stream>>,
    ready: VecDeque<(u64, u32, Batch)>,
    in_flight: FuturesUnordered<Upload>,
    /// Stream and row ids of each batch in flight: with `ready`, every batch not yet settled (for
    /// flush marks), and what to count failed if the pipeline stops first.
    uploading: HashMap<u64, (u32, Vec<usize>)>,
    next_batch: u64,
    taken: u64,
    /// The pages producers publish rows in, and how far each is read. A row whose stream has a
    /// closed batch waiting stays in its page until there is room.
    reader: Reader,
    flushes: Vec<PendingFlush>,
    reported_drops: u64,
    last_diagnostic: Option<Instant>,
    diagnostics: usize,
}

impl Worker {
    pub(crate) fn new(
        queue: Arc<Queue>,
        registry: Arc<Streams>,
        client: LogsIngestionClient,
        config: WorkerConfig,
    ) -> Self {
        Worker {
            queue,
            registry,
            client,
            config,
            streams: Vec::new(),
            ready: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            uploading: HashMap::new(),
            next_batch: 0,
            taken: 0,
            reader: Reader::default(),
            flushes: Vec::new(),
            reported_drops: 0,
            last_diagnostic: None,
            diagnostics: 0,
        }
    }

    /// Starts the worker thread.
    pub(crate) fn spawn(self, control: Receiver<Control>) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tracing-azure-logs".into())
            .spawn(move || self.run_on_this_thread(control))
    }

    fn run_on_this_thread(self, control: Receiver<Control>) {
        // Producers skip rows made on this thread (the HTTP stack's events): see `thread_role`.
        let _role = crate::thread_role::enter_worker();
        let queue = self.queue.clone();
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("tracing-azure-logs: cannot start the worker's runtime, rows will not be sent: {e}");
                queue.stop();
                return;
            }
        };
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| runtime.block_on(self.run(control))));
        if let Err(panic) = ran {
            // A bug, not an input: keep the books straight and stop taking rows. Rows the worker
            // held are counted failed; rows queued from now on, dropped.
            queue.stop();
            let c = &queue.counters;
            let settled = c.sent.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed);
            let held = c.taken.load(Ordering::Acquire).saturating_sub(settled);
            c.failed.fetch_add(held, Ordering::Relaxed);
            eprintln!(
                "tracing-azure-logs: the worker stopped after a panic ({}); {held} row(s) it held are counted failed, \
                 later events are dropped",
                panic_message(&*panic)
            );
        }
    }

    /// The stream with id `id`, set up on first use from the registry.
    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        let index = id as usize;
        if self.streams.get(index).is_none_or(Option::is_none) {
            let target = self.registry.target(id)?;
            if self.streams.len() <= index {
                self.streams.resize_with(index + 1, || None);
            }
            let url = self.client.stream_url(&target.rule_id, &target.stream);
            self.streams[index] = Some(Stream {
                target,
                url,
                builder: BatchBuilder::new(self.client.max_uncompressed()),
                opened: None,
                closed: 0,
            });
        }
        self.streams[index].as_mut()
    }

    async fn run(mut self, control: Receiver<Control>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Ok(message) = control.try_recv() {
                match message {
                    // Every row published before the flush was sent is in a page now; the marks
                    // say how far to read each page (rows published since may be covered too).
                    Control::Flush { reply } => {
                        let wait = self.reader.marks(&self.queue);
                        // It joins the newest flush if that one is still waiting for its rows
                        // and is not the oldest flush doing so: the oldest keeps its marks, so
                        // flushes that keep coming cannot hold it back (under overload the reader
                        // would never reach marks that move forward), and at most two flushes
                        // wait for rows at any time.
                        let reading = self
                            .flushes
                            .iter()
                            .filter(|f| matches!(f.stage, Stage::Reading(_)))
                            .count();
                        match self.flushes.last_mut() {
                            Some(last) if matches!(last.stage, Stage::Reading(_)) && reading >= 2 => {
                                last.stage = Stage::Reading(wait);
                                last.replies.push(reply);
                            }
                            _ => self.flushes.push(PendingFlush {
                                stage: Stage::Reading(wait),
                                replies: vec![reply],
                            }),
                        }
                    }
                    Control::Shutdown { reply } => {
                        self.abandon();
                        let _ = reply.send(());
                        return;
                    }
                }
            }
            // Before the drain, which under overload leaves every open batch full.
            self.diagnose();
            self.drain();
            self.close_aged();
            self.mark_flushes();
            self.start_uploads();
            self.finish_flushes();

            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => self.settle(done),
            }
        }
    }

    /// Moves queued rows into their streams' builders while no stream is blocked on a full batch.
    fn drain(&mut self) {
        let mut reader = std::mem::take(&mut self.reader);
        let queue = self.queue.clone();
        reader.read(&queue, DRAIN_PER_TICK, |stream, row| self.place(stream, row));
        self.reader = reader;
    }

    /// Adds a row to its stream's batch, or returns false when that stream already has a closed
    /// batch waiting and this row does not fit the open one (the row is left where it is).
    fn place(&mut self, stream: u32, row: &[u8]) -> bool {
        let row_id = self.taken as usize + 1;
        match self.add(stream, row, row_id) {
            Added::Yes => {}
            Added::Blocked => return false,
            Added::TooLarge => {
                let reason = self.client.row_too_large(row);
                let target = self.target(stream);
                let text = lossy(row);
                self.report(&target, reason, vec![row_id], vec![text]);
            }
            Added::UnknownStream => {
                // Ids come from the registry, so this cannot happen; count the row rather than
                // lose it silently.
                let reason = FailureReason::InvalidRow(format!("unknown destination {stream}"));
                self.fail_rows(1, reason);
            }
        }
        // Per row, so that a panic later in this drain still finds every placed row counted.
        self.count_taken(1);
        true
    }

    /// Pushes `row` into the open batch of `stream`, closing that batch first when the row does not
    /// fit and no closed batch of the stream is already waiting.
    fn add(&mut self, stream: u32, row: &[u8], row_id: usize) -> Added {
        let Some(open) = self.stream(stream) else {
            return Added::UnknownStream;
        };
        match open.builder.push(row, row_id) {
            Push::Added => {
                open.opened.get_or_insert_with(Instant::now);
                Added::Yes
            }
            Push::TooLarge => Added::TooLarge,
            Push::Full if self.waiting(stream) => Added::Blocked,
            Push::Full => {
                self.close(stream);
                let open = self.streams[stream as usize].as_mut().expect("set up above");
                let pushed = open.builder.push(row, row_id);
                debug_assert_eq!(pushed, Push::Added, "a row that fits alone fits an empty batch");
                open.opened = Some(Instant::now());
                Added::Yes
            }
        }
    }

    /// Whether a closed batch of `stream` waits for an upload slot (there is at most one).
    fn waiting(&self, stream: u32) -> bool {
        self.ready.iter().any(|(_, s, _)| *s == stream)
    }

    /// Closes the open batch of `stream`, if it has rows, into the ready list.
    fn close(&mut self, stream: u32) {
        let Some(s) = self.streams.get_mut(stream as usize).and_then(Option::as_mut) else {
            return;
        };
        s.opened = None;
        if let Some(batch) = s.builder.take() {
            s.closed += 1;
            let id = self.next_batch;
            self.next_batch += 1;
            self.ready.push_back((id, stream, batch));
        }
    }

    /// Closes the open batches older than `max_delay`, except where a closed batch still waits.
    fn close_aged(&mut self) {
        let max_delay = self.config.max_delay;
        for stream in 0..self.streams.len() as u32 {
            let aged = self.streams[stream as usize]
                .as_ref()
                .and_then(|s| s.opened)
                .is_some_and(|t| t.elapsed() >= max_delay);
            if aged && !self.waiting(stream) {
                self.close(stream);
            }
        }
    }

    /// Moves flushes on: once a flush's rows are all read, the open batches holding them are
    /// closed, each as soon as its stream has no closed batch waiting (never a second one: that is
    /// what keeps the worker's memory bounded when uploads stall and flushes are frequent). Then
    /// the flush records its mark.
    fn mark_flushes(&mut self) {
        let mut flushes = std::mem::take(&mut self.flushes);
        for flush in &mut flushes {
            if let Stage::Reading(wait) = &flush.stage {
                if !self.reader.reached(wait) {
                    continue;
                }
                let holding = self.streams.iter().enumerate().filter_map(|(i, s)| {
                    let s = s.as_ref().filter(|s| !s.builder.is_empty())?;
                    Some((i as u32, s.closed + 1))
                });
                flush.stage = Stage::Closing(holding.collect());
            }
            let Stage::Closing(closing) = &mut flush.stage else {
                continue;
            };
            closing.retain(|&(stream, closed)| {
                let stream_closed = |w: &Worker| w.streams[stream as usize].as_ref().map_or(0, |s| s.closed);
                if stream_closed(self) < closed && !self.waiting(stream) {
                    self.close(stream);
                }
                stream_closed(self) < closed
            });
            if closing.is_empty() {
                flush.stage = Stage::Settling(self.next_batch);
            }
        }
        // A stalled service leaves flushes waiting; merged, they stay a handful.
        flushes.dedup_by(|later, earlier| {
            let merge = earlier.covers(later);
            if merge {
                earlier.replies.append(&mut later.replies);
            }
            merge
        });
        self.flushes = flushes;
    }

    fn finish_flushes(&mut self) {
        // Batches get increasing ids and wait in `ready` in order, so the oldest unsettled one is
        // the front of `ready` or an upload in flight.
        let waiting = self.ready.front().map(|(id, _, _)| *id);
        let oldest = self.uploading.keys().copied().chain(waiting).min().unwrap_or(u64::MAX);
        self.flushes.retain(|flush| match flush.stage {
            Stage::Settling(mark) if oldest >= mark => {
                for reply in &flush.replies {
                    let _ = reply.send(());
                }
                false
            }
            _ => true,
        });
    }

    fn start_uploads(&mut self) {
        while self.in_flight.len() < self.client.max_concurrency() {
            let Some((id, stream, batch)) = self.ready.pop_front() else {
                return;
            };
            self.uploading.insert(id, (stream, batch.ids().to_vec()));
            let client = self.client.clone();
            let url = self.streams[stream as usize]
                .as_ref()
                .expect("set up when its rows arrived")
                .url
                .clone();
            self.in_flight.push(Box::pin(async move {
                // A panic in an upload (a bug) fails its batch instead of the worker.
                let done = AssertUnwindSafe(client.send_batch(&url, batch))
                    .catch_unwind()
                    .await
                    .map_err(|panic| panic_message(&*panic).to_owned());
                (id, stream, done)
            }));
        }
    }

    fn settle(&mut self, (id, stream, done): Uploaded) {
        let ids = self.uploading.remove(&id).map(|(_, ids)| ids).unwrap_or_default();
        let done = match done {
            Ok(done) => done,
            Err(panic) => {
                let target = self.target(stream);
                let reason = FailureReason::RetriesExhausted {
                    attempts: 0,
                    last_error: format!("internal error, the upload panicked: {panic}"),
                };
                self.report(&target, reason, ids, Vec::new());
                return;
            }
        };
        let counters = &self.queue.counters;
        let target = self.target(stream);
        for (batch, outcome) in done {
            let app_rows = batch.ids().iter().filter(|&&id| id < DIAGNOSTIC_ID).count() as u64;
            let diagnostic_rows = batch.len() as u64 - app_rows;
            match outcome.result {
                None => {
                    counters.sent.fetch_add(app_rows, Ordering::Relaxed);
                    counters.diagnostic_rows.fetch_add(diagnostic_rows, Ordering::Relaxed);
                    self.registry.count(stream, app_rows, 0);
                }
                Some(reason) => {
                    self.registry.count(stream, 0, app_rows);
                    self.fail_batch(&target, reason, &batch);
                }
            }
        }
    }

    /// Counts `n` failed rows that have no batch (no text to hand back).
    /// Rows that failed before they had a destination (so the report names none).
    fn fail_rows(&self, n: u64, reason: FailureReason) {
        self.queue.counters.failed.fetch_add(n, Ordering::Relaxed);
        let failed = FailedBatch {
            rule_id: String::new(),
            stream: String::new(),
            reason,
            indices: Vec::new(),
            rows: Vec::new(),
        };
        self.deliver(failed, n);
    }

    /// Reports a batch's rows failed, handing their text to `on_error`.
    fn fail_batch(&self, target: &Target, reason: FailureReason, batch: &Batch) {
        let rows = batch.rows().map(lossy).collect();
        self.report(target, reason, batch.ids().to_vec(), rows);
    }

    /// Counts the rows `ids` (with their text `rows`, or none) failed and hands them to
    /// `on_error`. The worker's own diagnostic rows are left out of both, so what `on_error`
    /// receives adds up to `Stats::failed`; a batch of diagnostic rows alone is not reported.
    fn report(&self, target: &Target, reason: FailureReason, ids: Vec<usize>, rows: Vec<String>) {
        let (ids, rows) = if ids.iter().all(|&id| id < DIAGNOSTIC_ID) {
            (ids, rows)
        } else if rows.len() == ids.len() {
            ids.into_iter().zip(rows).filter(|&(id, _)| id < DIAGNOSTIC_ID).unzip()
        } else {
            (ids.into_iter().filter(|&id| id < DIAGNOSTIC_ID).collect(), rows)
        };
        if ids.is_empty() {
            return;
        }
        let app_rows = ids.len() as u64;
        self.queue.counters.failed.fetch_add(app_rows, Ordering::Relaxed);
        let failed = FailedBatch {
            rule_id: target.rule_id.clone(),
            stream: target.stream.clone(),
            reason,
            indices: ids,
            rows,
        };
        self.deliver(failed, app_rows);
    }

    fn deliver(&self, failed: FailedBatch, rows: u64) {
        match &self.config.on_error {
            Some(on_error) => {
                // A panicking callback must not take the worker down.
                let on_error = on_error.clone();
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || on_error(failed)));
            }
            None if rows > 0 => eprintln!(
                "tracing-azure-logs: {rows} row(s) for {} not delivered: {}",
                failed.stream, failed.reason
            ),
            None => {}
        }
    }

    /// While rows are being dropped, adds one row per interval to the main stream saying how many.
    /// When the stream has no room for it, it tries again on the next tick.
    fn diagnose(&mut self) {
        let dropped = self.queue.dropped();
        if dropped == self.reported_drops {
            return;
        }
        if self
            .last_diagnostic
            .is_some_and(|t| t.elapsed() < self.config.diagnostic_interval)
        {
            return;
        }
        let new = dropped - self.reported_drops;
        let mut row = Vec::with_capacity(512);
        crate::row::encode::encode_diagnostic(&self.config.shape, &mut row, new, dropped);
        let id = DIAGNOSTIC_ID + self.diagnostics;
        if self.add(0, &row, id) == Added::Yes {
            self.reported_drops = dropped;
            self.last_diagnostic = Some(Instant::now());
            self.diagnostics += 1;
        }
    }

    /// At shutdown: everything not yet confirmed is reported failed, so that
    /// `sent + failed + dropped` still equals what was emitted.
    fn abandon(&mut self) {
        let reason = |what: &str| FailureReason::Shutdown(what.to_owned());
        // Dropping an upload cancels it; the service may or may not have stored its rows.
        drop(std::mem::take(&mut self.in_flight));
        for (_, (stream, ids)) in std::mem::take(&mut self.uploading) {
            let target = self.target(stream);
            self.report(
                &target,
                reason("the request was in flight; the service may have stored it"),
                ids,
                Vec::new(),
            );
        }
        for (_, stream, batch) in std::mem::take(&mut self.ready) {
            self.fail_batch(&self.target(stream), reason("the batch was waiting to be sent"), &batch);
        }
        for index in 0..self.streams.len() {
            let Some(stream) = self.streams[index].as_mut() else {
                continue;
            };
            let Some(batch) = stream.builder.take() else { continue };
            let target = stream.target.clone();
            self.fail_batch(&target, reason("the batch was still open"), &batch);
        }
        let queued = self.reader.discard(&self.queue);
        self.count_taken(queued);
        self.queue.stop();
        if queued > 0 {
            self.fail_rows(queued, reason("the rows were still queued"));
        }
    }

    /// Counts rows taken off the queue, where [`Queue::counts`] sees them.
    fn count_taken(&mut self, rows: u64) {
        self.taken += rows;
        self.queue.counters.taken.store(self.taken, Ordering::Release);
    }

    fn target(&self, stream: u32) -> Target {
        self.streams[stream as usize]
            .as_ref()
            .expect("registered")
            .target
            .clone()
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}
