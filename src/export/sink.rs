//! Where exported windows go: files of JSON, files of JSON lines, or another DCR stream.
//!
//! A sink may get the same window twice (after a crash between its write and the checkpoint,
//! or after a failure of a later window): the file sinks are idempotent by file name, and the
//! re-ingesting sink sends the rows again (deduplicate by a row id downstream).

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::checkpoint::write_atomically;
use crate::client::LogsIngestionClient;
use crate::query::LogsTable;

/// The error a sink returns; the window is exported again at the next round.
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// One window of one query's result, to be written.
#[derive(Debug)]
#[non_exhaustive]
pub struct ExportWindow<'a> {
    /// The query's name.
    pub query: &'a str,
    /// The window's start by ingestion time (included).
    pub start: SystemTime,
    /// The window's end (excluded).
    pub end: SystemTime,
    /// The rows.
    pub table: &'a LogsTable,
}

/// Writes exported windows. `write` returning `Ok` means the rows are safe: the query's
/// checkpoint then moves past the window.
#[async_trait::async_trait]
pub trait ExportSink: Send + Sync {
    /// Writes one window.
    async fn write(&self, window: &ExportWindow<'_>) -> Result<(), SinkError>;
}

/// `{query}/{start}_{end}.{extension}` with times as `YYYYmmddHHMMSSfff` (UTC, milliseconds):
/// the layout of the continuous-export pattern, with seconds and milliseconds so that windows
/// split to fit a limit never share a name.
pub fn window_file_name(window: &ExportWindow<'_>, extension: &str) -> PathBuf {
    let stamp = |t: SystemTime| {
        let t = azure_core::time::OffsetDateTime::from(t);
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    };
    PathBuf::from(window.query).join(format!("{}_{}.{extension}", stamp(window.start), stamp(window.end)))
}

/// One JSON file per window, `{"columns": [{"name", "type"}], "rows": [[...]]}`, written
/// atomically at `{dir}/{window_file_name}`.
#[derive(Clone, Debug)]
pub struct JsonFileSink {
    dir: PathBuf,
}

impl JsonFileSink {
    /// Files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> JsonFileSink {
        JsonFileSink { dir: dir.into() }
    }
}

#[async_trait::async_trait]
impl ExportSink for JsonFileSink {
    async fn write(&self, window: &ExportWindow<'_>) -> Result<(), SinkError> {
        let columns: Vec<Value> = window
            .table
            .columns
            .iter()
            .map(|c| json!({ "name": c.name, "type": format!("{:?}", c.column_type).to_lowercase() }))
            .collect();
        let body = json!({ "columns": columns, "rows": window.table.rows });
        let path = self.dir.join(window_file_name(window, "json"));
        let bytes = serde_json::to_vec(&body)?;
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await??;
        Ok(())
    }
}

/// One file of JSON lines per window (a JSON object per row, `dynamic` values as objects),
/// written atomically at `{dir}/{window_file_name}` with extension `jsonl`.
#[derive(Clone, Debug)]
pub struct JsonLinesSink {
    dir: PathBuf,
}

impl JsonLinesSink {
    /// Files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> JsonLinesSink {
        JsonLinesSink { dir: dir.into() }
    }
}

#[async_trait::async_trait]
impl ExportSink for JsonLinesSink {
    async fn write(&self, window: &ExportWindow<'_>) -> Result<(), SinkError> {
        let mut bytes = Vec::new();
        for object in window.table.objects() {
            serde_json::to_writer(&mut bytes, &object)?;
            bytes.push(b'\n');
        }
        let path = self.dir.join(window_file_name(window, "jsonl"));
        tokio::task::spawn_blocking(move || write_atomically(&path, &bytes)).await??;
        Ok(())
    }
}

/// Sends each window's rows to a DCR stream (copying rows between workspaces or tables), as
/// JSON objects by column name. The stream must declare the columns the query returns.
#[derive(Clone, Debug)]
pub struct ReingestSink {
    client: LogsIngestionClient,
    rule_id: String,
    stream: String,
}

impl ReingestSink {
    /// Rows go to `stream` of the rule `rule_id` through `client`.
    pub fn new(client: LogsIngestionClient, rule_id: impl Into<String>, stream: impl Into<String>) -> ReingestSink {
        ReingestSink {
            client,
            rule_id: rule_id.into(),
            stream: stream.into(),
        }
    }
}

#[async_trait::async_trait]
impl ExportSink for ReingestSink {
    async fn write(&self, window: &ExportWindow<'_>) -> Result<(), SinkError> {
        self.client
            .upload(&self.rule_id, &self.stream, window.table.objects())
            .await?;
        Ok(())
    }
}
