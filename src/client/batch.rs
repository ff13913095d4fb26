//! Cutting serialized rows into JSON-array batches that fit the service's limits, and gzipping them.
//!
//! Sizes are exact: a batch's uncompressed length counts the brackets and commas of the array, and
//! every gzipped body handed to the uploader is measured, never estimated. A batch whose gzip is
//! over the limit is split and compressed again, so no request can earn a 413.

use std::io::Write;
use std::ops::Range;

use flate2::Compression;
use flate2::write::GzEncoder;

/// The service's limit on a request body (`Content-Length`, the gzipped bytes): 1 MiB.
pub const MAX_BODY_BYTES: usize = 1_048_576;

/// A JSON array of rows, and where each row sits in it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Batch {
    /// `[r0,r1,...]`; while a builder fills it, the closing `]` is missing.
    json: Vec<u8>,
    /// Byte range of each row in `json`.
    spans: Vec<Range<usize>>,
    /// The caller's id of each row (input index for uploads, sequence number for the pipeline).
    ids: Vec<usize>,
}

impl Batch {
    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The complete JSON array.
    pub(crate) fn json(&self) -> &[u8] {
        &self.json
    }

    /// The caller's ids of the rows, in order.
    pub(crate) fn ids(&self) -> &[usize] {
        &self.ids
    }

    /// The JSON text of every row.
    pub(crate) fn rows(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|r| &self.json[r.clone()])
    }

    /// Splits into rows `..at` and `at..`, each a complete array.
    fn split(self, at: usize) -> (Batch, Batch) {
        let mut left = Batch::default();
        let mut right = Batch::default();
        for (i, (span, id)) in self.spans.iter().zip(&self.ids).enumerate() {
            let part = if i < at { &mut left } else { &mut right };
            part.append(&self.json[span.clone()], *id);
        }
        left.json.push(b']');
        right.json.push(b']');
        (left, right)
    }

    fn append(&mut self, row: &[u8], id: usize) {
        self.json.push(if self.spans.is_empty() { b'[' } else { b',' });
        let start = self.json.len();
        self.json.extend_from_slice(row);
        self.spans.push(start..self.json.len());
        self.ids.push(id);
    }
}

/// What [`BatchBuilder::push`] did with a row.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push {
    /// The row is in the open batch.
    Added,
    /// The row does not fit beside the rows already there: take the batch, then push again.
    Full,
    /// The row alone, as `[row]`, is over the uncompressed cap; it can never be sent.
    TooLarge,
}

/// Fills one batch at a time up to an exact uncompressed cap.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    open: Batch,
    max_uncompressed: usize,
}

impl BatchBuilder {
    pub(crate) fn new(max_uncompressed: usize) -> Self {
        BatchBuilder {
            open: Batch::default(),
            max_uncompressed,
        }
    }

    /// Adds `row` (one JSON object's text) to the open batch if the closed array still fits the cap.
    pub(crate) fn push(&mut self, row: &[u8], id: usize) -> Push {
        // `[row]` alone, or the open array plus `,row]`.
        if row.len() + 2 > self.max_uncompressed {
            return Push::TooLarge;
        }
        if !self.is_empty() && self.open.json.len() + 1 + row.len() + 1 > self.max_uncompressed {
            return Push::Full;
        }
        self.open.append(row, id);
        Push::Added
    }

    /// Whether the open batch has no rows.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.spans.is_empty()
    }

    /// Closes and returns the open batch, if it has rows.
    pub(crate) fn take(&mut self) -> Option<Batch> {
        if self.is_empty() {
            return None;
        }
        let mut batch = std::mem::take(&mut self.open);
        batch.json.push(b']');
        // Start the next batch with about the same capacity, so filling it does not reallocate.
        self.open.json.reserve(batch.json.len());
        Some(batch)
    }
}

/// A batch and its gzipped body, which is at most the body limit.
#[derive(Debug)]
pub(crate) struct Compressed {
    pub(crate) batch: Batch,
    pub(crate) body: Vec<u8>,
}

/// The outcome of [`compress_fitting`]: bodies that fit, and rows that cannot fit even alone.
#[derive(Debug, Default)]
pub(crate) struct Fitted {
    pub(crate) bodies: Vec<Compressed>,
    /// Single-row batches whose gzip alone is over the limit, with that gzipped size.
    pub(crate) too_large: Vec<(Batch, usize)>,
}

/// Gzips `batch` at `level`; while a body is over `max_body`, splits that batch where the rows that
/// should fit end (by the measured ratio, with a margin) and compresses both parts again.
pub(crate) fn compress_fitting(batch: Batch, level: u32, max_body: usize) -> Fitted {
    let mut fitted = Fitted::default();
    let mut todo = vec![batch];
    while let Some(batch) = todo.pop() {
        let body = gzip(batch.json(), level);
        if body.len() <= max_body {
            fitted.bodies.push(Compressed { batch, body });
            continue;
        }
        if batch.len() == 1 {
            fitted.too_large.push((batch, body.len()));
            continue;
        }
        let keep = max_body as f64 / body.len() as f64 * 0.9;
        let budget = (batch.json.len() as f64 * keep) as usize;
        let at = batch
            .spans
            .iter()
            .position(|span| span.end > budget)
            .unwrap_or(batch.len())
            .clamp(1, batch.len() - 1);
        let (left, right) = batch.split(at);
        // Keep row order: the left part is compressed (and so sent) first.
        todo.push(right);
        todo.push(left);
    }
    fitted
}

/// Gzips `data` into a new buffer.
pub(crate) fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(data.len() / 4 + 64), Compression::new(level));
    encoder.write_all(data).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(len: usize) -> Vec<u8> {
        // {"a":"xxxx"} is 8 bytes of framing around the string.
        let mut s = String::from("{\"a\":\"");
        s.push_str(&"x".repeat(len - 8));
        s.push_str("\"}");
        s.into_bytes()
    }

    #[test]
    fn cap_counts_brackets_and_commas() {
        let mut b = BatchBuilder::new(2 + 10 + 1 + 10);
        assert_eq!(b.push(&row(10), 0), Push::Added);
        assert_eq!(b.push(&row(10), 1), Push::Added);
        assert_eq!(b.push(&row(10), 2), Push::Full);
        let batch = b.take().unwrap();
        assert_eq!(batch.json().len(), 23);
        let parsed: Vec<serde_json::Value> = serde_json::from_slice(batch.json()).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(batch.ids(), &[0, 1]);
        assert!(b.take().is_none());
    }

    #[test]
    fn lone_row_over_cap_is_too_large() {
        let mut b = BatchBuilder::new(20);
        assert_eq!(b.push(&row(18), 0), Push::Added);
        b.take();
        assert_eq!(b.push(&row(19), 1), Push::TooLarge);
    }

    #[test]
    fn incompressible_batch_is_split_until_each_body_fits() {
        // Pseudo-random hex strings barely compress: 8 rows of ~40 KiB gzip to over 100 KiB.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut b = BatchBuilder::new(usize::MAX);
        for id in 0..8 {
            let mut s = String::from("{\"a\":\"");
            for _ in 0..40_000 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(char::from_digit((state % 16) as u32, 16).unwrap());
            }
            s.push_str("\"}");
            assert_eq!(b.push(s.as_bytes(), id), Push::Added);
        }
        let fitted = compress_fitting(b.take().unwrap(), 6, 64 * 1024);
        assert!(fitted.too_large.is_empty());
        assert!(fitted.bodies.len() >= 3, "{} bodies", fitted.bodies.len());
        let mut ids = Vec::new();
        for c in &fitted.bodies {
            assert!(c.body.len() <= 64 * 1024);
            let mut d = flate2::read::GzDecoder::new(&c.body[..]);
            let mut json = Vec::new();
            std::io::Read::read_to_end(&mut d, &mut json).unwrap();
            assert_eq!(json, c.batch.json());
            ids.extend_from_slice(c.batch.ids());
        }
        assert_eq!(ids, (0..8).collect::<Vec<_>>(), "rows keep their order");
    }
}
