//! Handing spooled batches out and taking them back: every batch handed out is lent until it is
//! settled (confirmed, or refused for good) or given back (handed out again first). The cursor
//! moves only past the first batch not yet confirmed, so confirmations may come in any order.

use std::fs::{self, File};
use std::io::{BufReader, Seek, SeekFrom};

use super::cursor::{self, Position};
use super::frame::{Frame, SpooledBatch, read_frame};
use super::{Lent, Loss, MAGIC_LEN, Segment, SpoolError, SpoolStore, io_error, segment_name};

impl SpoolStore {
    /// The oldest batch not yet handed out (given-back ones first), where it starts (to pass to
    /// [`settle`](Self::settle) or [`give_back`](Self::give_back)) and where it ends. Reads one
    /// frame; the batch is lent until then.
    pub(crate) fn next(&mut self) -> Result<Option<(SpooledBatch, Position, Position)>, SpoolError> {
        while let Some((start, lent)) = self.returned.pop_first() {
            self.unread = self.unread.saturating_sub(1);
            if let Some(batch) = self.read_lent(start, lent)? {
                return Ok(Some((batch, start, lent.after)));
            }
        }
        loop {
            self.step_over_ahead();
            if !self.normalize_read() {
                return Ok(None);
            }
            let index = self
                .segments
                .iter()
                .position(|s| s.id == self.read.segment)
                .expect("normalized");
            let (id, len) = (self.segments[index].id, self.segments[index].len);
            let path = self.dir.join(segment_name(id));
            let io = |what| io_error(what, &path);
            if self.reader.as_ref().is_none_or(|(open, _)| *open != id) {
                let file = File::open(&path).map_err(io("opening a segment to read"))?;
                let mut reader = BufReader::new(file);
                reader
                    .seek(SeekFrom::Start(self.read.offset))
                    .map_err(io("reading a segment"))?;
                self.reader = Some((id, reader));
            }
            let (_, reader) = self.reader.as_mut().expect("opened above");
            match read_frame(reader, len - self.read.offset).map_err(io("reading a segment"))? {
                Frame::Good { payload, size } => {
                    let start = self.read;
                    self.read.offset += size;
                    self.unread = self.unread.saturating_sub(1);
                    let rows = SpooledBatch::rows_in(&payload);
                    let segment = &mut self.segments[index];
                    segment.read_batches += 1;
                    segment.read_rows += u64::from(rows);
                    match SpooledBatch::decode(&payload) {
                        Some(batch) => {
                            self.lent.insert(start, Lent { after: self.read, rows });
                            self.step_over_ahead();
                            return Ok(Some((batch, start, self.read)));
                        }
                        None => self.lost.push(Loss {
                            segment: id,
                            offset: start.offset,
                            bytes: size,
                            rows: None,
                            reason: "a record of an unknown kind",
                        }),
                    }
                }
                Frame::End => self.read.offset = len,
                Frame::Bad(reason) => {
                    // Written in this process and changed on disk since: skip the rest.
                    self.lost.push(Loss {
                        segment: id,
                        offset: self.read.offset,
                        bytes: len - self.read.offset,
                        rows: None,
                        reason,
                    });
                    self.read.offset = len;
                }
            }
        }
    }

    /// Reads a given-back frame again and lends it out. `None` (and a loss) if it no longer
    /// reads back.
    fn read_lent(&mut self, start: Position, lent: Lent) -> Result<Option<SpooledBatch>, SpoolError> {
        let Some(segment) = self.segments.iter_mut().find(|s| s.id == start.segment) else {
            return Ok(None);
        };
        let path = self.dir.join(segment_name(start.segment));
        let io = |what| io_error(what, &path);
        let mut file = File::open(&path).map_err(io("opening a segment to read"))?;
        file.seek(SeekFrom::Start(start.offset))
            .map_err(io("reading a segment"))?;
        let batch = match read_frame(&mut file, lent.after.offset - start.offset).map_err(io("reading a segment"))? {
            Frame::Good { payload, .. } => SpooledBatch::decode(&payload),
            Frame::End | Frame::Bad(_) => None,
        };
        let Some(batch) = batch else {
            self.lost.push(Loss {
                segment: start.segment,
                offset: start.offset,
                bytes: lent.after.offset - start.offset,
                rows: None,
                reason: "a batch that no longer reads back (changed on disk since it was written)",
            });
            return Ok(None);
        };
        segment.read_batches += 1;
        segment.read_rows += u64::from(lent.rows);
        self.lent.insert(start, lent);
        Ok(Some(batch))
    }

    /// Moves `read` to a frame start in a segment that exists: past the end of its segment (or
    /// from a segment dropped to make room) to the next one. False when there is none.
    fn normalize_read(&mut self) -> bool {
        loop {
            match self.segments.iter().find(|s| s.id == self.read.segment) {
                Some(segment) if self.read.offset < segment.len => return true,
                Some(segment) if self.segments.back().is_some_and(|last| last.id == segment.id) => return false,
                Some(segment) => {
                    let id = segment.id;
                    self.move_read_to_next(id);
                }
                // Its segment was dropped to make room: go on with the next one, if any.
                None => match self.segments.iter().find(|s| s.id > self.read.segment) {
                    Some(next) => {
                        self.read = Position {
                            segment: next.id,
                            offset: MAGIC_LEN,
                        };
                        self.reader = None;
                    }
                    None => return false,
                },
            }
        }
    }

    /// Steps `read` over frames lent as they were written, as long as it stands at one.
    pub(super) fn step_over_ahead(&mut self) {
        while self.normalize_read() {
            let Some(after) = self.ahead.remove(&self.read) else {
                return;
            };
            self.skip_reader_to(after);
        }
    }

    fn skip_reader_to(&mut self, after: Position) {
        let skip = after.offset.saturating_sub(self.read.offset);
        let same = after.segment == self.read.segment;
        match self.reader.as_mut() {
            Some((id, reader)) if same && *id == after.segment => {
                if reader.seek_relative(skip as i64).is_err() {
                    self.reader = None;
                }
            }
            _ => self.reader = None,
        }
        self.read = after;
    }

    pub(super) fn move_read_to_next(&mut self, after: u64) {
        self.reader = None;
        if let Some(next) = self.segments.iter().find(|s| s.id > after) {
            self.read = Position {
                segment: next.id,
                offset: MAGIC_LEN,
            };
        }
    }

    /// The lent batch at `start` was confirmed by the service, or refused for good: it leaves
    /// the spool. The cursor moves past every frame before the first one still unconfirmed;
    /// segments it passes are deleted (the cursor file is written first). Otherwise the cursor
    /// file is written at the next [`save_cursor`](Self::save_cursor). False if the batch was
    /// not lent (its segment was dropped to make room meanwhile).
    pub(crate) fn settle(&mut self, start: Position) -> Result<bool, SpoolError> {
        let found = self.lent.remove(&start).is_some();
        let unconfirmed = [self.lent.keys().next(), self.returned.keys().next()]
            .into_iter()
            .flatten()
            .copied()
            .chain(std::iter::once(self.read))
            .min()
            .expect("read is always there");
        self.acked = self.acked.max(unconfirmed);
        let passes_a_segment = self.segments.len() > 1
            && self.segments.front().is_some_and(|s| {
                s.id < self.acked.segment || (s.id == self.acked.segment && self.acked.offset >= s.len)
            });
        if passes_a_segment {
            self.save_cursor()?;
        }
        Ok(found)
    }

    /// Writes the cursor file if the cursor moved since it was last written, then deletes the
    /// segments it has passed.
    pub(crate) fn save_cursor(&mut self) -> Result<(), SpoolError> {
        if self.acked <= self.saved {
            return Ok(());
        }
        cursor::write(&*self.disk, &self.dir, self.acked).map_err(|source| SpoolError::Io {
            what: "writing the cursor",
            path: self.dir.join(cursor::CURSOR),
            source,
        })?;
        self.saved = self.acked;
        while let Some(oldest) = self.segments.front() {
            let passed = oldest.id < self.saved.segment
                || (oldest.id == self.saved.segment && self.saved.offset >= oldest.len && self.segments.len() > 1);
            if !passed {
                break;
            }
            let oldest = self.segments.pop_front().expect("checked");
            self.delete_segment(&oldest)?;
        }
        Ok(())
    }

    pub(super) fn delete_segment(&mut self, segment: &Segment) -> Result<(), SpoolError> {
        if self.reader.as_ref().is_some_and(|(id, _)| *id == segment.id) {
            self.reader = None;
        }
        let path = self.dir.join(segment_name(segment.id));
        fs::remove_file(&path).map_err(|source| SpoolError::Io {
            what: "deleting a segment",
            path,
            source,
        })?;
        self.bytes_on_disk -= segment.len;
        Ok(())
    }

    /// The lent batch at `start` was not delivered: [`next`](Self::next) hands it out again,
    /// before any batch not yet handed out. False when its segment is gone (dropped to make
    /// room meanwhile): the batch is lost.
    pub(crate) fn give_back(&mut self, start: Position) -> bool {
        let Some(lent) = self.lent.remove(&start) else {
            return false;
        };
        let Some(segment) = self.segments.iter_mut().find(|s| s.id == start.segment) else {
            return false;
        };
        segment.read_batches = segment.read_batches.saturating_sub(1);
        segment.read_rows = segment.read_rows.saturating_sub(u64::from(lent.rows));
        self.unread += 1;
        self.returned.insert(start, lent);
        true
    }
}
