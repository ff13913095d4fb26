//! Typed rows for custom tables, through the same bounded, batched pipeline as log events.
//!
//! ```no_run
//! # fn demo(guard: &tracing_azure_logs::AzureLogsGuard) {
//! #[derive(serde::Serialize)]
//! struct Order { id: u64, total_eur: f64 }
//!
//! let orders = guard.table::<Order>("Custom-Orders_CL");   // cheap; clone it freely
//! orders.send(&Order { id: 7, total_eur: 12.5 }).ok();     // never blocks (by default)
//! # }
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;

use crate::clock::now_json;
use crate::pipeline::AzureLogsGuard;
use crate::pipeline::destinations::Destination;
use crate::pipeline::queue::Queue;

/// Why [`Table::send`] did not enqueue a row. The row was not shipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The row serializes to something other than a JSON object; the service takes objects only.
    #[error("row is not a JSON object (it serializes to {0}); it was not sent")]
    NotAnObject(&'static str),
    /// The row's `Serialize` implementation failed.
    #[error("row could not be serialized: {0}; it was not sent")]
    Serialize(String),
    /// The queue was full (or the pipeline stopped); the row was dropped and counted in
    /// `Stats::dropped`.
    #[error("the queue was full or the pipeline has stopped; the row was dropped")]
    Dropped,
    /// The row is larger than the whole queue (`queue_max_bytes`) and could never be enqueued; it
    /// was not sent and is not counted in `Stats` (it never entered the pipeline). Raise
    /// `queue_max_bytes`, or send smaller rows: the service takes at most 1 MiB per request.
    #[error(
        "row is {size} bytes, larger than the queue can ever hold ({limit} bytes; raise queue_max_bytes); it was not sent"
    )]
    RowTooLarge {
        /// The row's serialized size.
        size: usize,
        /// The largest row the queue holds.
        limit: usize,
    },
}

/// A handle for sending rows of type `T` to one stream. Cheap to clone, `Send + Sync`.
///
/// `send` serializes on the calling thread into a reused buffer and enqueues without blocking
/// (unless the pipeline's full policy is `Block`). The worker batches per stream with the same
/// 1 MiB limits, retries and `on_error` (which names the stream), and `flush()` covers tables too.
pub struct Table<T> {
    pub(crate) queue: Arc<Queue>,
    pub(crate) stream: u32,
    pub(crate) name: Arc<str>,
    pub(crate) add_time: bool,
    pub(crate) row: PhantomData<fn(&T)>,
}

impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Table {
            queue: self.queue.clone(),
            stream: self.stream,
            name: self.name.clone(),
            add_time: self.add_time,
            row: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("stream", &self.name)
            .finish_non_exhaustive()
    }
}

impl AzureLogsGuard {
    /// A handle that sends rows of type `T` to `stream` of this pipeline's rule. See [`Table`].
    pub fn table<T: serde::Serialize>(&self, stream: impl Into<String>) -> Table<T> {
        // Id 0 is the main stream, registered when the pipeline was built.
        let rule_id = self.destinations.get(0).map(|t| t.rule_id).unwrap_or_default();
        self.table_in(rule_id, stream)
    }

    /// A handle that sends rows of type `T` to `stream` of another rule on the same endpoint.
    pub fn table_in<T: serde::Serialize>(&self, rule_id: impl Into<String>, stream: impl Into<String>) -> Table<T> {
        let target = Destination {
            rule_id: rule_id.into(),
            stream: stream.into(),
        };
        Table {
            queue: self.queue.clone(),
            stream: self.destinations.id_for(&target),
            name: target.stream.into(),
            add_time: true,
            row: std::marker::PhantomData,
        }
    }
}

const TIME_KEY: &[u8] = b"\"TimeGenerated\":";

impl<T: Serialize> Table<T> {
    /// Serializes `row` and enqueues it. When the object has no top-level `TimeGenerated`, one is
    /// added with the current time (RFC 3339 UTC, microseconds), unless turned off with
    /// [`without_time_generated`](Self::without_time_generated).
    pub fn send(&self, row: &T) -> Result<(), SendError> {
        let mut json = self.queue.buffer();
        if let Err(e) = serde_json::to_writer(&mut json, row) {
            self.queue.recycle(json);
            return Err(SendError::Serialize(e.to_string()));
        }
        if json.first() != Some(&b'{') {
            let kind = crate::row::json::json_kind(&json);
            self.queue.recycle(json);
            return Err(SendError::NotAnObject(kind));
        }
        if self.add_time && !has_top_level_key(&json, b"TimeGenerated") {
            let time = now_json();
            let comma = json.len() > 2;
            let insert = TIME_KEY.len() + time.len() + usize::from(comma);
            let len = json.len();
            json.resize(len + insert, 0);
            json.copy_within(1..len, 1 + insert);
            json[1..1 + TIME_KEY.len()].copy_from_slice(TIME_KEY);
            json[1 + TIME_KEY.len()..1 + TIME_KEY.len() + time.len()].copy_from_slice(&time);
            if comma {
                json[insert] = b',';
            }
        }
        let limit = self.queue.max_row_bytes();
        if json.len() > limit {
            let size = json.len();
            self.queue.recycle(json);
            return Err(SendError::RowTooLarge { size, limit });
        }
        if self.queue.push(self.stream, json) {
            Ok(())
        } else {
            Err(SendError::Dropped)
        }
    }

    /// The stream rows go to.
    pub fn stream(&self) -> &str {
        &self.name
    }

    /// This handle without the automatic `TimeGenerated` (the DCR transform, or the service, then
    /// sets the time).
    pub fn without_time_generated(mut self) -> Self {
        self.add_time = false;
        self
    }
}

/// Whether the serialized JSON object `json` (compact, as serde_json writes it) has `key` at its
/// top level.
fn has_top_level_key(json: &[u8], key: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut expect_key = false;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && expect_key {
                    if json.get(start..i) == Some(key) {
                        return true;
                    }
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_keys_only() {
        let has = |j: &str| has_top_level_key(j.as_bytes(), b"TimeGenerated");
        assert!(has(r#"{"TimeGenerated":"x"}"#));
        assert!(has(r#"{"a":{"TimeGenerated":1},"TimeGenerated":"x"}"#));
        assert!(!has(r#"{"a":{"TimeGenerated":1}}"#));
        assert!(!has(r#"{"a":"TimeGenerated"}"#));
        assert!(!has(r#"{"a":"\"TimeGenerated\":","b":[{"TimeGenerated":2}]}"#));
        assert!(!has("{}"));
    }
}
