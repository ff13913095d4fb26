//! [`LogsIngestionClient`]: uploads rows to a data collection rule's stream, with the official
//! SDKs' `upload` semantics and none of their 413s.
//!
//! - Rows are serialized once and cut into JSON arrays whose exact uncompressed size (brackets and
//!   commas counted) stays under the cap (1 MiB by default) and whose gzipped body is always at
//!   most 1,048,576 bytes. A row that cannot fit alone is never sent; it is reported as
//!   [`FailureReason::RowTooLarge`].
//! - Up to `max_concurrency` requests are in flight; each is retried per the [`RetryPolicy`].
//! - Every batch is attempted. Failed batches go to the `on_error` callback with their rows, or,
//!   without one, come back in an [`UploadError`] that says how many of how many rows failed.
//! - Delivery is at-least-once: a retried request that the service had already stored
//!   duplicates its rows.
//!
//! ```no_run
//! # async fn run(credential: std::sync::Arc<dyn azure_core::credentials::TokenCredential>) -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_azure_logs::client::LogsIngestionClient;
//!
//! let client = LogsIngestionClient::builder("https://my-dce.eastus-1.ingest.monitor.azure.com", credential)
//!     .max_concurrency(4)
//!     .build()?;
//! let rows = vec![serde_json::json!({"TimeGenerated": "2026-11-22T10:00:00Z", "Computer": "web-1"})];
//! let report = client.upload("dcr-00000000000000000000000000000000", "Custom-MyTable_CL", &rows).await?;
//! assert_eq!(report.sent_rows, 1);
//! # Ok(()) }
//! ```

mod auth;
pub(crate) mod batch;
mod blocking;
mod check;
mod error;
mod health;
mod retry;
mod send;
mod settings;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use futures_util::stream::{FuturesUnordered, StreamExt};
use reqwest::Url;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, USER_AGENT};
use serde::Serialize;

pub use crate::error::ConfigError;
pub use auth::{
    Audience, FreshToken, RenewingCredential, StaticTokenCredential, credential_client_options, credential_from_env,
    credential_from_env_with,
};
pub use batch::MAX_BODY_BYTES;
pub use error::{FailedBatch, FailureReason, UploadError};
pub(crate) use health::credential_hint;
pub use health::{CheckStep, Finding, HealthReport, Step, Verdict};
pub use retry::RetryPolicy;
pub(crate) use send::{SendOutcome, json_post, read_at_most, row_too_large, unanswered};
pub(crate) use settings::{ClientSettings, parse_endpoint};
pub use settings::{LogsIngestionClientBuilder, default_http_client};

pub(crate) use auth::{CachedToken, TokenCache};
use batch::{Batch, BatchBuilder, Compressed, Push, compress_fitting};
pub(crate) use blocking::run_blocking;
pub(crate) use retry::{StatusClass, classify, retry_after};

use crate::row::json::{lossy, serialize_row};

/// The api-version this client speaks.
pub const API_VERSION: &str = "2023-01-01";

/// Callback that receives each batch that could not be delivered.
pub type OnError = Arc<dyn Fn(FailedBatch) + Send + Sync>;

/// Uploads rows to the Logs Ingestion API. Cheap to clone; clones share the connection pool and
/// the token cache.
#[derive(Clone)]
pub struct LogsIngestionClient {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Url,
    http: reqwest::Client,
    tokens: TokenCache,
    max_concurrency: usize,
    retry: RetryPolicy,
    request_timeout: Duration,
    gzip_level: u32,
    max_uncompressed: usize,
    user_agent: HeaderValue,
    counters: RequestCounters,
}

impl fmt::Debug for LogsIngestionClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("LogsIngestionClient")
            .field("endpoint", &i.endpoint.as_str())
            .field("tokens", &i.tokens)
            .field("max_concurrency", &i.max_concurrency)
            .field("retry", &i.retry)
            .field("request_timeout", &i.request_timeout)
            .field("gzip_level", &i.gzip_level)
            .field("max_uncompressed", &i.max_uncompressed)
            .finish_non_exhaustive()
    }
}

/// What an upload did. Counts are of rows, except where named otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadReport {
    /// Rows given.
    pub total_rows: usize,
    /// Rows the service accepted.
    pub sent_rows: usize,
    /// Rows not delivered (also handed to `on_error`, when set).
    pub failed_rows: usize,
    /// Batches (requests before retries) the rows were cut into, sent or not.
    pub batches: usize,
    /// HTTP requests made, retries included.
    pub requests: u64,
    /// Requests that were retries.
    pub retries: u64,
    /// Body bytes put on the wire, retries included.
    pub wire_bytes: u64,
}

impl UploadReport {
    fn merge(&mut self, sent: &SendOutcome) {
        self.requests += u64::from(sent.attempts);
        self.retries += u64::from(sent.attempts.saturating_sub(1));
        self.wire_bytes += sent.wire_bytes;
    }
}

/// Totals over the client's lifetime.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    pub(crate) requests: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) wire_bytes: AtomicU64,
}

/// How the body of [`LogsIngestionClient::upload_raw`] is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentEncoding {
    /// Plain UTF-8 JSON.
    Identity,
    /// gzip of UTF-8 JSON.
    Gzip,
}

impl LogsIngestionClient {
    /// Starts a builder for `endpoint` (a data collection endpoint, or a DCR's own logs ingestion
    /// endpoint) and `credential` (any azure_identity credential, or
    /// [`credential_from_env`]).
    pub fn builder(endpoint: impl Into<String>, credential: Arc<dyn TokenCredential>) -> LogsIngestionClientBuilder {
        LogsIngestionClientBuilder {
            endpoint: endpoint.into(),
            credential,
            settings: ClientSettings::default(),
        }
    }

    /// A client with the default options.
    pub fn new(endpoint: impl Into<String>, credential: Arc<dyn TokenCredential>) -> Result<Self, ConfigError> {
        Self::builder(endpoint, credential).build()
    }

    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        self.inner.endpoint.as_str()
    }

    /// Uploads `rows` (anything `Serialize` that becomes a JSON object, e.g. structs or
    /// `serde_json::Value`s) to `stream` of the rule with immutable id `rule_id`.
    ///
    /// Returns `Err` when any row was not delivered; the error holds every failed batch with its
    /// cause and rows. Use [`upload_with`](Self::upload_with) to receive failures in a callback
    /// instead. Rows are serialized lazily, so at most `max_concurrency + 1` batches are in memory.
    pub async fn upload<I>(&self, rule_id: &str, stream: &str, rows: I) -> Result<UploadReport, UploadError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let mut failures = Vec::new();
        let report = self
            .upload_rows(rule_id, stream, rows.into_iter().map(|r| serialize_row(&r)), &mut |f| {
                failures.push(f)
            })
            .await;
        into_result(report, failures)
    }

    /// Like [`upload`](Self::upload), but each failed batch goes to `on_error` (with its rows) and
    /// the call returns the report; `report.failed_rows` counts what `on_error` received.
    pub async fn upload_with<I>(&self, rule_id: &str, stream: &str, rows: I, on_error: OnError) -> UploadReport
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        self.upload_rows(rule_id, stream, rows.into_iter().map(|r| serialize_row(&r)), &mut |f| {
            on_error(f)
        })
        .await
    }

    /// Sends `body` (a JSON array the caller built, plain or already gzipped) as one request, with
    /// the same retries. A body over 1,048,576 bytes is refused before sending
    /// ([`FailureReason::BodyTooLarge`]).
    pub async fn upload_raw(
        &self,
        rule_id: &str,
        stream: &str,
        body: Vec<u8>,
        encoding: ContentEncoding,
    ) -> Result<UploadReport, FailureReason> {
        if body.len() > MAX_BODY_BYTES {
            return Err(FailureReason::BodyTooLarge {
                size: body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let url = self.stream_url(rule_id, stream);
        let sent = self.send(&url, body, encoding).await;
        let mut report = UploadReport {
            batches: 1,
            ..UploadReport::default()
        };
        report.merge(&sent);
        sent.result.map(|()| report)
    }

    /// Number of times the credential was asked for a token.
    pub fn token_requests(&self) -> u64 {
        self.inner.tokens.fetches()
    }

    pub(crate) fn counters(&self) -> &RequestCounters {
        &self.inner.counters
    }

    pub(crate) fn max_concurrency(&self) -> usize {
        self.inner.max_concurrency
    }

    pub(crate) fn max_uncompressed(&self) -> usize {
        self.inner.max_uncompressed
    }

    /// The gzip level bodies are compressed at.
    pub(crate) fn gzip_level(&self) -> u32 {
        self.inner.gzip_level
    }

    /// Why `row` alone cannot be sent (see [`row_too_large`]).
    pub(crate) fn row_too_large(&self, row: &[u8]) -> FailureReason {
        row_too_large(row, self.inner.max_uncompressed)
    }

    /// `{endpoint}/dataCollectionRules/{rule}/streams/{stream}?api-version=...`, segments escaped.
    pub(crate) fn stream_url(&self, rule_id: &str, stream: &str) -> Url {
        let mut url = self.inner.endpoint.clone();
        url.path_segments_mut()
            .expect("checked at build: the endpoint has a host")
            .pop_if_empty()
            .extend(["dataCollectionRules", rule_id, "streams", stream]);
        url.query_pairs_mut().append_pair("api-version", API_VERSION);
        url
    }

    /// Batches, compresses and sends `rows` with up to `max_concurrency` requests in flight.
    async fn upload_rows<R>(
        &self,
        rule_id: &str,
        stream: &str,
        rows: R,
        on_error: &mut (dyn FnMut(FailedBatch) + Send),
    ) -> UploadReport
    where
        R: Iterator<Item = Result<Vec<u8>, String>>,
    {
        let url = self.stream_url(rule_id, stream);
        let failed = |reason: FailureReason, indices: Vec<usize>, rows: Vec<String>| FailedBatch {
            rule_id: rule_id.to_owned(),
            stream: stream.to_owned(),
            reason,
            indices,
            rows,
        };
        let mut report = UploadReport::default();
        let mut builder = BatchBuilder::new(self.inner.max_uncompressed);
        let mut in_flight = FuturesUnordered::new();
        let mut rows = rows.enumerate().peekable();

        loop {
            // Fill one batch.
            let mut closed = None;
            while closed.is_none() {
                let Some((index, row)) = rows.next() else { break };
                report.total_rows += 1;
                let row = match row {
                    Ok(row) => row,
                    Err(message) => {
                        report.failed_rows += 1;
                        on_error(failed(FailureReason::InvalidRow(message), vec![index], Vec::new()));
                        continue;
                    }
                };
                match builder.push(&row, index) {
                    Push::Added => {}
                    Push::TooLarge => {
                        report.failed_rows += 1;
                        on_error(failed(self.row_too_large(&row), vec![index], vec![lossy(&row)]));
                    }
                    Push::Full => {
                        closed = builder.take();
                        assert_eq!(
                            builder.push(&row, index),
                            Push::Added,
                            "a row that fits alone fits an empty batch"
                        );
                    }
                }
            }
            let batch = match closed {
                Some(batch) => Some(batch),
                None => builder.take(),
            };
            let Some(batch) = batch else { break };
            report.batches += 1;

            // Wait for a free slot, then send.
            while in_flight.len() >= self.inner.max_concurrency {
                if let Some(done) = in_flight.next().await {
                    self.settle(done, &mut report, &failed, on_error);
                }
            }
            in_flight.push(self.send_batch(&url, batch));
        }
        while let Some(done) = in_flight.next().await {
            self.settle(done, &mut report, &failed, on_error);
        }
        report
    }

    fn settle(
        &self,
        done: Vec<(Batch, SendOutcome)>,
        report: &mut UploadReport,
        failed: &(dyn Fn(FailureReason, Vec<usize>, Vec<String>) -> FailedBatch + Sync),
        on_error: &mut (dyn FnMut(FailedBatch) + Send),
    ) {
        for (batch, sent) in done {
            report.merge(&sent);
            match sent.result {
                Ok(()) => report.sent_rows += batch.len(),
                Err(reason) => {
                    report.failed_rows += batch.len();
                    on_error(failed(reason, batch.ids().to_vec(), batch.rows().map(lossy).collect()));
                }
            }
        }
    }
}

fn into_result(report: UploadReport, failures: Vec<FailedBatch>) -> Result<UploadReport, UploadError> {
    if failures.is_empty() {
        Ok(report)
    } else {
        Err(UploadError {
            failed: report.failed_rows,
            total: report.total_rows,
            batches: failures,
        })
    }
}
