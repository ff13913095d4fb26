//! Reading rows back: a client of the Azure Monitor Logs Query API (`POST
//! /v1/workspaces/{id}/query`), with the same credentials, token cache and retry policy as
//! uploads.
//!
//! Pitfalls: rows become visible to queries seconds to minutes after they were accepted, so a
//! query right after an upload may not see them yet; a result past the service's limits (500,000
//! rows, about 64 MB) is partial, and is an error ([`QueryError::Partial`]) unless you allow it;
//! the identity needs read access to the workspace (the 'Log Analytics Reader' role), which an
//! identity that only uploads does not have.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tracing_azure_logs::query::{LogsQueryClient, Timespan};
//!
//! #[derive(serde::Deserialize)]
//! struct Row {
//!     #[serde(rename = "Level")]
//!     level: String,
//!     count_: i64,
//! }
//!
//! let client = LogsQueryClient::builder(tracing_azure_logs::client::credential_from_env()?).build()?;
//! let result = client
//!     .query_workspace(
//!         "00000000-0000-0000-0000-000000000000",
//!         "MyService_CL | summarize count() by Level",
//!         Timespan::Last(Duration::from_secs(3600)),
//!     )
//!     .await?;
//! for row in result.primary().rows_as::<Row>()? {
//!     println!("{}: {}", row.level, row.count_);
//! }
//! # Ok(()) }
//! ```

mod error;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use azure_core::credentials::TokenCredential;
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::client::{
    CachedToken, ConfigError, FailureReason, RetryPolicy, StatusClass, TokenCache, classify, default_http_client,
    json_post, parse_endpoint, read_at_most, retry_after, unanswered,
};
pub use error::QueryError;

/// The public cloud's query endpoint.
pub const DEFAULT_QUERY_ENDPOINT: &str = "https://api.loganalytics.azure.com";
/// The public cloud's token scope for queries. US Government: `https://api.loganalytics.us/.default`
/// (endpoint `https://api.loganalytics.us`); China: `https://api.loganalytics.azure.cn/.default`
/// (endpoint `https://api.loganalytics.azure.cn`).
pub const DEFAULT_QUERY_SCOPE: &str = "https://api.loganalytics.io/.default";

/// Which rows a query looks at, by `TimeGenerated` (the service applies it on top of the
/// query's own filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Timespan {
    /// The last `Duration` up to now.
    Last(Duration),
    /// From the first time (included) to the second (excluded).
    Between(SystemTime, SystemTime),
    /// No time filter besides the query's own.
    All,
}

impl Timespan {
    /// The ISO 8601 form the API takes (`PT3600S`, `start/end`), `None` for `All`.
    pub fn to_iso8601(&self) -> Option<String> {
        match self {
            Timespan::Last(d) => Some(format!("PT{}S", d.as_secs_f64())),
            Timespan::Between(start, end) => {
                let text = |t: &SystemTime| azure_core::time::to_rfc3339(&azure_core::time::OffsetDateTime::from(*t));
                Some(format!("{}/{}", text(start), text(end)))
            }
            Timespan::All => None,
        }
    }
}

/// Options of one query.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct QueryOptions {
    /// How long the service may run the query (`Prefer: wait=N`; the service's default is 180 s,
    /// its maximum 600 s). Past it the service answers 504, which is retried.
    pub server_timeout: Option<Duration>,
    /// Ask for the service's statistics (`Prefer: include-statistics=true`), in
    /// [`QueryResult::statistics`].
    pub include_statistics: bool,
    /// Return a partial result as `Ok` (with [`QueryResult::partial_error`] set) instead of
    /// [`QueryError::Partial`].
    pub allow_partial: bool,
}

impl QueryOptions {
    /// See [`QueryOptions::server_timeout`].
    pub fn server_timeout(mut self, timeout: Duration) -> Self {
        self.server_timeout = Some(timeout);
        self
    }

    /// See [`QueryOptions::include_statistics`].
    pub fn include_statistics(mut self, include: bool) -> Self {
        self.include_statistics = include;
        self
    }

    /// See [`QueryOptions::allow_partial`].
    pub fn allow_partial(mut self, allow: bool) -> Self {
        self.allow_partial = allow;
        self
    }
}

/// The tables a query returned.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueryResult {
    /// The result tables; the first is the query's result (`PrimaryResult`).
    pub tables: Vec<LogsTable>,
    /// The service's statistics, when asked for.
    pub statistics: Option<Value>,
    /// The partial error, when the result is partial and [`QueryOptions::allow_partial`] was set.
    pub partial_error: Option<Value>,
}

impl QueryResult {
    /// The query's result table (an empty one if the service returned none, as for an empty
    /// workspace).
    pub fn primary(&self) -> LogsTable {
        self.tables.first().cloned().unwrap_or_else(|| LogsTable {
            name: "PrimaryResult".into(),
            columns: Vec::new(),
            rows: Vec::new(),
        })
    }
}

/// One result table: typed columns, and rows of JSON values in column order.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct LogsTable {
    /// The table's name (`PrimaryResult`).
    pub name: String,
    /// The columns, in order.
    pub columns: Vec<LogsColumn>,
    /// Values as the API sends them: datetimes as ISO 8601 text, `dynamic` values as JSON text.
    pub rows: Vec<Vec<Value>>,
}

/// A result column.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogsColumn {
    /// The column's name.
    pub name: String,
    /// Its type.
    pub column_type: LogsColumnType,
}

/// A result column's type, as the API names it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogsColumnType {
    /// `bool`: JSON true/false.
    Bool,
    /// `datetime`: ISO 8601 text.
    DateTime,
    /// `dynamic`: JSON text (parsed by [`LogsTable::objects`] and [`LogsTable::rows_as`]).
    Dynamic,
    /// `int`: a JSON number.
    Int,
    /// `long`: a JSON number.
    Long,
    /// `real`: a JSON number.
    Real,
    /// `decimal`: text.
    Decimal,
    /// `string`.
    String,
    /// `timespan`: text such as `00:01:30`.
    TimeSpan,
    /// `guid`: text.
    Guid,
    /// A type name this crate does not know.
    Other(String),
}

impl LogsColumnType {
    fn parse(name: &str) -> LogsColumnType {
        match name {
            "bool" | "boolean" => LogsColumnType::Bool,
            "datetime" => LogsColumnType::DateTime,
            "dynamic" => LogsColumnType::Dynamic,
            "int" => LogsColumnType::Int,
            "long" => LogsColumnType::Long,
            "real" => LogsColumnType::Real,
            "decimal" => LogsColumnType::Decimal,
            "string" => LogsColumnType::String,
            "timespan" => LogsColumnType::TimeSpan,
            "guid" => LogsColumnType::Guid,
            other => LogsColumnType::Other(other.to_owned()),
        }
    }
}

impl LogsTable {
    /// The index of the column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Each row as a JSON object by column name; `dynamic` values parsed from their JSON text.
    pub fn objects(&self) -> Vec<serde_json::Map<String, Value>> {
        self.rows
            .iter()
            .map(|row| {
                self.columns
                    .iter()
                    .zip(row)
                    .map(|(column, value)| {
                        let value = match (&column.column_type, value) {
                            (LogsColumnType::Dynamic, Value::String(text)) => {
                                serde_json::from_str(text).unwrap_or_else(|_| value.clone())
                            }
                            _ => value.clone(),
                        };
                        (column.name.clone(), value)
                    })
                    .collect()
            })
            .collect()
    }

    /// Decodes each row into `T` by column name (serde's field names, `#[serde(rename)]` for
    /// columns such as `TimeGenerated`); `dynamic` columns decode as nested values.
    pub fn rows_as<T: DeserializeOwned>(&self) -> Result<Vec<T>, QueryError> {
        self.objects()
            .into_iter()
            .enumerate()
            .map(|(row, object)| {
                serde_json::from_value(Value::Object(object)).map_err(|e| QueryError::Decode {
                    table: self.name.clone(),
                    row,
                    message: e.to_string(),
                })
            })
            .collect()
    }
}

/// Runs KQL queries against Log Analytics workspaces. Cheap to clone; clones share the
/// connection pool and the token cache.
#[derive(Clone, Debug)]
pub struct LogsQueryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    endpoint: Url,
    tokens: TokenCache,
    retry: RetryPolicy,
    user_agent: reqwest::header::HeaderValue,
}

/// Settings of a [`LogsQueryClient`]; see [`LogsQueryClient::builder`].
#[derive(Debug)]
#[must_use]
pub struct LogsQueryClientBuilder {
    endpoint: String,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    retry: RetryPolicy,
    http: Option<reqwest::Client>,
}

impl LogsQueryClientBuilder {
    /// The query endpoint (default [`DEFAULT_QUERY_ENDPOINT`]; the emulator's
    /// [`endpoint`](crate::emulator::Emulator::endpoint) for local tests).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// The token scope (default [`DEFAULT_QUERY_SCOPE`]; see there for sovereign clouds).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// Retries of 429, 5xx (504 included: the query ran past its server timeout), timeouts and
    /// connection errors. Default: as for uploads, within a 2-minute deadline.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The HTTP client (default: the crate's, as for uploads).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<LogsQueryClient, ConfigError> {
        let endpoint = parse_endpoint(&self.endpoint)?;
        let credential = self.credential;
        let http = match self.http {
            Some(http) => http,
            None => default_http_client()?,
        };
        Ok(LogsQueryClient {
            inner: Arc::new(Inner {
                http,
                endpoint,
                tokens: TokenCache::new(credential, self.scope),
                retry: self.retry,
                user_agent: reqwest::header::HeaderValue::from_static(concat!(
                    "tracing-azure-logs/",
                    env!("CARGO_PKG_VERSION")
                )),
            }),
        })
    }
}

impl LogsQueryClient {
    /// A builder with the public cloud's endpoint and scope; `credential` is any azure_core
    /// `TokenCredential` (for the emulator, [`Emulator::credential`](crate::emulator::Emulator::credential)).
    pub fn builder(credential: Arc<dyn TokenCredential>) -> LogsQueryClientBuilder {
        LogsQueryClientBuilder {
            endpoint: DEFAULT_QUERY_ENDPOINT.into(),
            scope: DEFAULT_QUERY_SCOPE.into(),
            credential,
            retry: RetryPolicy::default(),
            http: None,
        }
    }

    /// Runs `query` (KQL) in the workspace `workspace_id` (its GUID) over `timespan`.
    pub async fn query_workspace(
        &self,
        workspace_id: &str,
        query: &str,
        timespan: Timespan,
    ) -> Result<QueryResult, QueryError> {
        self.query_workspace_with(workspace_id, query, timespan, &QueryOptions::default())
            .await
    }

    /// [`query_workspace`](Self::query_workspace) with options.
    pub async fn query_workspace_with(
        &self,
        workspace_id: &str,
        query: &str,
        timespan: Timespan,
        options: &QueryOptions,
    ) -> Result<QueryResult, QueryError> {
        let mut url = self.inner.endpoint.clone();
        url.path_segments_mut()
            .map_err(|()| QueryError::InvalidResponse("the endpoint cannot take a path".into()))?
            .pop_if_empty()
            .extend(["v1", "workspaces", workspace_id, "query"]);
        let mut body = serde_json::json!({ "query": query });
        if let Some(timespan) = timespan.to_iso8601() {
            body["timespan"] = Value::String(timespan);
        }
        let mut prefer = Vec::new();
        if let Some(wait) = options.server_timeout {
            prefer.push(format!("wait={}", wait.as_secs().max(1)));
        }
        if options.include_statistics {
            prefer.push("include-statistics=true".into());
        }
        let request = QueryRequest {
            url,
            body: bytes::Bytes::from(body.to_string()),
            prefer: (!prefer.is_empty()).then(|| prefer.join(", ")),
            // The service's default server timeout, and a margin for the answer to travel.
            timeout: options.server_timeout.unwrap_or(Duration::from_secs(180)) + Duration::from_secs(30),
        };
        let answer = self.send(&request).await?;
        let result = parse_result(answer)?;
        match &result.partial_error {
            Some(error) if !options.allow_partial => {
                let code = error["code"].as_str().unwrap_or("PartialError").to_owned();
                let detail = error["details"][0]["message"]
                    .as_str()
                    .or(error["message"].as_str())
                    .unwrap_or("no message")
                    .to_owned();
                Err(QueryError::Partial {
                    result: Box::new(result),
                    code,
                    message: detail,
                })
            }
            _ => Ok(result),
        }
    }

    /// Sends `request` until it succeeds, is refused, or the retry policy gives up; the body of
    /// the answer (`Null` for 204).
    async fn send(&self, request: &QueryRequest) -> Result<Value, QueryError> {
        let inner = &*self.inner;
        let started = Instant::now();
        let (mut attempts, mut tries) = (0u32, 0u32);
        let mut token: Option<Arc<CachedToken>> = None;
        let mut refreshed = false;
        loop {
            let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
            tries += 1;
            let (error, wait) = match self.attempt(request, &mut token, remaining, &mut attempts).await {
                Try::Done(value) => return Ok(value),
                Try::Refused(error) => return Err(error),
                Try::Unauthorized(rejected) if !refreshed => {
                    // One fresh token, and the retry with it does not wait or count.
                    match inner.tokens.within(remaining, inner.tokens.replace(&rejected)).await {
                        Ok(fresh) => {
                            refreshed = true;
                            tries -= 1;
                            token = Some(fresh);
                            continue;
                        }
                        Err(reason) => (auth_error(reason), None),
                    }
                }
                Try::Unauthorized(_) => return Err(refused(401, None, "the token was refused twice".into())),
                Try::Retry(error, wait) => (error, wait),
            };
            let delay = inner.retry.wait_before(tries, wait);
            let remaining = inner.retry.deadline.saturating_sub(started.elapsed());
            if tries >= inner.retry.max_attempts || delay >= remaining {
                return Err(match error {
                    error @ QueryError::Authentication { .. } => error,
                    other => QueryError::RetriesExhausted {
                        attempts,
                        last_error: other.to_string(),
                    },
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        request: &QueryRequest,
        token: &mut Option<Arc<CachedToken>>,
        remaining: Duration,
        attempts: &mut u32,
    ) -> Try {
        let inner = &*self.inner;
        if remaining.is_zero() {
            return Try::Retry(QueryError::InvalidResponse("the retry deadline passed".into()), None);
        }
        let current = match token.clone() {
            Some(t) => t,
            None => match inner.tokens.within(remaining, inner.tokens.get()).await {
                Ok(t) => t,
                Err(reason) => return Try::Retry(auth_error(reason), None),
            },
        };
        *token = Some(current.clone());
        *attempts += 1;
        let timeout = request.timeout.min(remaining);
        let mut http =
            json_post(&inner.http, &request.url, timeout, &inner.user_agent, &current).body(request.body.clone());
        if let Some(prefer) = &request.prefer {
            http = http.header("prefer", prefer);
        }
        let response = match http.send().await {
            Ok(response) => response,
            Err(e) => return Try::Retry(QueryError::InvalidResponse(unanswered(&e, timeout)), None),
        };
        let status = response.status().as_u16();
        match classify(status) {
            StatusClass::Success if status == 204 => Try::Done(Value::Null),
            StatusClass::Success => match response.bytes().await {
                Ok(body) => match serde_json::from_slice(&body) {
                    Ok(value) => Try::Done(value),
                    Err(e) => Try::Refused(QueryError::InvalidResponse(format!("the body is not JSON: {e}"))),
                },
                Err(e) => Try::Retry(QueryError::InvalidResponse(format!("reading the answer: {e}")), None),
            },
            StatusClass::Unauthorized => Try::Unauthorized(current),
            StatusClass::Retryable => {
                let wait = retry_after(response.headers());
                let (code, message) = error_detail(response).await;
                let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
                Try::Retry(
                    QueryError::InvalidResponse(format!("HTTP {status}{code}: {message}")),
                    wait,
                )
            }
            StatusClass::Permanent => {
                let (code, message) = error_detail(response).await;
                Try::Refused(refused(status, code, message))
            }
        }
    }
}

struct QueryRequest {
    url: Url,
    body: bytes::Bytes,
    prefer: Option<String>,
    timeout: Duration,
}

enum Try {
    Done(Value),
    Refused(QueryError),
    Unauthorized(Arc<CachedToken>),
    Retry(QueryError, Option<Duration>),
}

fn refused(status: u16, code: Option<String>, message: String) -> QueryError {
    QueryError::Rejected {
        status,
        code,
        message,
        hint: error::hint(status),
    }
}

fn auth_error(reason: FailureReason) -> QueryError {
    match reason {
        FailureReason::Authentication { scope, message } => QueryError::Authentication { scope, message },
        other => QueryError::InvalidResponse(other.to_string()),
    }
}

/// `(code, message)` of the service's error body; the inner error's code and message are added
/// (a bad query's reason is there).
async fn error_detail(response: reqwest::Response) -> (Option<String>, String) {
    let header_code = response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = String::from_utf8_lossy(&read_at_most(response, 64 * 1024).await).into_owned();
    let Ok(body) = serde_json::from_str::<Value>(&text) else {
        return (header_code, text.trim().chars().take(512).collect());
    };
    let error = &body["error"];
    let mut code = error["code"].as_str().map(str::to_owned).or(header_code);
    let mut message = error["message"].as_str().unwrap_or_default().to_owned();
    let inner = &error["innererror"];
    if let Some(inner_code) = inner["code"].as_str() {
        code = Some(format!("{}/{inner_code}", code.unwrap_or_default()));
    }
    if let Some(inner_message) = inner["message"].as_str() {
        message = format!("{message}: {inner_message}");
    }
    (code, message)
}

fn parse_result(body: Value) -> Result<QueryResult, QueryError> {
    let bad = |what: &str| QueryError::InvalidResponse(format!("the result has no {what}"));
    let mut tables = Vec::new();
    for table in body["tables"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = table["name"].as_str().ok_or_else(|| bad("table name"))?.to_owned();
        let columns = table["columns"]
            .as_array()
            .ok_or_else(|| bad("columns"))?
            .iter()
            .map(|c| {
                Ok(LogsColumn {
                    name: c["name"].as_str().ok_or_else(|| bad("column name"))?.to_owned(),
                    column_type: LogsColumnType::parse(c["type"].as_str().unwrap_or("string")),
                })
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        let rows = table["rows"]
            .as_array()
            .ok_or_else(|| bad("rows"))?
            .iter()
            .map(|r| r.as_array().cloned().ok_or_else(|| bad("row array")))
            .collect::<Result<Vec<_>, QueryError>>()?;
        tables.push(LogsTable { name, columns, rows });
    }
    Ok(QueryResult {
        tables,
        statistics: body.get("statistics").cloned(),
        partial_error: body.get("error").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans_in_iso8601() {
        assert_eq!(
            Timespan::Last(Duration::from_secs(3600)).to_iso8601().as_deref(),
            Some("PT3600S")
        );
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let end = start + Duration::from_secs(5);
        assert_eq!(
            Timespan::Between(start, end).to_iso8601().as_deref(),
            Some("1970-01-01T00:00:10Z/1970-01-01T00:00:15Z")
        );
        assert_eq!(Timespan::All.to_iso8601(), None);
    }
}
