//! The background worker: one thread with a current-thread tokio runtime, marked as the crate's
//! own (`thread_role`), so the HTTP stack's own events never re-enter the pipeline.
//!
//! Every tick it drains the queue into one batch builder per stream (`batches`), closes batches
//! on size, on age (`max_delay`) and on flush (`flush`), and keeps up to `max_concurrency`
//! uploads in flight through its [`Transport`]; settled batches are counted and failures reported
//! (`report`). It never holds more than one closed batch per stream waiting for a free upload
//! slot: when uploads fall behind, rows stay in the bounded queue (which then drops and counts),
//! so there is no unbounded second buffer.

mod batches;
mod flush;
mod report;
pub(crate) mod spill;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::client::batch::{Batch, BatchBuilder};
use crate::client::{OnError, SendOutcome};
use crate::pipeline::destinations::{Destination, Destinations};
use crate::pipeline::queue::{Queue, Reader};
use crate::pipeline::spool::Position;
use crate::pipeline::stats::Outcomes;
use crate::pipeline::transport::Transport;
use crate::row::RowShape;

use batches::Stream;
use flush::PendingFlush;
use spill::SpoolState;

/// How often the worker looks at the queue. Producers never wake it.
const TICK: Duration = Duration::from_millis(5);
/// Rows drained per tick at most, so control messages and finished uploads are seen promptly.
const DRAIN_PER_TICK: usize = 50_000;

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

/// A closed batch waiting for an upload slot. Batches get increasing ids as they close. With
/// `SpoolMode::Always` it was written to the spool as it closed: its parts there (with the gzip
/// to send) and the parts the spool could not take; otherwise it is one part in memory.
struct Ready {
    id: u64,
    stream: u32,
    lent: Vec<(spill::LentPart, Vec<u8>)>,
    memory: Vec<Batch>,
}

/// A batch being uploaded: what to count failed (or, with a spool, to spool) if the pipeline
/// stops first.
struct Uploading {
    stream: u32,
    /// The rows sent from memory.
    ids: Vec<usize>,
    /// A copy of the parts sent from memory, kept only with a spool.
    copies: Vec<Batch>,
    /// The parts sent from the spool (`SpoolMode::Always`).
    lent: Vec<spill::LentPart>,
}

/// An upload's result: each part sent, or the panic that ended it.
struct Uploaded {
    id: u64,
    stream: u32,
    parts: Result<Vec<Sent>, String>,
}

/// A part of a batch, sent: from memory, or from the spool (where it starts there).
enum Sent {
    Memory(Batch, SendOutcome),
    Lent(Position, SendOutcome),
}

/// What an upload in flight comes to: a batch of new rows, or a spooled batch sent again.
enum Finished {
    Batch(Uploaded),
    Replay(spill::Replayed),
}

type Upload = Pin<Box<dyn Future<Output = Finished> + Send>>;

pub(crate) struct Worker {
    queue: Arc<Queue>,
    destinations: Arc<Destinations>,
    transport: Arc<dyn Transport>,
    outcomes: Arc<Outcomes>,
    config: WorkerConfig,
    streams: Vec<Option<Stream>>,
    ready: VecDeque<Ready>,
    in_flight: FuturesUnordered<Upload>,
    /// Each batch in flight by id: with `ready`, every batch not yet settled (for flush marks),
    /// and what to count failed if the pipeline stops first.
    uploading: HashMap<u64, Uploading>,
    next_batch: u64,
    taken: u64,
    /// The pages producers publish rows in, and how far each is read. A row whose stream has a
    /// closed batch waiting stays in its page until there is room.
    reader: Reader,
    flushes: Vec<PendingFlush>,
    reported_drops: u64,
    reported_spool_errors: u64,
    last_diagnostic: Option<Instant>,
    diagnostics: usize,
    spool: Option<SpoolState>,
}

impl Worker {
    pub(crate) fn new(
        queue: Arc<Queue>,
        destinations: Arc<Destinations>,
        transport: Arc<dyn Transport>,
        outcomes: Arc<Outcomes>,
        config: WorkerConfig,
        spool: Option<SpoolState>,
    ) -> Self {
        let mut worker = Worker {
            queue,
            destinations,
            transport,
            outcomes,
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
            reported_spool_errors: 0,
            last_diagnostic: None,
            diagnostics: 0,
            spool,
        };
        // What an earlier process left in the spool is in the counts before the first event.
        worker.account_spool();
        worker
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
        let outcomes = self.outcomes.clone();
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
            let taken = queue.counters.taken.load(Ordering::Acquire);
            let held = taken.saturating_sub(outcomes.settled());
            outcomes.failed.fetch_add(held, Ordering::Relaxed);
            eprintln!(
                "tracing-azure-logs: the worker stopped after a panic ({}); {held} row(s) it held are counted failed, \
                 later events are dropped",
                panic_message(&*panic)
            );
        }
    }

    /// The stream with id `id`, set up on first use from the destinations.
    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        let index = id as usize;
        if self.streams.get(index).is_none_or(Option::is_none) {
            let destination = self.destinations.get(id)?;
            if self.streams.len() <= index {
                self.streams.resize_with(index + 1, || None);
            }
            self.streams[index] = Some(Stream {
                destination,
                builder: BatchBuilder::new(self.transport.max_uncompressed()),
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
                    Control::Flush { reply } => self.ask_flush(reply),
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
            self.start_replay();
            self.finish_flushes();
            self.sync_spool(false);

            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => match done {
                    Finished::Batch(done) => self.settle(done),
                    Finished::Replay(done) => self.settle_replay(done),
                },
            }
        }
    }

    fn destination(&self, stream: u32) -> Destination {
        self.streams[stream as usize]
            .as_ref()
            .expect("registered")
            .destination
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
