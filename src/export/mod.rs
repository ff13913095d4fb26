//! Continuous export: named KQL queries run every interval over the rows ingested since their
//! checkpoint, each window written to a sink, the checkpoint moved only once the sink confirmed.
//!
//! How it avoids what such exporters are known to get wrong:
//! - Windows are on `ingestion_time()`, `[checkpoint, now − settle)`, not on `TimeGenerated`:
//!   a row that arrives late (its `TimeGenerated` long past) is still in the window in which it
//!   was ingested. The query's timespan is `TimeGenerated` from `checkpoint − lookback` (default
//!   2 days: the service rewrites older times) to a day past the window (it rewrites times more
//!   than a day ahead). `settle` (default 5 minutes) must exceed how long the service takes to
//!   make an ingested row visible.
//! - The checkpoint moves only after the sink's `write` returned `Ok`; a failed write leaves it,
//!   and the next round exports the window again (sinks are idempotent by file name).
//! - A partial result (a window past 500,000 rows or ~64 MB) is never written: the window is
//!   split in half until each half fits.
//! - At most 5 queries in flight and 200 requests per 30 s (the service's limits per user); 429
//!   and 5xx are retried by the [`LogsQueryClient`].
//!
//! Delivery to a sink is at-least-once.

mod checkpoint;
mod sink;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::query::{LogsQueryClient, QueryError, Timespan};
pub use checkpoint::{CheckpointStore, FileCheckpoints};
pub use sink::{ExportSink, ExportWindow, JsonFileSink, JsonLinesSink, ReingestSink, SinkError, window_file_name};

/// Why a query's export stopped this round. Its checkpoint stays at the last window written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The query failed (see the inner error's hint).
    #[error("query {query}: {source}")]
    Query {
        /// The query's name.
        query: String,
        /// What the query client said.
        #[source]
        source: QueryError,
    },
    /// The sink could not write a window; it is exported again at the next round.
    #[error(
        "query {query}: the sink failed to write the window from {start} to {end}: {message}; the checkpoint did not move"
    )]
    Sink {
        /// The query's name.
        query: String,
        /// The window's start, RFC 3339.
        start: String,
        /// The window's end, RFC 3339.
        end: String,
        /// The sink's error.
        message: String,
    },
    /// The checkpoint could not be read or written.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// Where it is kept.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A window of less than a millisecond is still over a service limit (many rows ingested
    /// at the same instant); narrow the query.
    #[error(
        "query {query}: the window from {start} to {end} is over the service's limits and cannot be split further; narrow the query"
    )]
    TooDense {
        /// The query's name.
        query: String,
        /// The window's start, RFC 3339.
        start: String,
        /// The window's end, RFC 3339.
        end: String,
    },
}

impl ExportError {
    fn checkpoint(path: &std::path::Path, message: String) -> ExportError {
        ExportError::Checkpoint {
            path: path.display().to_string(),
            message,
        }
    }
}

/// A named query: a table (or a query that starts with one) and, optionally, operators to
/// apply after the window's filter (`| where Level == 'ERROR' | project ...`).
#[derive(Clone, Debug)]
pub struct ExportQuery {
    name: String,
    table: String,
    then: String,
}

impl ExportQuery {
    /// Exports table `table` under `name` (letters, digits, `_`, `-`, `.`: it names files).
    pub fn new(name: impl Into<String>, table: impl Into<String>) -> ExportQuery {
        ExportQuery {
            name: name.into(),
            table: table.into(),
            then: String::new(),
        }
    }

    /// Operators applied after the window's filter, starting with `|`.
    pub fn then(mut self, operators: impl Into<String>) -> ExportQuery {
        self.then = operators.into();
        self
    }
}

/// What a round did for one query.
#[derive(Debug)]
#[non_exhaustive]
pub struct QueryRound {
    /// The query's name.
    pub query: String,
    /// The windows written, in order: start, end, rows.
    pub windows: Vec<(SystemTime, SystemTime, usize)>,
    /// The checkpoint after the round.
    pub checkpoint: Option<SystemTime>,
    /// Why the round stopped early for this query.
    pub error: Option<ExportError>,
}

impl QueryRound {
    /// Rows written this round.
    pub fn rows(&self) -> usize {
        self.windows.iter().map(|w| w.2).sum()
    }
}

/// Runs named queries continuously into a sink; see the [module docs](self).
pub struct ContinuousExport {
    client: LogsQueryClient,
    workspace: String,
    queries: Vec<ExportQuery>,
    checkpoints: Arc<dyn CheckpointStore>,
    sink: Arc<dyn ExportSink>,
    settle: Duration,
    lookback: Duration,
    first_window: Duration,
    in_flight: tokio::sync::Semaphore,
    requests: RequestBudget,
}

impl std::fmt::Debug for ContinuousExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousExport")
            .field("workspace", &self.workspace)
            .field("queries", &self.queries)
            .field("settle", &self.settle)
            .finish_non_exhaustive()
    }
}

impl ContinuousExport {
    /// An exporter of `queries` in `workspace` into `sink`, with checkpoints in `checkpoints`.
    /// Fails if a query's name cannot name a file.
    pub fn new(
        client: LogsQueryClient,
        workspace: impl Into<String>,
        queries: Vec<ExportQuery>,
        checkpoints: Arc<dyn CheckpointStore>,
        sink: Arc<dyn ExportSink>,
    ) -> Result<ContinuousExport, crate::client::ConfigError> {
        for q in &queries {
            let ok = !q.name.is_empty()
                && !q.name.starts_with('.')
                && q.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !ok {
                return Err(crate::client::ConfigError::InvalidOption {
                    option: "export query name",
                    reason: format!("{:?}: use letters, digits, '_', '-' and '.' (it names files)", q.name),
                });
            }
        }
        Ok(ContinuousExport {
            client,
            workspace: workspace.into(),
            queries,
            checkpoints,
            sink,
            settle: Duration::from_secs(300),
            lookback: Duration::from_secs(2 * 86_400),
            first_window: Duration::from_secs(3 * 3600),
            in_flight: tokio::sync::Semaphore::new(5),
            requests: RequestBudget::new(200, Duration::from_secs(30)),
        })
    }

    /// How long before now a window ends (default 5 minutes): rows the service has ingested
    /// but not yet made visible must be older than this.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// How far before a window's start `TimeGenerated` may lie (default 2 days).
    pub fn lookback(mut self, lookback: Duration) -> Self {
        self.lookback = lookback;
        self
    }

    /// Where a query without a checkpoint starts: this long before now (default 3 hours).
    pub fn first_window(mut self, first_window: Duration) -> Self {
        self.first_window = first_window;
        self
    }

    /// Runs a round every `interval` until `stop` completes; each round's reports go to
    /// `on_round`.
    pub async fn run(
        &self,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
        mut on_round: impl FnMut(Vec<QueryRound>),
    ) {
        let mut stop = std::pin::pin!(stop);
        let mut ticks = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => on_round(self.run_round().await),
            }
        }
    }

    /// One round: every query, concurrently (at most 5 in flight), from its checkpoint to
    /// now − settle.
    pub async fn run_round(&self) -> Vec<QueryRound> {
        let now = SystemTime::now();
        let rounds = self.queries.iter().map(|q| self.export_query(q, now));
        futures_util::future::join_all(rounds).await
    }

    async fn export_query(&self, query: &ExportQuery, now: SystemTime) -> QueryRound {
        let mut round = QueryRound {
            query: query.name.clone(),
            windows: Vec::new(),
            checkpoint: None,
            error: None,
        };
        let start = match self.checkpoints.load(&query.name) {
            Ok(start) => start.unwrap_or(now - self.first_window),
            Err(e) => {
                round.error = Some(e);
                return round;
            }
        };
        round.checkpoint = Some(start);
        let end = now - self.settle;
        let mut pending = VecDeque::from([(start, end)]);
        while let Some((from, to)) = pending.pop_front() {
            if to <= from {
                continue;
            }
            let table = match self.window(query, from, to).await {
                Ok(table) => table,
                Err(QueryError::Partial { .. }) => {
                    let half = to.duration_since(from).unwrap_or_default() / 2;
                    if half < Duration::from_micros(500) {
                        round.error = Some(ExportError::TooDense {
                            query: query.name.clone(),
                            start: rfc3339(from),
                            end: rfc3339(to),
                        });
                        return round;
                    }
                    pending.push_front((from + half, to));
                    pending.push_front((from, from + half));
                    continue;
                }
                Err(source) => {
                    round.error = Some(ExportError::Query {
                        query: query.name.clone(),
                        source,
                    });
                    return round;
                }
            };
            let window = ExportWindow {
                query: &query.name,
                start: from,
                end: to,
                table: &table,
            };
            if let Err(e) = self.sink.write(&window).await {
                round.error = Some(ExportError::Sink {
                    query: query.name.clone(),
                    start: rfc3339(from),
                    end: rfc3339(to),
                    message: e.to_string(),
                });
                return round;
            }
            if let Err(e) = self.checkpoints.save(&query.name, to) {
                round.error = Some(e);
                return round;
            }
            round.checkpoint = Some(to);
            round.windows.push((from, to, table.rows.len()));
        }
        round
    }

    /// The rows of `query` ingested in `[from, to)`; a partial result is an error.
    async fn window(
        &self,
        query: &ExportQuery,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<crate::query::LogsTable, QueryError> {
        let kql = format!(
            "{} | where ingestion_time() >= datetime({}) and ingestion_time() < datetime({}) {}",
            query.table,
            rfc3339(from),
            rfc3339(to),
            query.then
        );
        let timespan = Timespan::Between(from - self.lookback, to + Duration::from_secs(86_400));
        let _slot = self.in_flight.acquire().await.expect("never closed");
        self.requests.take().await;
        let result = self.client.query_workspace(&self.workspace, &kql, timespan).await?;
        Ok(result.primary())
    }
}

/// At most `max` requests in any `per`: a request waits until the oldest of the last `max`
/// is older than `per`.
struct RequestBudget {
    max: usize,
    per: Duration,
    sent: Mutex<VecDeque<Instant>>,
}

impl RequestBudget {
    fn new(max: usize, per: Duration) -> RequestBudget {
        RequestBudget {
            max,
            per,
            sent: Mutex::new(VecDeque::new()),
        }
    }

    async fn take(&self) {
        loop {
            let wait = {
                let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
                while sent.front().is_some_and(|t| t.elapsed() >= self.per) {
                    sent.pop_front();
                }
                if sent.len() < self.max {
                    sent.push_back(Instant::now());
                    return;
                }
                self.per.saturating_sub(sent.front().expect("full").elapsed())
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds (what KQL's `datetime()` reads back exactly).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    azure_core::time::to_rfc3339(&azure_core::time::OffsetDateTime::from(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn the_request_budget_waits_once_it_is_spent() {
        let per = Duration::from_millis(200);
        let budget = RequestBudget::new(3, per);
        let started = Instant::now();
        for _ in 0..3 {
            budget.take().await;
        }
        assert!(started.elapsed() < per, "three fit at once");
        budget.take().await;
        assert!(started.elapsed() >= per, "the fourth waited: {:?}", started.elapsed());
    }
}
