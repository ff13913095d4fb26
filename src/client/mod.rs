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
mod error;
mod retry;

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
pub use retry::RetryPolicy;

use auth::{CachedToken, TokenCache};
use batch::{Batch, BatchBuilder, Compressed, Push, compress_fitting};
use retry::{StatusClass, classify, retry_after};

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

/// Client settings, shared by [`LogsIngestionClientBuilder`] and the pipeline's builder so the
/// defaults and the checks live in one place.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    pub(crate) audience: Audience,
    pub(crate) max_concurrency: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) gzip_level: u32,
    pub(crate) max_uncompressed: usize,
    pub(crate) user_agent_suffix: Option<String>,
    pub(crate) http: Option<reqwest::Client>,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            audience: Audience::default(),
            max_concurrency: 5,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            gzip_level: 3,
            max_uncompressed: MAX_BODY_BYTES,
            user_agent_suffix: None,
            http: None,
        }
    }
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("audience", &self.audience)
            .field("max_concurrency", &self.max_concurrency)
            .field("retry", &self.retry)
            .field("request_timeout", &self.request_timeout)
            .field("gzip_level", &self.gzip_level)
            .field("max_uncompressed", &self.max_uncompressed)
            .finish_non_exhaustive()
    }
}

impl ClientSettings {
    /// Checks the settings and builds the client. Fails on a malformed endpoint, on plain
    /// `http://` to anything but a loopback host, and on out-of-range options.
    pub(crate) fn build(
        self,
        endpoint: &str,
        credential: Arc<dyn TokenCredential>,
    ) -> Result<LogsIngestionClient, ConfigError> {
        let endpoint = parse_endpoint(endpoint)?;
        if self.max_concurrency == 0 {
            return Err(invalid("max_concurrency", "must be at least 1"));
        }
        if self.gzip_level > 9 {
            return Err(invalid("gzip_level", "must be 0 to 9"));
        }
        if self.max_uncompressed < 2 {
            return Err(invalid("max_uncompressed_batch", "must hold at least an empty array"));
        }
        if self.request_timeout.is_zero() {
            return Err(invalid("request_timeout", "must be above zero"));
        }
        let mut agent = format!(
            "tracing-azure-logs/{} (rust; {}/{})",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        if let Some(suffix) = &self.user_agent_suffix {
            agent.push(' ');
            agent.push_str(suffix);
        }
        let user_agent =
            HeaderValue::from_str(&agent).map_err(|_| invalid("user_agent_suffix", "not a valid header value"))?;
        let http = match self.http {
            Some(http) => http,
            None => default_http_client()?,
        };
        Ok(LogsIngestionClient {
            inner: Arc::new(Inner {
                endpoint,
                http,
                tokens: TokenCache::new(credential, self.audience.scope().to_owned()),
                max_concurrency: self.max_concurrency,
                retry: self.retry,
                request_timeout: self.request_timeout,
                gzip_level: self.gzip_level,
                max_uncompressed: self.max_uncompressed,
                user_agent,
                counters: RequestCounters::default(),
            }),
        })
    }
}

/// Builds a [`LogsIngestionClient`]; see each method for its default.
pub struct LogsIngestionClientBuilder {
    endpoint: String,
    credential: Arc<dyn TokenCredential>,
    settings: ClientSettings,
}

impl fmt::Debug for LogsIngestionClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogsIngestionClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("credential", &self.credential)
            .field("settings", &self.settings)
            .finish()
    }
}

impl LogsIngestionClientBuilder {
    /// The cloud whose token audience to ask for. Default: Azure public cloud.
    pub fn audience(mut self, audience: Audience) -> Self {
        self.settings.audience = audience;
        self
    }

    /// Requests in flight at once per `upload`. Default 5; at least 1.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.settings.max_concurrency = n;
        self
    }

    /// How failed requests are retried. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// Time limit of one HTTP attempt. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout;
        self
    }

    /// gzip level, 0 (store) to 9 (smallest). Default 3: fast, and about 6.5x on log rows.
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.settings.gzip_level = level;
        self
    }

    /// Cap on a batch's uncompressed JSON array, in bytes. Default 1,048,576 (the documented limit
    /// applies to both the compressed and uncompressed size). It may be raised; the gzipped body is
    /// kept at most 1,048,576 bytes whatever this is.
    pub fn max_uncompressed_batch(mut self, bytes: usize) -> Self {
        self.settings.max_uncompressed = bytes;
        self
    }

    /// Text appended to the `User-Agent` header.
    pub fn user_agent_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.settings.user_agent_suffix = Some(suffix.into());
        self
    }

    /// The HTTP client to use (for proxies, custom roots, HTTP/2 settings). Default: see
    /// [`default_http_client`]. Redirects should stay off: a redirect would carry the token.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.settings.http = Some(client);
        self
    }

    /// Checks the settings and builds the client. Fails on a malformed endpoint, on plain `http://`
    /// to anything but a loopback host, and on out-of-range options.
    pub fn build(self) -> Result<LogsIngestionClient, ConfigError> {
        self.settings.build(&self.endpoint, self.credential)
    }
}

fn invalid(option: &'static str, reason: &str) -> ConfigError {
    ConfigError::InvalidOption {
        option,
        reason: reason.to_owned(),
    }
}

/// Checks an ingestion endpoint: an absolute URL with a host, https unless the host is loopback,
/// no query or fragment. A trailing slash is dropped.
fn parse_endpoint(endpoint: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(endpoint.trim()).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the error would carry the password.
        let mut shown = url.clone();
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        return Err(ConfigError::InvalidEndpoint {
            endpoint: shown.to_string(),
            reason: "it must not contain a user name or password (the client authenticates with its credential)".into(),
        });
    }
    let host = url.host_str().ok_or_else(|| bad("it has no host"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a query or fragment"));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(host) => {}
        "http" => {
            return Err(ConfigError::InsecureEndpoint {
                endpoint: endpoint.to_owned(),
            });
        }
        other => return Err(bad(&format!("scheme {other:?} is not https"))),
    }
    Ok(url)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The HTTP client used when none is given: rustls, HTTP/2 over TLS, connect timeout 10 s, no
/// redirects (a redirect would carry the bearer token elsewhere), idle connections kept 90 s.
pub fn default_http_client() -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ConfigError::HttpClient(e.to_string()))
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

/// The result of sending one body, retries included.
#[derive(Debug, Default)]
pub(crate) struct SendOutcome {
    pub(crate) attempts: u32,
    pub(crate) wire_bytes: u64,
    pub(crate) result: Option<FailureReason>,
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

    /// [`upload`](Self::upload) for code without an async runtime. The requests run on a shared
    /// background runtime thread, so this also works (and does not panic) when called inside a
    /// tokio runtime, where it blocks the calling thread until done.
    pub fn upload_blocking<I>(&self, rule_id: &str, stream: &str, rows: I) -> Result<UploadReport, UploadError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let rows: Vec<_> = rows.into_iter().map(|r| serialize_row(&r)).collect();
        let (client, rule_id, stream) = (self.clone(), rule_id.to_owned(), stream.to_owned());
        run_blocking(async move {
            let mut failures = Vec::new();
            let report = client
                .upload_rows(&rule_id, &stream, rows.into_iter(), &mut |f| failures.push(f))
                .await;
            into_result(report, failures)
        })
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
        match sent.result {
            None => Ok(report),
            Some(reason) => Err(reason),
        }
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
                None => report.sent_rows += batch.len(),
                Some(reason) => {
                    report.failed_rows += batch.len();
                    on_error(failed(reason, batch.ids().to_vec(), batch.rows().map(lossy).collect()));
                }
            }
        }
    }

    /// Compresses `batch` (split if its gzip is over the limit) and sends each part.
    pub(crate) async fn send_batch(&self, url: &Url, batch: Batch) -> Vec<(Batch, SendOutcome)> {
        let fitted = compress_fitting(batch, self.inner.gzip_level, MAX_BODY_BYTES);
        let mut done = Vec::with_capacity(fitted.bodies.len() + fitted.too_large.len());
        for (batch, size) in fitted.too_large {
            let result = Some(FailureReason::RowTooLarge {
                size,
                limit: MAX_BODY_BYTES,
                what: "gzipped",
            });
            done.push((
                batch,
                SendOutcome {
                    result,
                    ..SendOutcome::default()
                },
            ));
        }
        for Compressed { batch, body } in fitted.bodies {
            let sent = self.send(url, body, ContentEncoding::Gzip).await;
            done.push((batch, sent));
        }
        done
    }

    /// Sends one body, retrying per the policy.
    pub(crate) async fn send(&self, url: &Url, body: Vec<u8>, encoding: ContentEncoding) -> SendOutcome {
        let inner = &*self.inner;
        // `Bytes` clones without copying, once per attempt.
        let body = bytes::Bytes::from(body);
        let request_id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let mut outcome = SendOutcome::default();
        let mut refreshed = false;
        let mut token: Option<Arc<CachedToken>> = None;
        // Attempts against the retry budget: HTTP requests and failed token fetches.
        let mut tries = 0u32;

        loop {
            let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                outcome.result = Some(FailureReason::RetriesExhausted {
                    attempts: outcome.attempts,
                    last_error: "the retry deadline passed".into(),
                });
                return outcome;
            }
            tries += 1;
            let tried = self.attempt(
                url,
                &body,
                encoding,
                &request_id,
                &mut token,
                !refreshed,
                remaining,
                &mut outcome,
            );
            let failed = match tried.await {
                Attempt::Done => return outcome,
                Attempt::Rejected(reason) => {
                    outcome.result = Some(reason);
                    return outcome;
                }
                Attempt::Unauthorized(rejected) => {
                    // One fresh token, and the retry with it does not wait or count. A failed
                    // fetch counts as a try, and the next 401 may ask for a fresh token again.
                    let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
                    match inner.tokens.within(remaining, inner.tokens.replace(&rejected)).await {
                        Ok(fresh) => {
                            refreshed = true;
                            tries -= 1;
                            token = Some(fresh);
                            continue;
                        }
                        Err(reason) => Failed::Token(reason),
                    }
                }
                Attempt::Failed(failed) => failed,
            };
            let wait = match &failed {
                Failed::Http { wait, .. } => *wait,
                Failed::Token(_) => None,
            };
            let delay = inner.retry.wait_before(tries, wait);
            let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
            if tries >= inner.retry.max_attempts || delay >= remaining {
                let note = (tries < inner.retry.max_attempts)
                    .then(|| format!("; the next retry, due in {delay:?}, would pass the retry deadline"));
                outcome.result = Some(match failed {
                    Failed::Token(reason) => reason,
                    Failed::Http { error, .. } => FailureReason::RetriesExhausted {
                        attempts: outcome.attempts,
                        last_error: format!("{error}{}", note.unwrap_or_default()),
                    },
                });
                return outcome;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One try: get a token (within `remaining`) and send the request once. A 401 comes back as
    /// `Unauthorized` while `may_refresh`, as `Rejected` after.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        url: &Url,
        body: &bytes::Bytes,
        encoding: ContentEncoding,
        request_id: &str,
        token: &mut Option<Arc<CachedToken>>,
        may_refresh: bool,
        remaining: Duration,
        outcome: &mut SendOutcome,
    ) -> Attempt {
        let inner = &*self.inner;
        let current = match token {
            Some(t) => t.clone(),
            // A credential that never answers must not outlive the retry deadline.
            None => match inner.tokens.within(remaining, inner.tokens.get()).await {
                Ok(t) => t,
                Err(reason) => return Attempt::Failed(Failed::Token(reason)),
            },
        };
        *token = Some(current.clone());
        outcome.attempts += 1;
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.attempts > 1 {
            inner.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        outcome.wire_bytes += body.len() as u64;
        inner
            .counters
            .wire_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);

        let timeout = inner.request_timeout.min(remaining);
        let mut request = inner
            .http
            .post(url.clone())
            .timeout(timeout)
            .header(USER_AGENT, inner.user_agent.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("accept", "application/json")
            .header("x-ms-client-request-id", request_id)
            .header(reqwest::header::AUTHORIZATION, current.authorization.clone())
            .body(body.clone());
        if encoding == ContentEncoding::Gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) if e.is_timeout() => {
                let error = format!("request timed out after {timeout:?}");
                return Attempt::Failed(Failed::Http { error, wait: None });
            }
            Err(e) => {
                let error = format!("connection error: {}", error_chain(&e));
                return Attempt::Failed(Failed::Http { error, wait: None });
            }
        };
        let status = response.status().as_u16();
        match classify(status) {
            StatusClass::Success => Attempt::Done,
            StatusClass::Unauthorized if may_refresh => Attempt::Unauthorized(current),
            StatusClass::Unauthorized | StatusClass::Permanent => Attempt::Rejected(rejection(status, response).await),
            StatusClass::Retryable => {
                let wait = retry_after(response.headers());
                let (code, message) = error_body(response).await;
                let mut error = format!("HTTP {status}");
                if let Some(code) = code {
                    error.push_str(&format!(" ({code})"));
                }
                if !message.is_empty() {
                    error.push_str(&format!(": {message}"));
                }
                Attempt::Failed(Failed::Http { error, wait })
            }
        }
    }
}

/// Why `row` alone cannot be sent: as a one-row array (brackets included) it is over `limit`,
/// the uncompressed batch cap.
pub(crate) fn row_too_large(row: &[u8], limit: usize) -> FailureReason {
    FailureReason::RowTooLarge {
        size: row.len() + 2,
        limit,
        what: "uncompressed JSON",
    }
}

/// What one try came to.
enum Attempt {
    Done,
    Rejected(FailureReason),
    /// A 401 with this token.
    Unauthorized(Arc<CachedToken>),
    Failed(Failed),
}

/// A failure worth retrying.
enum Failed {
    Token(FailureReason),
    Http { error: String, wait: Option<Duration> },
}

/// The failure for a status that is not retried, with what to check.
async fn rejection(status: u16, response: reqwest::Response) -> FailureReason {
    let (code, message) = error_body(response).await;
    let hint = match status {
        401 => {
            "the token was refused, and so was the one the credential gave when asked again: check that the audience \
             matches the endpoint's cloud (public monitor.azure.com, US Government .us, China .cn) and that the \
             credential is for the right tenant; azure_identity credentials answer from their own cache until 5 minutes \
             before expiry, so wrap yours in RenewingCredential (credential_from_env does) to get a new token after a 401"
        }
        403 => {
            "the identity lacks permission: grant it the 'Monitoring Metrics Publisher' role on the data collection rule \
             (role assignments can take up to 30 minutes to apply)"
        }
        404 => {
            "check the endpoint (a DCE or the DCR's logs ingestion endpoint), the DCR immutable id (dcr-...) and the \
             stream name (Custom-..., as declared in the DCR)"
        }
        413 => "the body was over the service's size limit",
        400 => "the service could not read the body: check that rows match the stream declaration",
        _ => "this status is not retried",
    };
    FailureReason::Rejected {
        status,
        code,
        message,
        hint,
    }
}

/// `(code, message)` from the service's `{"error":{"code","message"}}` body and `x-ms-error-code`.
async fn error_body(response: reqwest::Response) -> (Option<String>, String) {
    let header_code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = String::from_utf8_lossy(&read_at_most(response, MAX_ERROR_BODY).await).into_owned();
    #[derive(serde::Deserialize)]
    struct Body {
        error: ErrorDetail,
    }
    #[derive(serde::Deserialize)]
    struct ErrorDetail {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_str::<Body>(&text) {
        Ok(body) => (body.error.code.or(header_code), body.error.message.unwrap_or_default()),
        Err(_) => (header_code, text.trim().chars().take(512).collect()),
    }
}

/// How much of an error body is read: the service's are a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The first `limit` bytes of `response`'s body, read as it streams in (within 5 s). The rest is
/// never read: dropping the response closes the connection, so a broken or hostile endpoint that
/// answers with a huge body costs at most `limit` bytes per upload.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let read = async {
        while body.len() < limit {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    body
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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

/// Runs `future` on a shared background runtime and waits for it on this thread.
fn run_blocking<F, T>(future: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tracing-azure-logs-blocking")
            // Its HTTP stack's events are not rows to ship: see `thread_role`.
            .on_thread_start(crate::thread_role::mark_worker_thread)
            .enable_all()
            .build()
            .expect("building a tokio runtime only fails when the OS refuses a thread")
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        use futures_util::FutureExt;
        let _ = tx.send(std::panic::AssertUnwindSafe(future).catch_unwind().await);
    });
    match rx.recv() {
        Ok(Ok(value)) => value,
        // The work panicked (a bug): the caller sees that panic, as with a joined thread.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the background runtime of upload_blocking shut down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert!(parse_endpoint("https://dce.eastus-1.ingest.monitor.azure.com").is_ok());
        assert!(parse_endpoint("http://127.0.0.1:8080").is_ok());
        assert!(parse_endpoint("http://localhost:1").is_ok());
        assert!(parse_endpoint("http://[::1]:1").is_ok());
        assert!(matches!(
            parse_endpoint("http://dce.example.com"),
            Err(ConfigError::InsecureEndpoint { .. })
        ));
        assert!(matches!(
            parse_endpoint("http://10.0.0.1"),
            Err(ConfigError::InsecureEndpoint { .. })
        ));
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("not a url").is_err());
        assert!(parse_endpoint("https://x/?a=b").is_err());
    }

    #[test]
    fn rows_must_be_objects() {
        assert!(serialize_row(&serde_json::json!({"a": 1})).is_ok());
        assert_eq!(serialize_row(&[1, 2]).unwrap_err(), "it serializes to an array");
        assert_eq!(serialize_row(&5).unwrap_err(), "it serializes to a number");
    }
}
