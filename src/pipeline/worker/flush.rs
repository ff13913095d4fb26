//! Flushes: a flush waits until its rows are read, then until the open batches holding them are
//! closed, then until every batch closed before it has settled.

use crossbeam_channel::Sender;

use super::Worker;
use crate::pipeline::queue::Marks;

/// A flush asked for and not yet answered.
pub(super) struct PendingFlush {
    stage: Stage,
    /// Flushes asked for while this one waited for its rows join it (its marks cover theirs),
    /// and so do later flushes whose batches this one waits for anyway.
    replies: Vec<Sender<()>>,
}

/// Where a flush is: its rows are read, then the open batches holding them are closed, then the
/// closed batches settle.
pub(super) enum Stage {
    /// How far each page must be read: the rows published before the flush was asked for.
    Reading(Marks),
    /// Each stream whose open batch held some of its rows, and the count of closed batches that
    /// stream has to reach. Destinations close one by one: under overload a stream's slot for a
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

impl Worker {
    /// Takes a flush request: every row published before it was sent is in a page now, and the
    /// marks say how far to read each page (rows published since may be covered too).
    pub(super) fn ask_flush(&mut self, reply: Sender<()>) {
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

    /// Moves flushes on: once a flush's rows are all read, the open batches holding them are
    /// closed, each as soon as its stream has no closed batch waiting (never a second one: that is
    /// what keeps the worker's memory bounded when uploads stall and flushes are frequent). Then
    /// the flush records its mark.
    pub(super) fn mark_flushes(&mut self) {
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
                if stream_closed(self) < closed && (!self.waiting(stream) || self.spill_waiting(stream)) {
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

    pub(super) fn finish_flushes(&mut self) {
        // Batches get increasing ids and wait in `ready` in order, so the oldest unsettled one is
        // the front of `ready` or an upload in flight.
        let waiting = self.ready.front().map(|r| r.id);
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
}
