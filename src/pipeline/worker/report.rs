//! What becomes of settled batches: rows counted sent or failed (per destination too), failures
//! handed to `on_error`, the diagnostic row about drops, and everything failed at shutdown.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::batches::Added;
use super::{Ready, Sent, Uploaded, Uploading, Worker};
use crate::client::batch::Batch;
use crate::client::{FailedBatch, FailureReason};
use crate::pipeline::destinations::Destination;
use crate::row::json::lossy;

/// Row ids at or above this mark the worker's own diagnostic rows.
const DIAGNOSTIC_ID: usize = 1 << 62;

/// Whether row id `id` is one of the worker's diagnostic rows (not the application's).
pub(super) fn is_diagnostic(id: usize) -> bool {
    id >= DIAGNOSTIC_ID
}

/// How many of the rows `ids` are the application's (not diagnostic rows).
pub(super) fn app_rows(ids: &[usize]) -> u64 {
    ids.iter().filter(|&&id| !is_diagnostic(id)).count() as u64
}

impl Worker {
    pub(super) fn settle(&mut self, Uploaded { id, stream, parts }: Uploaded) {
        let Some(Uploading { ids, mut lent, .. }) = self.uploading.remove(&id) else {
            return;
        };
        let destination = self.destination(stream);
        let done = match parts {
            Ok(done) => done,
            Err(panic) => {
                for part in lent {
                    self.give_back_lent(part);
                }
                let reason = FailureReason::UploadPanicked { message: panic };
                self.report(&destination, reason, ids, Vec::new());
                return;
            }
        };
        let counters = self.outcomes.clone();
        for part in done {
            let (batch, outcome) = match part {
                Sent::Memory(batch, outcome) => (batch, outcome),
                Sent::Lent(start, outcome) => {
                    if let Some(i) = lent.iter().position(|p| p.start == start) {
                        self.settle_lent(&destination, stream, lent.swap_remove(i), outcome);
                    }
                    continue;
                }
            };
            let mine = app_rows(batch.ids());
            let diagnostic_rows = batch.len() as u64 - mine;
            match outcome.result {
                Ok(()) => {
                    counters.sent.fetch_add(mine, Ordering::Relaxed);
                    counters.diagnostic_rows.fetch_add(diagnostic_rows, Ordering::Relaxed);
                    self.destinations.count(stream, mine, 0);
                    self.service_answers();
                }
                // The service stayed down for the whole retry deadline: to the spool, if any.
                Err(reason @ FailureReason::RetriesExhausted { .. }) => {
                    for left in self.spill(&destination, batch) {
                        self.destinations.count(stream, 0, app_rows(left.ids()));
                        self.fail_batch(&destination, reason.clone(), &left);
                    }
                }
                Err(reason) => {
                    self.destinations.count(stream, 0, mine);
                    self.fail_batch(&destination, reason, &batch);
                }
            }
        }
    }

    /// Counts the rows `ids` failed without a destination or text to hand back (rows still
    /// queued at shutdown): `on_error` gets their ids, an empty stream and no rows.
    pub(super) fn fail_rows(&self, ids: Vec<usize>, reason: FailureReason) {
        let n = ids.len() as u64;
        self.outcomes.failed.fetch_add(n, Ordering::Relaxed);
        let failed = FailedBatch {
            rule_id: String::new(),
            stream: String::new(),
            reason,
            indices: ids,
            rows: Vec::new(),
        };
        self.deliver(failed, n);
    }

    /// Reports a batch's rows failed, handing their text to `on_error`.
    pub(super) fn fail_batch(&self, destination: &Destination, reason: FailureReason, batch: &Batch) {
        let rows = batch.rows().map(lossy).collect();
        self.report(destination, reason, batch.ids().to_vec(), rows);
    }

    /// Counts the rows `ids` (with their text `rows`, or none) failed and hands them to
    /// `on_error`. The worker's own diagnostic rows are left out of both, so what `on_error`
    /// receives adds up to `Stats::failed`; a batch of diagnostic rows alone is not reported.
    pub(super) fn report(&self, destination: &Destination, reason: FailureReason, ids: Vec<usize>, rows: Vec<String>) {
        let (ids, rows) = if ids.iter().all(|&id| !is_diagnostic(id)) {
            (ids, rows)
        } else if rows.len() == ids.len() {
            ids.into_iter().zip(rows).filter(|&(id, _)| !is_diagnostic(id)).unzip()
        } else {
            (ids.into_iter().filter(|&id| !is_diagnostic(id)).collect(), rows)
        };
        if ids.is_empty() {
            return;
        }
        let app_rows = ids.len() as u64;
        self.outcomes.failed.fetch_add(app_rows, Ordering::Relaxed);
        let failed = FailedBatch {
            rule_id: destination.rule_id.clone(),
            stream: destination.stream.clone(),
            reason,
            indices: ids,
            rows,
        };
        self.deliver(failed, app_rows);
    }

    pub(super) fn deliver(&self, failed: FailedBatch, rows: u64) {
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
    pub(super) fn diagnose(&mut self) {
        if self
            .last_diagnostic
            .is_some_and(|t| t.elapsed() < self.config.diagnostic_interval)
        {
            return;
        }
        let shape = self.config.shape.clone();
        let mut row = Vec::with_capacity(512);
        let dropped = self.queue.dropped();
        if dropped != self.reported_drops {
            let new = dropped - self.reported_drops;
            crate::row::encode::encode_diagnostic(&shape, &mut row, new, dropped);
            if self.add_diagnostic(&row) {
                self.reported_drops = dropped;
            }
            return;
        }
        let errors = self.outcomes.spool_errors.load(Ordering::Relaxed);
        if errors != self.reported_spool_errors {
            let new = errors - self.reported_spool_errors;
            crate::row::encode::encode_spool_diagnostic(&shape, &mut row, new, errors);
            if self.add_diagnostic(&row) {
                self.reported_spool_errors = errors;
            }
        }
    }

    /// Adds a diagnostic row to the main stream; whether there was room for it now.
    fn add_diagnostic(&mut self, row: &[u8]) -> bool {
        let id = DIAGNOSTIC_ID + self.diagnostics;
        let added = self.add(0, row, id) == Added::Yes;
        if added {
            self.last_diagnostic = Some(Instant::now());
            self.diagnostics += 1;
        }
        added
    }

    /// At shutdown: everything not yet confirmed is reported failed, so that
    /// `sent + failed + dropped` still equals what was emitted.
    pub(super) fn abandon(&mut self) {
        let reason = |what: &str| FailureReason::Shutdown(what.to_owned());
        // Dropping an upload cancels it; the service may or may not have stored its rows.
        drop(std::mem::take(&mut self.in_flight));
        // With a spool, every batch goes there first; what it cannot take fails.
        // Parts sent from the spool stay there, to be sent again by the next process.
        for (
            _,
            Uploading {
                stream, ids, copies, ..
            },
        ) in std::mem::take(&mut self.uploading)
        {
            let destination = self.destination(stream);
            let why = reason("the request was in flight; the service may have stored it");
            if !self.has_spool() {
                self.report(&destination, why, ids, Vec::new());
                continue;
            }
            for batch in copies {
                for left in self.spill(&destination, batch) {
                    self.fail_batch(&destination, why.clone(), &left);
                }
            }
        }
        // Parts on disk already (`SpoolMode::Always`) stay there.
        for Ready { stream, memory, .. } in std::mem::take(&mut self.ready) {
            let destination = self.destination(stream);
            for batch in memory {
                for left in self.spill(&destination, batch) {
                    self.fail_batch(&destination, reason("the batch was waiting to be sent"), &left);
                }
            }
        }
        for index in 0..self.streams.len() {
            let Some(stream) = self.streams[index].as_mut() else {
                continue;
            };
            let Some(batch) = stream.builder.take() else { continue };
            let destination = stream.destination.clone();
            for left in self.spill(&destination, batch) {
                self.fail_batch(&destination, reason("the batch was still open"), &left);
            }
        }
        let first = self.taken as usize + 1;
        let (queued, unspooled) = if self.has_spool() {
            self.spool_queued()
        } else {
            let queued = self.reader.discard(&self.queue);
            (queued, (first..first + queued as usize).collect())
        };
        self.count_taken(queued);
        self.queue.stop();
        if !unspooled.is_empty() {
            self.fail_rows(unspooled, reason("the rows were still queued"));
        }
        self.sync_spool(true);
    }

    /// Counts rows taken off the queue, where [`Queue::counts`] sees them.
    pub(super) fn count_taken(&mut self, rows: u64) {
        self.taken += rows;
        self.queue.counters.taken.store(self.taken, Ordering::Release);
    }
}
