//! The disk spool from the worker's side. A batch whose retries ran out, and at shutdown every
//! batch and queued row not yet confirmed, go to disk instead of failing; with
//! `SpoolMode::Always`, every closed batch too, before its first upload. Spooled batches are
//! sent again oldest first in the upload slots the new rows leave free (one at a time until the
//! service answers), and confirmed ones leave the spool. When the spool cannot take a batch (full, a disk error), it goes on from memory: sent,
//! or failed as it would be without a spool, and the error is counted.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::{Finished, Worker, panic_message};
use crate::client::batch::{Batch, BatchBuilder, Compressed, Push, compress_fitting};
use crate::client::{FailedBatch, FailureReason, MAX_BODY_BYTES, SendOutcome};
use crate::pipeline::destinations::Destination;
use crate::pipeline::spool::{Position, Spool, SpoolError, SpoolMode, SpoolStore, SpoolSync, SpooledBatch};

/// The first wait after a spooled batch could not be sent again, and the longest.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(30);

/// The spool and where its replay stands.
pub(crate) struct SpoolState {
    store: SpoolStore,
    sync: SpoolSync,
    mode: SpoolMode,
    /// Written since the last sync.
    dirty: bool,
    synced: Instant,
    /// Spooled batches being sent: one at a time until one got through, then as many as
    /// upload slots are free after the new rows' batches.
    replaying: usize,
    /// The last spooled batch sent (or a new batch) got through.
    answering: bool,
    /// After a failed replay: no new one before this.
    paused_until: Option<Instant>,
    pause: Duration,
    /// The first spool error, said once on stderr.
    said: bool,
    /// Losses of the store already accounted for.
    losses_seen: usize,
    /// After the spool refused a waiting batch: no new try before this (a full spool or a
    /// failing disk is not asked again on every tick).
    refused_until: Option<Instant>,
}

impl SpoolState {
    pub(crate) fn new(store: SpoolStore, spool: &Spool) -> Self {
        SpoolState {
            store,
            sync: spool.sync,
            mode: spool.mode,
            dirty: false,
            synced: Instant::now(),
            replaying: 0,
            answering: false,
            paused_until: None,
            pause: FIRST_PAUSE,
            said: false,
            losses_seen: 0,
            refused_until: None,
        }
    }

    /// Says on stderr what recovery found lost in the spool an earlier process left (those rows
    /// are in no count of this process), and starts accounting from there.
    pub(crate) fn report_recovery(&mut self) {
        for loss in self.store.lost() {
            eprintln!(
                "tracing-azure-logs: spool recovery: {} byte(s) of segment {} from offset {} are lost: {}",
                loss.bytes, loss.segment, loss.offset, loss.reason
            );
        }
        self.losses_seen = self.store.lost().len();
    }
}

/// A part of a batch written to the spool before its upload (`SpoolMode::Always`): where it
/// starts there, and its rows (for `on_error` if the service refuses it).
pub(super) struct LentPart {
    pub(super) start: Position,
    batch: Batch,
}

/// A spooled batch sent again, and how it went.
pub(super) struct Replayed {
    rule_id: String,
    stream: String,
    first_row: u64,
    rows: u32,
    /// Where the batch starts in the spool.
    start: Position,
    /// Written by this process (its rows are in `Stats::spooled`), not by an earlier one.
    own: bool,
    outcome: Result<SendOutcome, String>,
}

impl Worker {
    /// Writes `batch` (a part that could not be delivered now) to the spool. Gives back what the
    /// spool could not take (no spool, full, a disk error), for the caller to fail.
    pub(super) fn spill(&mut self, destination: &Destination, batch: Batch) -> Vec<Batch> {
        let Some(spool) = self.spool.as_mut() else {
            return vec![batch];
        };
        // Level 1: spilling happens while the service is down and the queue fills; the parts
        // were sent at the client's level, so split again if this gzip is bigger.
        let fitted = compress_fitting(batch, 1, MAX_BODY_BYTES);
        let mut unspooled: Vec<Batch> = fitted.too_large.into_iter().map(|(b, _)| b).collect();
        let mut error = None;
        for Compressed { batch, body } in fitted.bodies {
            if error.is_some() {
                unspooled.push(batch);
                continue;
            }
            let rows = super::report::app_rows(batch.ids()) as u32;
            let record = SpooledBatch {
                rule_id: destination.rule_id.clone(),
                stream: destination.stream.clone(),
                first_row: batch.ids().first().copied().unwrap_or_default() as u64,
                rows,
                body,
            };
            let written = spool.store.append(&record).and_then(|()| match spool.sync {
                SpoolSync::EveryBatch => spool.store.sync(),
                _ => Ok(()),
            });
            match written {
                Ok(()) => {
                    spool.dirty = true;
                    self.outcomes.spooled.fetch_add(u64::from(rows), Ordering::Relaxed);
                }
                Err(e) => {
                    error = Some(e);
                    unspooled.push(batch);
                }
            }
        }
        if let Some(error) = error {
            self.spool_error(&error);
        }
        self.account_spool();
        unspooled
    }

    /// Brings the counts up to date with the store: its size and backlog, and rows of this process that
    /// `DropOldest` deleted to make room (they move from `spooled` to `dropped`; their text is
    /// gone, so `on_error` does not get them, and the first such drop is said on stderr).
    pub(super) fn account_spool(&mut self) {
        let Some(spool) = self.spool.as_mut() else { return };
        self.outcomes
            .spool_bytes
            .store(spool.store.bytes_on_disk(), Ordering::Relaxed);
        self.outcomes
            .spool_backlog
            .store(spool.store.backlog(), Ordering::Relaxed);
        let new: Vec<_> = spool.store.lost()[spool.losses_seen..].to_vec();
        spool.losses_seen = spool.store.lost().len();
        for loss in new {
            let Some(rows) = loss.rows.filter(|&n| n > 0) else {
                continue;
            };
            // Rows an earlier process left are in no count of this one.
            if spool.store.written_here(loss.segment) {
                self.outcomes.spooled.fetch_sub(rows, Ordering::Relaxed);
                self.outcomes.spool_dropped.fetch_add(rows, Ordering::Relaxed);
            }
            if !spool.said {
                spool.said = true;
                eprintln!(
                    "tracing-azure-logs: the spool is full: {rows} row(s) of its oldest batches were dropped to make \
                     room (counted in Stats::dropped); raise its max_bytes"
                );
            }
        }
    }

    /// Frees the upload slot a closed batch of `stream` waits for, so the stream can go on: a
    /// batch already on disk (`SpoolMode::Always`) goes back to the spool, to be sent from there;
    /// one in memory is written to the spool when the queue is more than half full. Whether the
    /// slot is free now.
    pub(super) fn spill_waiting(&mut self, stream: u32) -> bool {
        let Some(index) = self.ready.iter().position(|r| r.stream == stream) else {
            return false;
        };
        let refused = |s: &SpoolState| s.refused_until.is_some_and(|t| Instant::now() < t);
        let may_spill = self.spool.as_ref().is_some_and(|s| !refused(s)) && self.queue.under_pressure();
        if !self.ready[index].memory.is_empty() && !may_spill {
            return false;
        }
        let super::Ready { id, lent, memory, .. } = self.ready.remove(index).expect("found above");
        for (part, _) in lent {
            self.give_back_lent(part);
        }
        if memory.is_empty() {
            return true;
        }
        let destination = self.destination(stream);
        let rows: usize = memory.iter().map(Batch::len).sum();
        let original = memory.clone();
        let left: Vec<Batch> = memory
            .into_iter()
            .flat_map(|batch| self.spill(&destination, batch))
            .collect();
        if left.is_empty() {
            return true;
        }
        if let Some(spool) = self.spool.as_mut() {
            spool.refused_until = Some(Instant::now() + FIRST_PAUSE);
        }
        if left.iter().map(Batch::len).sum::<usize>() == rows {
            // The spool took none of it: it waits for a slot, as without a spool.
            self.ready.insert(
                index,
                super::Ready {
                    id,
                    stream,
                    lent: Vec::new(),
                    memory: original,
                },
            );
            return false;
        }
        // Split, and only some parts spooled (the spool filled up or failed in between).
        for part in left {
            let reason = FailureReason::NotSpooled {
                message: "see Stats::spool_errors and the first error on stderr".into(),
            };
            self.fail_batch(&destination, reason, &part);
        }
        true
    }

    /// With `SpoolMode::Always`: writes `batch` to the spool before its upload, gzipped as the
    /// transport sends it. The parts written (with the body to send) and the parts the spool
    /// could not take (full, a disk error: sent from memory, and the error counted).
    pub(super) fn spool_before_upload(
        &mut self,
        destination: &Destination,
        batch: Batch,
    ) -> (Vec<(LentPart, Vec<u8>)>, Vec<Batch>) {
        let level = self.transport.gzip_level();
        let taking =
            |s: &SpoolState| s.mode == SpoolMode::Always && s.refused_until.is_none_or(|t| Instant::now() >= t);
        let Some(spool) = self.spool.as_mut().filter(|s| taking(s)) else {
            return (Vec::new(), vec![batch]);
        };
        let fitted = compress_fitting(batch, level, MAX_BODY_BYTES);
        // Rows too large even alone fail in the transport, as without a spool.
        let mut memory: Vec<Batch> = fitted.too_large.into_iter().map(|(b, _)| b).collect();
        let mut lent = Vec::new();
        let mut errors = Vec::new();
        for Compressed { batch, body } in fitted.bodies {
            if !errors.is_empty() {
                memory.push(batch);
                continue;
            }
            let rows = super::report::app_rows(batch.ids()) as u32;
            let mut record = SpooledBatch {
                rule_id: destination.rule_id.clone(),
                stream: destination.stream.clone(),
                first_row: batch.ids().first().copied().unwrap_or_default() as u64,
                rows,
                body,
            };
            match spool.store.append_lent(&record) {
                Ok(start) => {
                    spool.dirty = true;
                    self.outcomes.spooled.fetch_add(u64::from(rows), Ordering::Relaxed);
                    lent.push((LentPart { start, batch }, std::mem::take(&mut record.body)));
                }
                Err(e) => {
                    errors.push(e);
                    memory.push(batch);
                }
            }
        }
        if spool.sync == SpoolSync::EveryBatch
            && !lent.is_empty()
            && let Err(e) = spool.store.sync()
        {
            // Written, not known durable: sent all the same.
            errors.push(e);
        }
        if !errors.is_empty() {
            spool.refused_until = Some(Instant::now() + FIRST_PAUSE);
        }
        for error in &errors {
            self.spool_error(error);
        }
        self.account_spool();
        (lent, memory)
    }

    /// A part sent from the spool settled: confirmed or refused for good, it leaves the spool
    /// (counted sent, or failed and handed to `on_error`); not delivered now (retries ran out,
    /// authentication), it stays there to be sent again.
    pub(super) fn settle_lent(&mut self, destination: &Destination, stream: u32, part: LentPart, outcome: SendOutcome) {
        let result = match outcome.result {
            Err(FailureReason::RetriesExhausted { .. } | FailureReason::Authentication { .. }) => {
                return self.give_back_lent(part);
            }
            result => result,
        };
        let Some(spool) = self.spool.as_mut() else { return };
        if let Err(e) = spool.store.settle(part.start) {
            self.spool_error(&e);
        }
        self.account_spool();
        let rows = super::report::app_rows(part.batch.ids());
        self.outcomes.spooled.fetch_sub(rows, Ordering::Relaxed);
        match result {
            Ok(()) => {
                self.outcomes.sent.fetch_add(rows, Ordering::Relaxed);
                let diagnostic_rows = part.batch.len() as u64 - rows;
                self.outcomes
                    .diagnostic_rows
                    .fetch_add(diagnostic_rows, Ordering::Relaxed);
                self.destinations.count(stream, rows, 0);
                self.service_answers();
            }
            Err(reason) => {
                self.destinations.count(stream, 0, rows);
                // `report` counts them failed.
                self.fail_batch(destination, reason, &part.batch);
            }
        }
    }

    /// A part sent from the spool was not delivered: it stays there, to be sent again; if its
    /// segment was dropped to make room meanwhile, its rows are lost and counted dropped.
    pub(super) fn give_back_lent(&mut self, part: LentPart) {
        let Some(spool) = self.spool.as_mut() else { return };
        if !spool.store.give_back(part.start) {
            let rows = super::report::app_rows(part.batch.ids());
            self.outcomes.spooled.fetch_sub(rows, Ordering::Relaxed);
            self.outcomes.spool_dropped.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Counts a spool error, and says the first one on stderr.
    fn spool_error(&mut self, error: &SpoolError) {
        self.outcomes.spool_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(spool) = self.spool.as_mut()
            && !spool.said
        {
            spool.said = true;
            eprintln!(
                "tracing-azure-logs: {error}; batches that cannot be spooled are reported failed \
                 (further spool errors are counted in Stats::spool_errors)"
            );
        }
    }

    /// Syncs what was spooled, per the policy; `now` at shutdown whatever the interval.
    pub(super) fn sync_spool(&mut self, now: bool) {
        let Some(spool) = self.spool.as_mut() else { return };
        let due = match spool.sync {
            SpoolSync::Interval(every) => now || spool.synced.elapsed() >= every,
            // Each batch is synced as it is written; the cursor goes with the default interval.
            SpoolSync::EveryBatch => now || spool.synced.elapsed() >= SpoolSync::default_interval(),
            SpoolSync::Never => false,
        };
        let due = due || (now && spool.sync == SpoolSync::Never);
        if !due {
            return;
        }
        spool.synced = Instant::now();
        let mut result = Ok(());
        if spool.dirty && spool.sync != SpoolSync::Never {
            spool.dirty = false;
            result = spool.store.sync();
        }
        // The cursor of what the service confirmed: at the same pace (it costs an fsync), so
        // that a crash sends again at most this interval's confirmed batches.
        let result = result.and_then(|()| spool.store.save_cursor());
        if let Err(e) = result {
            self.spool_error(&e);
        }
        self.account_spool();
    }

    /// Starts sending the oldest spooled batches while upload slots are free after the new
    /// rows' batches and no failed replay asks to wait: one at a time until the service has
    /// answered, then as many as slots are free.
    pub(super) fn start_replay(&mut self) {
        while self.start_one_replay() {}
    }

    fn start_one_replay(&mut self) -> bool {
        let free = self.in_flight.len() < self.transport.max_concurrency();
        let Some(spool) = self.spool.as_mut() else { return false };
        if (spool.replaying > 0 && !spool.answering)
            || !free
            || spool.store.unread() == 0
            || spool.paused_until.is_some_and(|t| Instant::now() < t)
        {
            return false;
        }
        let (batch, start, _) = match spool.store.next() {
            Ok(Some(next)) => next,
            Ok(None) => return false,
            Err(e) => {
                self.spool_error(&e);
                return false;
            }
        };
        spool.replaying += 1;
        let own = spool.store.written_here(start.segment);
        let destination = Destination {
            rule_id: batch.rule_id,
            stream: batch.stream,
        };
        let sending = self.transport.send_body(&destination, batch.body);
        let (first_row, rows) = (batch.first_row, batch.rows);
        self.in_flight.push(Box::pin(async move {
            let outcome = AssertUnwindSafe(sending)
                .catch_unwind()
                .await
                .map_err(|panic| panic_message(&*panic).to_owned());
            Finished::Replay(Replayed {
                rule_id: destination.rule_id,
                stream: destination.stream,
                first_row,
                rows,
                start,
                own,
                outcome,
            })
        }));
        true
    }

    /// A spooled batch was sent again: confirmed ones leave the spool; one the service cannot
    /// take now goes back, and replay waits (1 s, doubling to 30 s, or until a new batch gets
    /// through); one it refuses for good is reported and leaves the spool.
    pub(super) fn settle_replay(&mut self, done: Replayed) {
        let Some(spool) = self.spool.as_mut() else { return };
        spool.replaying -= 1;
        let rows = u64::from(done.rows);
        let result = match done.outcome {
            Ok(outcome) => outcome.result,
            Err(panic) => Err(FailureReason::UploadPanicked { message: panic }),
        };
        let retry_later = matches!(
            result,
            Err(FailureReason::RetriesExhausted { .. } | FailureReason::Authentication { .. })
        );
        if retry_later {
            if !spool.store.give_back(done.start) && done.own {
                // Its segment was dropped to make room while it was being sent: lost.
                self.outcomes.spooled.fetch_sub(rows, Ordering::Relaxed);
                self.outcomes.spool_dropped.fetch_add(rows, Ordering::Relaxed);
            }
            spool.answering = false;
            // Replays in flight together fail together: one pause for them.
            if spool.paused_until.is_none_or(|t| Instant::now() >= t) {
                spool.paused_until = Some(Instant::now() + spool.pause);
                spool.pause = (spool.pause * 2).min(LONGEST_PAUSE);
            }
            return;
        }
        spool.pause = FIRST_PAUSE;
        spool.paused_until = None;
        spool.answering = true;
        let settled = spool.store.settle(done.start);
        if let Err(e) = settled {
            self.spool_error(&e);
        }
        self.account_spool();
        let outcomes = &self.outcomes;
        match result {
            Ok(()) if done.own => {
                outcomes.spooled.fetch_sub(rows, Ordering::Relaxed);
                outcomes.sent.fetch_add(rows, Ordering::Relaxed);
            }
            Ok(()) => {
                outcomes.replayed.fetch_add(rows, Ordering::Relaxed);
            }
            Err(reason) => {
                if done.own {
                    outcomes.spooled.fetch_sub(rows, Ordering::Relaxed);
                    outcomes.failed.fetch_add(rows, Ordering::Relaxed);
                }
                let failed = FailedBatch {
                    rule_id: done.rule_id,
                    stream: done.stream,
                    reason,
                    indices: (done.first_row as usize..(done.first_row + rows) as usize).collect(),
                    rows: Vec::new(),
                };
                self.deliver(failed, rows);
            }
        }
    }

    /// A batch got through: the service answers again, so replay need not wait.
    pub(super) fn service_answers(&mut self) {
        if let Some(spool) = self.spool.as_mut() {
            spool.paused_until = None;
            spool.pause = FIRST_PAUSE;
            spool.answering = true;
        }
    }

    /// At shutdown, with a spool: the rows still queued, in batches per destination, go to the
    /// spool. Returns how many rows it took off the queue and the ids of those it could not
    /// spool.
    pub(super) fn spool_queued(&mut self) -> (u64, Vec<usize>) {
        let mut builders: Vec<(u32, BatchBuilder)> = Vec::new();
        let mut closed: Vec<(u32, Batch)> = Vec::new();
        let first = self.taken as usize + 1;
        let mut taken = 0u64;
        let max = self.transport.max_uncompressed();
        let mut unknown = Vec::new();
        let mut reader = std::mem::take(&mut self.reader);
        let queue = self.queue.clone();
        reader.read_revoking_all(&queue, |stream, row| {
            let id = first + taken as usize;
            taken += 1;
            let index = match builders.iter().position(|(s, _)| *s == stream) {
                Some(i) => i,
                None => {
                    builders.push((stream, BatchBuilder::new(max)));
                    builders.len() - 1
                }
            };
            let builder = &mut builders[index].1;
            match builder.push(row, id) {
                Push::Added => {}
                Push::Full => {
                    closed.extend(builder.take().map(|b| (stream, b)));
                    if builder.push(row, id) != Push::Added {
                        unknown.push(id);
                    }
                }
                Push::TooLarge => unknown.push(id),
            }
            true
        });
        self.reader = reader;
        closed.extend(builders.into_iter().filter_map(|(s, mut b)| b.take().map(|b| (s, b))));
        let mut unspooled = unknown;
        for (stream, batch) in closed {
            let Some(destination) = self.destinations.get(stream) else {
                unspooled.extend_from_slice(batch.ids());
                continue;
            };
            for left in self.spill(&destination, batch) {
                unspooled.extend_from_slice(left.ids());
            }
        }
        (taken, unspooled)
    }

    pub(super) fn has_spool(&self) -> bool {
        self.spool.is_some()
    }
}
