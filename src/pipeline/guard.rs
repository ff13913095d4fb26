//! The guard: flush, stats, and a bounded shutdown when it is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::client::LogsIngestionClient;
use crate::pipeline::queue::Queue;
use crate::pipeline::streams::{StreamStats, Streams};
use crate::pipeline::worker::Control;
use crate::route::Routes;
use crate::row::RowShape;

/// Counts since the pipeline started.
///
/// Every row the application emitted ends up in exactly one of `dropped` (the queue was full, or
/// the pipeline had stopped), `sent` (accepted by the service), `failed` (reported through
/// `on_error`), or is still pending: `enqueued - sent - failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Rows put on the queue.
    pub enqueued: u64,
    /// Rows dropped because the queue was full or the pipeline had stopped.
    pub dropped: u64,
    /// Rows the service accepted.
    pub sent: u64,
    /// Rows reported failed (too large, rejected, retries exhausted, or unconfirmed at shutdown).
    pub failed: u64,
    /// HTTP requests that were retries.
    pub retried: u64,
    /// HTTP requests made.
    pub uploads: u64,
    /// Request body bytes put on the wire (gzipped), retries included.
    pub wire_bytes: u64,
    /// Diagnostic rows the worker added to the log stream to report drops (not in `sent`).
    pub diagnostic_rows: u64,
    /// Rows the queue can take now, out of `queue_capacity`: what is neither waiting for the
    /// worker nor lent to a thread's open page (each is lent up to a 256th of the capacity, and
    /// the worker takes back what a page idle for 20 ms did not use). At 0, the next thread that
    /// needs room drops its row (or waits, under `FullPolicy::Block`).
    pub queue_room: u64,
}

impl Stats {
    /// Rows enqueued but not yet sent or reported failed.
    pub fn pending(&self) -> u64 {
        self.enqueued.saturating_sub(self.sent + self.failed)
    }
}

/// The result of a flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FlushReport {
    /// Whether every row enqueued before the flush was sent or reported failed in time.
    pub completed: bool,
    /// Why not, when `completed` is false.
    pub incomplete: Option<Incomplete>,
    /// The counts when the flush returned.
    pub stats: Stats,
}

/// Why a flush returned before every earlier row was settled. The rows are not lost by that: they
/// stay in the pipeline (unless it was stopped, when they are counted failed or dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incomplete {
    /// The timeout passed first (a slow or unreachable service).
    TimedOut,
    /// Called on one of the crate's own threads (from `on_error`, which runs on the worker): that
    /// thread cannot wait for itself, so the call returned at once. Flush from another thread.
    OnPipelineThread,
    /// The worker had stopped (after shutdown, or a panic).
    Stopped,
}

/// Keeps the pipeline running. Dropping it flushes (waiting at most the configured flush timeout,
/// default 5 s), then stops the worker; events emitted afterwards are counted as dropped.
///
/// Pitfall: bind it to a named variable that lives until the end of `main` (`let _guard = ...`,
/// not `let _ = ...`, which drops it at once).
#[must_use = "dropping the guard flushes and stops the pipeline: keep it alive until the end of main"]
pub struct AzureLogsGuard {
    pub(crate) shared: Arc<Queue>,
    pub(crate) registry: Arc<Streams>,
    pub(crate) shape: Arc<RowShape>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) client: LogsIngestionClient,
    pub(crate) control: Sender<Control>,
    pub(crate) worker: Option<JoinHandle<()>>,
    pub(crate) flush_timeout: Duration,
}

impl std::fmt::Debug for AzureLogsGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLogsGuard")
            .field("stats", &self.stats())
            .field("flush_timeout", &self.flush_timeout)
            .finish_non_exhaustive()
    }
}

impl AzureLogsGuard {
    /// Waits until every row enqueued before this call is accepted by the service or reported
    /// failed. Bounded by the retry policy's deadline per batch, not by the flush timeout.
    ///
    /// Pitfall: called on the worker thread (from `on_error`), it returns at once with
    /// `completed: false` and [`Incomplete::OnPipelineThread`]: the worker cannot wait for itself.
    pub fn flush(&self) -> FlushReport {
        self.flush_within(None)
    }

    /// Like [`flush`](Self::flush), but returns after `timeout` at the latest;
    /// `completed` says whether everything was settled by then.
    pub fn flush_timeout(&self, timeout: Duration) -> FlushReport {
        self.flush_within(Some(timeout))
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.stats_handle().get()
    }

    /// A handle that reads the counts, also after the guard is gone (events emitted after
    /// shutdown show up in `dropped`).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            shared: self.shared.clone(),
            client: self.client.clone(),
        }
    }

    /// Sent and failed rows per destination (the main stream first, then routes and tables).
    pub fn stream_stats(&self) -> Vec<StreamStats> {
        self.registry.snapshot()
    }

    /// Flushes within the configured flush timeout, stops the worker, and reports. Rows not
    /// confirmed by then are counted as failed (and passed to `on_error`).
    ///
    /// Pitfall: on the worker thread (from `on_error`) it cannot wait: it returns at once with
    /// [`Incomplete::OnPipelineThread`] and the worker stops after the callback returns.
    pub fn shutdown(mut self) -> FlushReport {
        self.stop()
    }

    fn flush_within(&self, timeout: Option<Duration>) -> FlushReport {
        // `on_error` runs on the worker: waiting there for the worker would wait forever.
        if crate::thread_role::is_pipeline_worker() {
            return self.report(Some(Incomplete::OnPipelineThread));
        }
        self.report(request_flush(&self.control, timeout))
    }

    fn report(&self, incomplete: Option<Incomplete>) -> FlushReport {
        FlushReport {
            completed: incomplete.is_none(),
            incomplete,
            stats: self.stats(),
        }
    }

    fn stop(&mut self) -> FlushReport {
        let Some(worker) = self.worker.take() else {
            return self.report(None);
        };
        if crate::thread_role::is_pipeline_worker() {
            // Dropped from `on_error` (on the worker itself): it cannot wait for itself. It stops
            // once the callback returns, failing what it holds; rows after this are dropped.
            self.shared.close();
            let (reply, _) = crossbeam_channel::bounded(1);
            let _ = self.control.send(Control::Shutdown { reply });
            drop(worker);
            return self.report(Some(Incomplete::OnPipelineThread));
        }
        let flushed = self.flush_timeout(self.flush_timeout);
        self.shared.close();
        let (reply, done) = crossbeam_channel::bounded(1);
        // The worker answers at its next tick; a worker that cannot (it panicked) is not waited for.
        if self.control.send(Control::Shutdown { reply }).is_ok() && done.recv_timeout(Duration::from_secs(2)).is_ok() {
            let _ = worker.join();
        }
        let stats = self.stats();
        if !flushed.completed {
            eprintln!(
                "tracing-azure-logs: stopped after the {:?} flush timeout; {} row(s) were not confirmed (sent {}, failed {}, dropped {})",
                self.flush_timeout,
                flushed.stats.pending(),
                stats.sent,
                stats.failed,
                stats.dropped
            );
        }
        FlushReport {
            completed: flushed.completed,
            incomplete: flushed.incomplete,
            stats,
        }
    }
}

/// Asks the worker to settle every row enqueued so far and waits for it (at most `timeout`);
/// why it did not, if it did not.
pub(crate) fn request_flush(control: &Sender<Control>, timeout: Option<Duration>) -> Option<Incomplete> {
    let (reply, done) = crossbeam_channel::bounded(1);
    if control.send(Control::Flush { reply }).is_err() {
        return Some(Incomplete::Stopped);
    }
    let answered = match timeout {
        Some(t) => done.recv_timeout(t).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => Incomplete::TimedOut,
            crossbeam_channel::RecvTimeoutError::Disconnected => Incomplete::Stopped,
        }),
        None => done.recv().map_err(|_| Incomplete::Stopped),
    };
    answered.err()
}

/// Reads a pipeline's counts; cheap to clone, usable after the guard is dropped.
#[derive(Clone)]
pub struct StatsHandle {
    shared: Arc<Queue>,
    client: LogsIngestionClient,
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsHandle").field(&self.get()).finish()
    }
}

impl StatsHandle {
    /// The counts now.
    pub fn get(&self) -> Stats {
        let c = &self.shared.counters;
        let client = self.client.counters();
        let (enqueued, dropped) = self.shared.counts();
        Stats {
            enqueued,
            dropped,
            sent: c.sent.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: client.retries.load(Ordering::Relaxed),
            uploads: client.requests.load(Ordering::Relaxed),
            wire_bytes: client.wire_bytes.load(Ordering::Relaxed),
            diagnostic_rows: c.diagnostic_rows.load(Ordering::Relaxed),
            queue_room: self.shared.room() as u64,
        }
    }
}

impl Drop for AzureLogsGuard {
    fn drop(&mut self) {
        // Blocking here is bounded (flush timeout + 2 s) and never panics, also inside a runtime.
        self.stop();
    }
}
