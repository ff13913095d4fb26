//! State shared between the handle and the server thread: accepted rows, the request log,
//! counters, the token and the fault plan.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use azure_core::credentials::Secret;
use serde_json::Value;

use super::faults::{Fault, FaultPlan};
use super::schema::Declarations;

/// One request as the emulator saw it, appended to the request log when the request ends
/// (answered or dropped).
///
/// The log keeps the most recent records only (see
/// [`EmulatorBuilder::request_log_capacity`](super::EmulatorBuilder::request_log_capacity),
/// default [`DEFAULT_REQUEST_LOG_CAPACITY`](super::DEFAULT_REQUEST_LOG_CAPACITY)); counters in
/// [`EmulatorStats`] cover every request.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Position of the record among all finished requests since start (1-based, gapless even
    /// when the log has dropped older records): equals [`EmulatorStats::requests`] right after
    /// this request finished.
    pub seq: u64,
    /// Wall-clock time the request head arrived.
    pub received_at: SystemTime,
    /// Monotonic time the request head arrived.
    pub started: Instant,
    /// Time from arrival to the answer (or to the drop), injected latency included.
    pub duration: Duration,
    /// HTTP method (`"POST"`).
    pub method: String,
    /// Request path as sent (still percent-encoded, without the query).
    pub path: String,
    /// Percent-decoded rule id, when the path matched the upload route.
    pub rule_id: Option<String>,
    /// Percent-decoded stream name, when the path matched the upload route.
    pub stream: Option<String>,
    /// The `api-version` query parameter, when present.
    pub api_version: Option<String>,
    /// `"HTTP/1.1"`, `"HTTP/2.0"`, ...
    pub http_version: String,
    /// Status answered; `None` when the connection was dropped without a response (injected
    /// drop, client disconnect, body cut off, shutdown).
    pub status: Option<u16>,
    /// The `x-ms-error-code` answered with an error status.
    pub error_code: Option<String>,
    /// The injected fault, if any (latency included, even though the request then succeeds).
    pub fault: Option<Fault>,
    /// The `Content-Length` request header, when sent.
    pub content_length: Option<u64>,
    /// Body bytes read from the wire (compressed size when gzipped; bodies answered 413 are read
    /// and discarded up to a bound, then the connection is closed).
    pub wire_bytes: u64,
    /// Decoded body size (after gunzip), when the body was decoded.
    pub uncompressed_bytes: Option<u64>,
    /// `Content-Type` request header.
    pub content_type: Option<String>,
    /// `Content-Encoding` request header.
    pub content_encoding: Option<String>,
    /// `User-Agent` request header.
    pub user_agent: Option<String>,
    /// `x-ms-client-request-id` request header.
    pub client_request_id: Option<String>,
    /// Whether the bearer token was accepted (always true when auth is off).
    pub authorized: bool,
    /// Rows accepted from this request (0 unless answered 204).
    pub rows: usize,
}

/// Counters over every request since start (not bounded by the request-log capacity).
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EmulatorStats {
    /// Requests finished (answered or dropped).
    pub requests: u64,
    /// Requests answered 204 (uploads) or 200 (queries).
    pub accepted_requests: u64,
    /// Requests answered with any other status (injected faults included).
    pub rejected_requests: u64,
    /// Rows accepted (counted even when rows are not retained).
    pub rows_accepted: u64,
    /// Body bytes read from the wire.
    pub wire_bytes: u64,
    /// Decoded body bytes.
    pub uncompressed_bytes: u64,
    /// Requests that got an injected fault (latency included).
    pub faults_injected: u64,
    /// Requests that ended without a response.
    pub dropped_connections: u64,
    /// Requests being handled right now (arrived, not yet answered or dropped).
    pub in_flight: u64,
    /// Highest `in_flight` seen.
    pub max_in_flight: u64,
}

/// Row texts: one JSON text and the (start, len) span of each row inside it.
pub(crate) type Chunk = (String, Vec<(usize, usize)>);

/// Rows accepted by one request: stream, row count, texts when retained.
pub(crate) type Stored<'a> = (&'a str, usize, Option<Chunk>);

/// Accepted rows of one stream: raw JSON texts with the row spans inside them.
#[derive(Debug, Default)]
pub(crate) struct StreamRows {
    pub(crate) count: usize,
    chunks: Vec<Chunk>,
    /// When each chunk was accepted (its rows' `ingestion_time()`), and from when queries see it.
    ingested: Vec<(SystemTime, SystemTime)>,
}

impl StreamRows {
    fn values(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::with_capacity(self.count);
        for (text, spans) in &self.chunks {
            for &(start, len) in spans {
                // The text was validated as JSON on arrival.
                out.push(serde_json::from_str(&text[start..start + len]).unwrap_or(serde_json::Value::Null));
            }
        }
        out
    }
}

/// Mutable state behind one mutex.
#[derive(Debug)]
pub(crate) struct State {
    /// The accepted bearer token; `Secret` keeps it out of `Debug` output.
    pub(crate) token: Option<Secret>,
    pub(crate) faults: FaultPlan,
    pub(crate) streams: HashMap<String, StreamRows>,
    pub(crate) log: VecDeque<RequestRecord>,
    pub(crate) stats: EmulatorStats,
    /// Rows of the next `n` accepted requests are seen by queries this much later than the
    /// others (late arrival).
    pub(crate) late: Option<(usize, Duration)>,
}

/// Settings fixed at start.
#[derive(Debug)]
pub(crate) struct Config {
    /// Streams declared at start or by a rule's `PUT`.
    pub(crate) declarations: RwLock<Declarations>,
    pub(crate) strict_schema: bool,
    pub(crate) strict_size: bool,
    pub(crate) max_decompressed_bytes: usize,
    pub(crate) retain_rows: bool,
    pub(crate) persist_dir: Option<PathBuf>,
    pub(crate) request_log_capacity: usize,
    /// How long after it was accepted a row is seen by queries.
    pub(crate) query_visibility_delay: Duration,
    pub(crate) query_max_rows: usize,
    pub(crate) query_max_bytes: usize,
    /// How long after its `PUT` a rule answers uploads with 403 (role assignment propagating).
    pub(crate) role_propagation: Duration,
    /// Accept any non-empty bearer token (while auth is on).
    pub(crate) any_token: bool,
    /// Serve the Entra token and discovery routes.
    pub(crate) entra: bool,
}

/// Everything the server and the handle share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    state: Mutex<State>,
    changed: Condvar,
    pub(crate) token_requests: AtomicU64,
    /// Open `<dir>/<stream>.jsonl` files.
    pub(crate) persist_files: Mutex<HashMap<String, File>>,
    /// Tables and rules created through the management routes, and access denials.
    pub(crate) resources: Mutex<Resources>,
    /// The base URL clients reach the server at, set once it is bound.
    pub(crate) endpoint: OnceLock<String>,
}

/// What the management routes created, and which rules refuse uploads.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    /// (workspace id, table name) → the table as put, and its columns.
    pub(crate) tables: HashMap<(String, String), Table>,
    /// Rule resource id → the rule.
    pub(crate) rules: HashMap<String, Rule>,
    /// Immutable ids of denied rules.
    pub(crate) denied: HashSet<String>,
}

/// A table as put, and its columns (name, lower-cased type).
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) body: Value,
    pub(crate) columns: Vec<(String, String)>,
}

/// A rule as put.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) immutable_id: String,
    pub(crate) created: Instant,
    pub(crate) body: Value,
}

impl Resources {
    /// Marks a rule denied, or not.
    pub(crate) fn deny(&mut self, immutable_id: &str, denied: bool) {
        if denied {
            self.denied.insert(immutable_id.to_owned());
        } else {
            self.denied.remove(immutable_id);
        }
    }

    /// The resource id of the rule with this immutable id, if it was created here.
    pub(crate) fn rule_id_of(&self, immutable_id: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|(_, r)| r.immutable_id == immutable_id)
            .map(|(id, _)| id.as_str())
    }
}

impl Shared {
    pub(crate) fn new(config: Config, state: State) -> Shared {
        Shared {
            config,
            state: Mutex::new(state),
            changed: Condvar::new(),
            token_requests: AtomicU64::new(0),
            persist_files: Mutex::new(HashMap::new()),
            resources: Mutex::new(Resources::default()),
            endpoint: OnceLock::new(),
        }
    }

    /// The declared streams (a poisoned lock is used as is).
    pub(crate) fn declarations(&self) -> RwLockReadGuard<'_, Declarations> {
        self.config.declarations.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The declared streams, to change them.
    pub(crate) fn declarations_mut(&self) -> RwLockWriteGuard<'_, Declarations> {
        self.config.declarations.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The management resources (a poisoned lock is used as is).
    pub(crate) fn resources(&self) -> MutexGuard<'_, Resources> {
        self.resources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the state; a poisoned lock is used as is (the state stays consistent).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A request arrived: counts it in flight and returns its fault (when `faulty`: the Entra
    /// routes draw none) and the accepted token.
    pub(crate) fn enter(&self, faulty: bool) -> (Option<Fault>, Option<Secret>) {
        let mut st = self.lock();
        st.stats.in_flight += 1;
        st.stats.max_in_flight = st.stats.max_in_flight.max(st.stats.in_flight);
        let fault = if faulty { st.faults.next() } else { None };
        let out = (fault, st.token.clone());
        drop(st);
        self.changed.notify_all();
        out
    }

    /// Appends a finished request and stores its rows (if any), then wakes waiters.
    pub(crate) fn finish(&self, mut record: RequestRecord, stored: Option<Stored<'_>>) {
        let mut st = self.lock();
        let s = &mut st.stats;
        s.in_flight = s.in_flight.saturating_sub(1);
        s.requests += 1;
        record.seq = s.requests;
        s.wire_bytes += record.wire_bytes;
        s.uncompressed_bytes += record.uncompressed_bytes.unwrap_or(0);
        if record.fault.is_some() {
            s.faults_injected += 1;
        }
        match record.status {
            None => s.dropped_connections += 1,
            Some(200 | 204) => s.accepted_requests += 1,
            Some(_) => s.rejected_requests += 1,
        }
        if let Some((stream, count, chunk)) = stored {
            s.rows_accepted += count as u64;
            st.streams.entry(stream.to_owned()).or_default().count += count;
            if let Some(chunk) = chunk.filter(|c| !c.1.is_empty()) {
                let now = SystemTime::now();
                let mut visible = now + self.config.query_visibility_delay;
                if let Some((requests, extra)) = st.late.as_mut().filter(|(n, _)| *n > 0) {
                    *requests -= 1;
                    visible += *extra;
                }
                let rows = st.streams.entry(stream.to_owned()).or_default();
                rows.chunks.push(chunk);
                rows.ingested.push((now, visible));
            }
        }
        let cap = self.config.request_log_capacity;
        if cap > 0 {
            while st.log.len() >= cap {
                st.log.pop_front();
            }
            st.log.push_back(record);
        }
        drop(st);
        self.changed.notify_all();
    }

    pub(crate) fn rows(&self, stream: &str) -> Vec<serde_json::Value> {
        // Clone the texts out of the lock would cost as much as parsing; parse under the lock.
        let st = self.lock();
        st.streams.get(stream).map(StreamRows::values).unwrap_or_default()
    }

    /// The rows of `stream` that queries see at `now`, each with its ingestion time.
    pub(crate) fn query_rows(&self, stream: &str, now: SystemTime) -> Vec<super::kql::Row> {
        let st = self.lock();
        let Some(rows) = st.streams.get(stream) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((text, spans), (ingested, visible)) in rows.chunks.iter().zip(&rows.ingested) {
            if *visible > now {
                continue;
            }
            let nanos = ingested
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as i128);
            for &(start, len) in spans {
                if let Ok(serde_json::Value::Object(values)) = serde_json::from_str(&text[start..start + len]) {
                    out.push(super::kql::Row {
                        values,
                        ingested: nanos,
                    });
                }
            }
        }
        out
    }

    /// Whether `stream` has accepted rows (retained or not).
    pub(crate) fn has_stream(&self, stream: &str) -> bool {
        self.lock().streams.contains_key(stream)
    }

    pub(crate) fn stats(&self) -> EmulatorStats {
        self.lock().stats.clone()
    }

    /// Waits until `done(state)` holds or the timeout passes; returns whether it holds.
    pub(crate) fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        let mut st = self.lock();
        loop {
            if done(&st) {
                return true;
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
                // Timeout too large to represent: wait in long slices.
                None => Duration::from_secs(3600),
            };
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_does_not_show_the_token() {
        let state = State {
            token: Some(Secret::new("s3cr3t-bearer-token")),
            faults: FaultPlan::new(None),
            streams: HashMap::new(),
            log: VecDeque::new(),
            stats: EmulatorStats::default(),
            late: None,
        };
        let shown = format!("{state:?}");
        assert!(shown.contains("token"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
