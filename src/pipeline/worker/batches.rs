//! Batching: rows drained from the queue into one open batch per stream, closed on size and age,
//! then started as uploads, `max_concurrency` at a time.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;

use super::{DRAIN_PER_TICK, Finished, Ready, Sent, Uploaded, Uploading, Worker, panic_message};
use crate::client::FailureReason;
use crate::client::batch::{BatchBuilder, Push};
use crate::client::row_too_large;
use crate::pipeline::destinations::Destination;
use crate::row::json::lossy;

/// What [`Worker::add`] did with a row.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    Yes,
    /// The stream's open batch is full and a closed one is already waiting for a slot.
    Blocked,
    TooLarge,
    UnknownStream,
}

/// One destination's batching state.
pub(super) struct Stream {
    pub(super) destination: Destination,
    pub(super) builder: BatchBuilder,
    pub(super) opened: Option<Instant>,
    /// Batches of this stream closed so far.
    pub(super) closed: u64,
}

impl Worker {
    /// Moves queued rows into their streams' builders while no stream is blocked on a full batch.
    pub(super) fn drain(&mut self) {
        let mut reader = std::mem::take(&mut self.reader);
        let queue = self.queue.clone();
        reader.read(&queue, DRAIN_PER_TICK, |stream, row| self.place(stream, row));
        self.reader = reader;
    }

    /// Adds a row to its stream's batch, or returns false when that stream already has a closed
    /// batch waiting and this row does not fit the open one (the row is left where it is).
    pub(super) fn place(&mut self, stream: u32, row: &[u8]) -> bool {
        let row_id = self.taken as usize + 1;
        let mut added = self.add(stream, row, row_id);
        // With a spool, the waiting batch goes to disk rather than leave rows in a queue that
        // would soon drop them (the service is slow or down); then the row fits.
        if added == Added::Blocked && self.spill_waiting(stream) {
            added = self.add(stream, row, row_id);
        }
        match added {
            Added::Yes => {}
            Added::Blocked => return false,
            Added::TooLarge => {
                let reason = row_too_large(row, self.transport.max_uncompressed());
                let destination = self.destination(stream);
                let text = lossy(row);
                self.report(&destination, reason, vec![row_id], vec![text]);
            }
            Added::UnknownStream => {
                // Ids come from the registry, so this cannot happen; count the row rather than
                // lose it silently.
                let reason = FailureReason::InvalidRow(format!("unknown destination {stream}"));
                self.fail_rows(vec![row_id], reason);
            }
        }
        // Per row, so that a panic later in this drain still finds every placed row counted.
        self.count_taken(1);
        true
    }

    /// Pushes `row` into the open batch of `stream`, closing that batch first when the row does not
    /// fit and no closed batch of the stream is already waiting.
    pub(super) fn add(&mut self, stream: u32, row: &[u8], row_id: usize) -> Added {
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
    pub(super) fn waiting(&self, stream: u32) -> bool {
        self.ready.iter().any(|r| r.stream == stream)
    }

    /// Closes the open batch of `stream`, if it has rows, into the ready list.
    pub(super) fn close(&mut self, stream: u32) {
        let Some(s) = self.streams.get_mut(stream as usize).and_then(Option::as_mut) else {
            return;
        };
        s.opened = None;
        if let Some(batch) = s.builder.take() {
            s.closed += 1;
            let destination = s.destination.clone();
            let id = self.next_batch;
            self.next_batch += 1;
            // With `SpoolMode::Always`, on disk from now on.
            let (lent, memory) = self.spool_before_upload(&destination, batch);
            self.ready.push_back(Ready {
                id,
                stream,
                lent,
                memory,
            });
        }
    }

    /// Closes the open batches older than `max_delay`, except where a closed batch still waits
    /// and cannot go to the spool (see [`spill_waiting`](Self::spill_waiting)).
    pub(super) fn close_aged(&mut self) {
        let max_delay = self.config.max_delay;
        for stream in 0..self.streams.len() as u32 {
            let aged = self.streams[stream as usize]
                .as_ref()
                .and_then(|s| s.opened)
                .is_some_and(|t| t.elapsed() >= max_delay);
            if aged && (!self.waiting(stream) || self.spill_waiting(stream)) {
                self.close(stream);
            }
        }
    }

    /// Starts uploads of the ready batches while slots are free: parts on disk
    /// (`SpoolMode::Always`) are sent as the gzip written there, parts in memory through the
    /// transport.
    pub(super) fn start_uploads(&mut self) {
        while self.in_flight.len() < self.transport.max_concurrency() {
            let Some(Ready {
                id,
                stream,
                lent,
                memory,
            }) = self.ready.pop_front()
            else {
                return;
            };
            let destination = self.destination(stream);
            let ids = memory.iter().flat_map(|b| b.ids().iter().copied()).collect();
            let copies = if self.has_spool() { memory.clone() } else { Vec::new() };
            let mut parts = Vec::with_capacity(lent.len());
            let mut lent_sends = Vec::with_capacity(lent.len());
            for (part, body) in lent {
                lent_sends.push((part.start, self.transport.send_body(&destination, body)));
                parts.push(part);
            }
            let memory_sends: Vec<_> = memory
                .into_iter()
                .map(|batch| self.transport.send(&destination, batch))
                .collect();
            self.uploading.insert(
                id,
                Uploading {
                    stream,
                    ids,
                    copies,
                    lent: parts,
                },
            );
            let sending = async move {
                let mut sent = Vec::new();
                for (start, sending) in lent_sends {
                    sent.push(Sent::Lent(start, sending.await));
                }
                for sending in memory_sends {
                    sent.extend(sending.await.into_iter().map(|(b, o)| Sent::Memory(b, o)));
                }
                sent
            };
            self.in_flight.push(Box::pin(async move {
                // A panic in an upload (a bug) fails its batch instead of the worker.
                let parts = AssertUnwindSafe(sending)
                    .catch_unwind()
                    .await
                    .map_err(|panic| panic_message(&*panic).to_owned());
                Finished::Batch(Uploaded { id, stream, parts })
            }));
        }
    }
}
