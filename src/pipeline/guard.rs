//! The guard: flush, stats, and a bounded shutdown when it is dropped.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::client::{HealthReport, LogsIngestionClient, run_blocking};
use crate::pipeline::destinations::{Destinations, StreamStats};
use crate::pipeline::queue::Queue;
use crate::pipeline::stats::{FlushReport, Incomplete, Outcomes, Stats, StatsHandle};
use crate::pipeline::worker::Control;
use crate::route::Routes;
use crate::row::RowShape;

/// Keeps the pipeline running. Dropping it flushes (waiting at most the configured flush timeout,
/// default 5 s), then stops the worker; events emitted afterwards are counted as dropped.
///
/// Pitfall: bind it to a named variable that lives until the end of `main` (`let _guard = ...`,
/// not `let _ = ...`, which drops it at once).
#[must_use = "dropping the guard flushes and stops the pipeline: keep it alive until the end of main"]
pub struct AzureLogsGuard {
    pub(crate) queue: Arc<Queue>,
    pub(crate) outcomes: Arc<Outcomes>,
    pub(crate) destinations: Arc<Destinations>,
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
        self.settle(None)
    }

    /// Like [`flush`](Self::flush), but returns after `timeout` at the latest;
    /// `completed` says whether everything was settled by then. (The builder's `flush_timeout`
    /// is the bound of the flush that dropping the guard does.)
    pub fn flush_within(&self, timeout: Duration) -> FlushReport {
        self.settle(Some(timeout))
    }

    /// Checks the running pipeline's configuration: a token, the endpoint, and an upload of `[]`
    /// to every stream rows have gone or can go to (the main one, routes and tables), with a
    /// hint for each problem (see [`LogsIngestionClient::check`]). Blocks the calling thread for
    /// a few requests (each bounded by the request timeout); uploads go on meanwhile.
    pub fn check(&self) -> HealthReport {
        let streams: Vec<(String, String)> = self
            .destinations
            .snapshot()
            .into_iter()
            .map(|s| (s.rule_id, s.stream))
            .collect();
        let client = self.client.clone();
        run_blocking(async move { client.check_streams(&streams).await })
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.stats_handle().get()
    }

    /// A handle that reads the counts, also after the guard is gone (events emitted after
    /// shutdown show up in `dropped`).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            queue: self.queue.clone(),
            outcomes: self.outcomes.clone(),
            client: self.client.clone(),
        }
    }

    /// Sent and failed rows per destination (the main stream first, then routes and tables).
    pub fn stream_stats(&self) -> Vec<StreamStats> {
        self.destinations.snapshot()
    }

    /// Flushes within the configured flush timeout, stops the worker, and reports. Rows not
    /// confirmed by then are counted as failed (and passed to `on_error`).
    ///
    /// Pitfall: on the worker thread (from `on_error`) it cannot wait: it returns at once with
    /// [`Incomplete::OnPipelineThread`] and the worker stops after the callback returns.
    pub fn shutdown(mut self) -> FlushReport {
        self.stop()
    }

    fn settle(&self, timeout: Option<Duration>) -> FlushReport {
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
            self.queue.close();
            let (reply, _) = crossbeam_channel::bounded(1);
            let _ = self.control.send(Control::Shutdown { reply });
            drop(worker);
            return self.report(Some(Incomplete::OnPipelineThread));
        }
        let flushed = self.flush_within(self.flush_timeout);
        self.queue.close();
        let (reply, done) = crossbeam_channel::bounded(1);
        // The worker answers at its next tick; a worker that cannot (it panicked) is not waited for.
        if self.control.send(Control::Shutdown { reply }).is_ok() && done.recv_timeout(Duration::from_secs(2)).is_ok() {
            let _ = worker.join();
        }
        let stats = self.stats();
        if !flushed.completed {
            eprintln!(
                "tracing-azure-logs: stopped after the {:?} flush timeout; {} row(s) were not confirmed \
                 (sent {}, failed {}, dropped {}, spooled {})",
                self.flush_timeout,
                flushed.stats.pending(),
                stats.sent,
                stats.failed,
                stats.dropped,
                stats.spooled
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

impl Drop for AzureLogsGuard {
    fn drop(&mut self) {
        // Blocking here is bounded (flush timeout + 2 s) and never panics, also inside a runtime.
        self.stop();
    }
}
