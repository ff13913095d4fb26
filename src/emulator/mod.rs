//! A local Logs Ingestion API server for tests, examples and offline development
//! (feature `emulator`).
//!
//! [`Emulator::start`] binds `127.0.0.1` on a free port and serves the upload operation of the
//! Azure Monitor Logs Ingestion API on its own thread (a current-thread tokio runtime, one core),
//! so it works from sync code and from inside any tokio runtime. Point a client at
//! [`Emulator::endpoint`] with the bearer token from [`Emulator::token`] (or use
//! [`Emulator::credential`]), then inspect what arrived with [`Emulator::rows`],
//! [`Emulator::requests`] and [`Emulator::stats`].
//!
//! # What it copies from the service
//!
//! - `POST /dataCollectionRules/{ruleId}/streams/{stream}?api-version=2023-01-01` (also
//!   `2021-11-01-preview`); segments are percent-decoded. A missing or unknown `api-version` is a
//!   400, another path a 404, another method a 405.
//! - `Authorization: Bearer <token>` is required (401 when missing or wrong) unless auth is off
//!   ([`EmulatorBuilder::no_auth`], [`Emulator::set_token`] with `None`). By default a random
//!   token is generated.
//! - A body longer than 1,048,576 bytes as sent (`Content-Length`, i.e. the gzipped size when
//!   gzipped; bodies without `Content-Length` are counted as they arrive) gets the service's 413
//!   verbatim: `{"error":{"code":"ContentLengthLimitExceeded","message":"Maximum allowed content
//!   length: 1048576 bytes (1 MB). Provided content length: N bytes."}}`. The service accepts an
//!   uncompressed payload over 1 MiB when its gzip fits; [`EmulatorBuilder::strict_size`] also caps
//!   the uncompressed JSON (the documentation's stricter reading).
//! - `Content-Encoding: gzip` is gunzipped (400 on bad gzip; other encodings 400). The decoded
//!   size is capped at [`DEFAULT_MAX_DECOMPRESSED_BYTES`] (64 MiB, configurable; the real service
//!   has a similar downstream cap around 50 MiB), with 16 bytes per row counted on top of the
//!   text: above it, 413 `PayloadSizeLimitExceeded`.
//! - The body must be UTF-8 JSON, an array of objects (400 otherwise); `[]` is accepted.
//! - Top-level string values longer than 64 KiB (65,536 bytes of UTF-8) are truncated at a char
//!   boundary, as the service does; nested strings inside `dynamic` values are kept as sent.
//! - With declared streams ([`EmulatorBuilder::declare_stream`]): an unknown rule or stream is a
//!   404, and rows are checked against the columns. Lenient mode (default, like the service,
//!   which answers 204 and fixes rows up later) stores mismatched values as `null` and drops
//!   undeclared columns; [`EmulatorBuilder::strict_schema`] answers 400 naming the row index and
//!   column instead. Without declarations every rule and stream is accepted as sent.
//! - Success is `204 No Content` with an empty body. Every error has the body
//!   `{"error":{"code":..,"message":..}}` and the header `x-ms-error-code`.
//!
//! Checks run in this order: the body is read (bounded), an injected fault applies, then route,
//! method, api-version, token, rule/stream, size, encoding, JSON shape, rows.
//!
//! It also answers the Logs Query API (`POST`/`GET /v1/workspaces/{id}/query`) over the rows it
//! accepted, with a KQL subset: see the README's "What it copies from the service",
//! [`EmulatorBuilder::query_visibility_delay`] and [`EmulatorBuilder::query_limits`].
//!
//! And it answers the two management calls that set a destination up (Azure Resource Manager
//! paths on the same listener): `PUT .../workspaces/{ws}/tables/{Name}_CL` and `PUT
//! .../dataCollectionRules/{name}`, which checks the rule's data flows against the tables, answers
//! with its `immutableId` and `endpoints.logsIngestion` (this server), and declares its streams.
//! [`Emulator::deny_rule`] and [`EmulatorBuilder::role_propagation`] answer uploads with the
//! service's 403 `OperationFailed` (`IsRbacPresent: False`), as a missing or not yet applied
//! role does.
//!
//! # A local service for any Azure client
//!
//! - HTTPS ([`EmulatorBuilder::tls`], [`EmulatorTls`]): rustls, HTTP/1.1 and HTTP/2 (ALPN), a
//!   generated CA and a certificate for `127.0.0.1` and `localhost`, or given PEM files. Every
//!   route is then served over TLS only; [`Emulator::ca_pem`] / [`Emulator::ca_file`] give the
//!   CA clients must trust. The official SDKs send a bearer token only over HTTPS.
//! - [`EmulatorBuilder::any_token`] accepts any non-empty bearer token, and
//!   [`EmulatorBuilder::entra`] serves the Entra token route (`POST /{tenant}/oauth2/v2.0/token`,
//!   `client_credentials`), so `ClientSecretCredential` with its authority host set to the
//!   endpoint works.
//! - `GET /health` answers 200 `{"status":"ok",..}` (no token, not recorded).
//! - The `azure-logs-emulator` binary ([`cli`]) runs all of this from the command line.
//!
//! Faults ([`Fault`], [`FaultRates`]) inject 429 (`Retry-After` or `retry-after-ms`), any status,
//! latency, a dropped connection or a request held without an answer (a hang), scripted ([`Emulator::inject`]) or at seeded random rates.
//!
//! # Limits and pitfalls
//!
//! - The request log keeps the last [`DEFAULT_REQUEST_LOG_CAPACITY`] records (configurable);
//!   counters cover every request.
//! - Accepted rows are kept in memory (their JSON text) for the emulator's lifetime; switch this
//!   off with [`EmulatorBuilder::retain_rows`] for long runs and benches (counts are still kept).
//! - Rows from different rules with the same stream name are stored together, keyed by stream.
//! - Not emulated: rate limits per DCR, transforms (`transformKql`), `TimeGenerated` rewriting,
//!   token audience and signature checks (the Entra route hands out the emulator's token, not a
//!   JWT). Delivery into a table is not modelled beyond storing rows.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tracing_azure_logs::emulator::Emulator;
//!
//! let emulator = Emulator::start()?;
//! let url = format!(
//!     "{}/dataCollectionRules/dcr-test/streams/Custom-App_CL?api-version=2023-01-01",
//!     emulator.endpoint()
//! );
//! let token = emulator.token().expect("a random token by default");
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! let status = rt.block_on(async {
//!     reqwest::Client::new()
//!         .post(url)
//!         .bearer_auth(token)
//!         .header("content-type", "application/json")
//!         .body(r#"[{"TimeGenerated":"2024-05-01T12:00:00Z","Message":"hello"}]"#)
//!         .timeout(Duration::from_secs(10))
//!         .send()
//!         .await
//!         .map(|r| r.status().as_u16())
//! })?;
//! assert_eq!(status, 204);
//! assert_eq!(emulator.rows("Custom-App_CL")[0]["Message"], "hello");
//! emulator.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checks;
pub mod cli;
mod credential;
mod entra;
mod faults;
mod ingest;
mod kql;
mod management;
mod query;
mod request;
mod schema;
mod server;
mod state;
mod tls;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use faults::{Fault, FaultRates};
pub use query::{DEFAULT_QUERY_MAX_BYTES, DEFAULT_QUERY_MAX_ROWS};
pub use request::{API_VERSIONS, MAX_CONTENT_LENGTH};
pub use schema::{Column, ColumnType, MAX_FIELD_BYTES};
pub use state::{EmulatorStats, RequestRecord};
pub use tls::{CA_FILE, CERT_FILE, EmulatorTls, KEY_FILE};

use azure_core::credentials::Secret;
use credential::EmulatorCredential;
use faults::FaultPlan;
use schema::Declarations;
use state::{Config, Shared, State};

/// Default cap on a decoded (gunzipped) body: 64 MiB.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;
/// Default number of records the request log keeps (the most recent ones): 100,000.
pub const DEFAULT_REQUEST_LOG_CAPACITY: usize = 100_000;

/// Why the emulator could not start.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum EmulatorError {
    /// Binding the listening socket failed (port taken, no loopback interface, ...).
    #[error("cannot bind the emulator's socket: {0}")]
    Bind(#[source] std::io::Error),
    /// The server thread could not be spawned.
    #[error("cannot spawn the emulator thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The server's tokio runtime could not be built or could not adopt the socket.
    #[error("cannot start the emulator's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The TLS certificate could not be made, read or used (the message says which).
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// A TLS file could not be read or written.
    #[error("cannot access the TLS file {path}: {source}")]
    TlsFile {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The persist directory could not be created.
    #[error("cannot create the persist directory {path}: {source}")]
    PersistDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A running emulator. Dropping it stops the server (like [`Emulator::shutdown`]).
///
/// All methods are cheap, thread-safe and never block on the network; the `wait_for_*` methods
/// block the calling thread until a condition holds or the timeout passes.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    credential: Arc<EmulatorCredential>,
    tls: Option<EmulatorTls>,
    server: server::ServerHandle,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts an emulator with the defaults: 127.0.0.1 on a free port, a random bearer token,
    /// no declared streams (everything accepted), lenient checks, rows retained, no faults.
    pub fn start() -> Result<Emulator, EmulatorError> {
        Emulator::builder().start()
    }

    /// A builder for a configured emulator.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }

    /// Base URL of the server, `http://127.0.0.1:PORT` (`https://` with
    /// [`EmulatorBuilder::tls`]), without a trailing slash.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The TLS settings it serves HTTPS with, if any.
    pub fn tls(&self) -> Option<&EmulatorTls> {
        self.tls.as_ref()
    }

    /// The PEM text of the CA clients must trust, when the certificate was generated
    /// ([`EmulatorTls::generate`]); `None` without TLS or with a given certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().and_then(EmulatorTls::ca_pem)
    }

    /// The CA file clients must trust, when [`EmulatorTls::generate_into`] wrote it.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().and_then(EmulatorTls::ca_file)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token currently accepted; `None` when auth is off.
    pub fn token(&self) -> Option<String> {
        self.shared.lock().token.as_ref().map(|t| t.secret().to_owned())
    }

    /// Replaces the accepted token (rotation); `None` turns auth off. Applies to requests
    /// arriving afterwards.
    pub fn set_token(&self, token: Option<String>) {
        self.shared.lock().token = token.map(Secret::new);
    }

    /// A credential that returns the emulator's current token (read at each call, so it follows
    /// [`Emulator::set_token`]), valid for one hour. Calls are counted by
    /// [`Emulator::token_requests`]. With auth off it returns a placeholder token.
    pub fn credential(&self) -> Arc<dyn azure_core::credentials::TokenCredential> {
        self.credential.clone()
    }

    /// A [`LogsIngestionClient`](crate::LogsIngestionClient) builder pointed at this emulator,
    /// with its credential.
    pub fn client(&self) -> crate::client::LogsIngestionClientBuilder {
        crate::LogsIngestionClient::builder(self.endpoint(), self.credential())
    }

    /// A pipeline builder pointed at this emulator, with its credential, shipping to `stream` of
    /// `rule_id`: the layer, tables and log bridge then deliver here.
    pub fn logs_builder(&self, rule_id: &str, stream: &str) -> crate::AzureLogsBuilder {
        crate::AzureLogs::builder()
            .endpoint(self.endpoint())
            .rule_id(rule_id)
            .stream(stream)
            .credential(self.credential())
    }

    /// How many times the credential's `get_token` was called.
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests.load(Ordering::Relaxed)
    }

    /// Accepted rows of `stream`, in arrival order, as the emulator stored them (after
    /// truncation and lenient schema fixes). Empty when rows are not retained. Parses every row:
    /// costly for large streams.
    pub fn rows(&self, stream: &str) -> Vec<serde_json::Value> {
        self.shared.rows(stream)
    }

    /// Number of rows accepted for `stream` (counted even when rows are not retained).
    pub fn row_count(&self, stream: &str) -> usize {
        self.shared.lock().streams.get(stream).map_or(0, |s| s.count)
    }

    /// Streams that accepted at least one request (even `[]`), sorted.
    pub fn streams(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().streams.keys().cloned().collect();
        names.sort();
        names
    }

    /// The request log: the most recent records (up to the log capacity), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.iter().cloned().collect()
    }

    /// Counters since start.
    pub fn stats(&self) -> EmulatorStats {
        self.shared.stats()
    }

    /// Scripts a fault for the next `times` requests. Calls queue up in order (FIFO): the fault
    /// of an earlier call is used up before a later one starts. Scripted faults go before the
    /// random rates.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.shared.lock().faults.push(fault, times);
    }

    /// Makes the rows of the next `requests` accepted uploads arrive late: queries see them
    /// `extra` after the visibility delay, though their `ingestion_time()` is when they were
    /// accepted (as rows that take longer through the service's pipeline).
    pub fn delay_visibility(&self, extra: Duration, requests: usize) {
        self.shared.lock().late = Some((requests, extra));
    }

    /// Sets (or with `None` removes) the random fault rates; the generator restarts from the
    /// seed.
    pub fn set_fault_rates(&self, rates: Option<FaultRates>) {
        self.shared.lock().faults.set_rates(rates);
    }

    /// Refuses uploads to the rule with this immutable id with the service's 403
    /// (`OperationFailed`, "... IsRbacPresent: False ..."), as when the identity has no role on
    /// it; [`allow_rule`](Self::allow_rule) undoes it.
    pub fn deny_rule(&self, immutable_id: &str) {
        self.shared.resources().deny(immutable_id, true);
    }

    /// Accepts uploads to a rule [denied](Self::deny_rule) before.
    pub fn allow_rule(&self, immutable_id: &str) {
        self.shared.resources().deny(immutable_id, false);
    }

    /// Removes scripted faults not yet used and the random rates.
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Blocks until `stream` has at least `n` accepted rows or `timeout` passes; returns whether
    /// the count was reached. Woken by each finished request (no polling). Pitfall: do not call
    /// it on a current-thread runtime that must also drive the client sending those rows.
    pub fn wait_for_rows(&self, stream: &str, n: usize, timeout: Duration) -> bool {
        self.shared
            .wait_until(timeout, |st| st.streams.get(stream).map_or(0, |s| s.count) >= n)
    }

    /// Blocks until at least `n` requests have finished (answered or dropped; see
    /// [`EmulatorStats::requests`]) or `timeout` passes; returns whether they have.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.shared.wait_until(timeout, |st| st.stats.requests >= n as u64)
    }

    /// Blocks until `done(&stats)` holds or `timeout` passes; returns whether it holds. Woken
    /// when a request arrives and when one finishes, e.g. `|s| s.in_flight >= 1` waits for a
    /// request to be in progress. Same pitfall as [`Emulator::wait_for_rows`].
    pub fn wait_for_stats(&self, timeout: Duration, done: impl Fn(&EmulatorStats) -> bool) -> bool {
        self.shared.wait_until(timeout, |st| done(&st.stats))
    }

    /// Stops the server: stops accepting, cuts injected latency short (those requests are
    /// dropped), closes connections gracefully for up to 0.5 s, then joins the server thread.
    /// Bounded (a few seconds at worst), never panics, safe inside a tokio runtime. After it
    /// returns, connecting to [`Emulator::addr`] fails.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.stop();
    }
}

/// Configures and starts an [`Emulator`]; see [`Emulator::builder`]. Its `Debug` output does
/// not show the token.
pub struct EmulatorBuilder {
    token: Option<String>,
    port: u16,
    declarations: Declarations,
    strict_schema: bool,
    strict_size: bool,
    max_decompressed_bytes: usize,
    retain_rows: bool,
    persist_dir: Option<PathBuf>,
    fault_rates: Option<FaultRates>,
    request_log_capacity: usize,
    query_visibility_delay: Duration,
    query_max_rows: usize,
    query_max_bytes: usize,
    role_propagation: Duration,
    tls: Option<EmulatorTls>,
    any_token: bool,
    entra: bool,
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        EmulatorBuilder {
            token: Some(random_token()),
            port: 0,
            declarations: Declarations::default(),
            strict_schema: false,
            strict_size: false,
            max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BYTES,
            retain_rows: true,
            persist_dir: None,
            fault_rates: None,
            request_log_capacity: DEFAULT_REQUEST_LOG_CAPACITY,
            query_visibility_delay: Duration::ZERO,
            query_max_rows: DEFAULT_QUERY_MAX_ROWS,
            query_max_bytes: DEFAULT_QUERY_MAX_BYTES,
            role_propagation: Duration::ZERO,
            tls: None,
            any_token: false,
            entra: false,
        }
    }
}

impl std::fmt::Debug for EmulatorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorBuilder")
            .field("auth", &self.token.is_some())
            .field("port", &self.port)
            .field("declarations", &self.declarations)
            .field("strict_schema", &self.strict_schema)
            .field("strict_size", &self.strict_size)
            .field("max_decompressed_bytes", &self.max_decompressed_bytes)
            .field("retain_rows", &self.retain_rows)
            .field("persist_dir", &self.persist_dir)
            .field("fault_rates", &self.fault_rates)
            .field("request_log_capacity", &self.request_log_capacity)
            .field("query_visibility_delay", &self.query_visibility_delay)
            .field("query_max_rows", &self.query_max_rows)
            .field("query_max_bytes", &self.query_max_bytes)
            .field("role_propagation", &self.role_propagation)
            .field("tls", &self.tls)
            .field("any_token", &self.any_token)
            .field("entra", &self.entra)
            .finish()
    }
}

fn random_token() -> String {
    let mut rng = fastrand::Rng::new();
    let suffix: String = std::iter::repeat_with(|| rng.alphanumeric()).take(40).collect();
    format!("emulator-{suffix}")
}

impl EmulatorBuilder {
    /// Accept this bearer token (instead of a random one).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Turn auth off: any request is accepted with or without `Authorization`.
    pub fn no_auth(mut self) -> Self {
        self.token = None;
        self
    }

    /// Also accept any non-empty bearer token, as a real credential gets one the emulator cannot
    /// check (requests without a token still get 401). The token of [`Emulator::token`] stays
    /// valid; [`no_auth`](Self::no_auth) or `set_token(None)` still turn auth off.
    pub fn any_token(mut self) -> Self {
        self.any_token = true;
        self
    }

    /// Also act as the Entra ID token endpoint on the same listener, so that the
    /// `ClientSecretCredential` of any Azure SDK, its authority host set to
    /// [`Emulator::endpoint`], gets a token the uploads accept: `POST
    /// /{tenant}/oauth2/v2.0/token` with the `client_credentials` grant (any client id and
    /// secret) answers the current token, and `GET /{tenant}/v2.0/.well-known/openid-configuration`
    /// answers the discovery document MSAL reads first (Python's and JS's azure-identity also
    /// need instance discovery off: it asks the public cloud). The SDKs send a secret only over
    /// HTTPS: combine it with [`tls`](Self::tls). These requests are in the request log; faults
    /// do not apply to them.
    pub fn entra(mut self) -> Self {
        self.entra = true;
        self
    }

    /// Serve HTTPS with this certificate: [`EmulatorTls::generate_into`] makes a CA and a
    /// certificate for `127.0.0.1` and `localhost`, [`EmulatorTls::from_pem_files`] uses yours.
    /// [`Emulator::endpoint`] then starts with `https://`, and every route (uploads, queries,
    /// management, Entra) is served over TLS only, HTTP/1.1 or HTTP/2 (ALPN `h2`, `http/1.1`).
    pub fn tls(mut self, tls: EmulatorTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Listen on this port of 127.0.0.1 (default 0: a free port chosen by the OS).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Declares `stream` in rule `rule_id` with these columns. Once anything is declared, only
    /// declared (rule, stream) pairs are accepted (others get 404) and rows are checked against
    /// the columns. Declaring the same pair again replaces its columns.
    pub fn declare_stream(
        mut self,
        rule_id: impl Into<String>,
        stream: impl Into<String>,
        columns: Vec<Column>,
    ) -> Self {
        self.declarations.declare(rule_id.into(), stream.into(), columns);
        self
    }

    /// Strict schema: a row with a value not matching its column type, or with an undeclared
    /// column, fails the whole request with 400 (`SchemaMismatch`, message naming the row index
    /// and column). Default false (lenient, like the service: nulls and drops).
    pub fn strict_schema(mut self, strict: bool) -> Self {
        self.strict_schema = strict;
        self
    }

    /// Strict size: also answer 413 when the uncompressed JSON exceeds 1,048,576 bytes.
    /// Default false (the service accepts it when the gzipped body fits).
    pub fn strict_size(mut self, strict: bool) -> Self {
        self.strict_size = strict;
        self
    }

    /// Cap on what decoding one request holds, in bytes (default
    /// [`DEFAULT_MAX_DECOMPRESSED_BYTES`]): the gunzipped body, plus 16 bytes per row, plus rows
    /// that a lenient schema rewrote. Past it: 413 `PayloadSizeLimitExceeded`, so a small gzip of
    /// millions of tiny rows (`[{},{},...]`) is refused too. Requests are decoded one at a time,
    /// and one holds at most about twice this (a body with rewritten rows is copied once to be
    /// stored).
    pub fn max_decompressed_bytes(mut self, bytes: usize) -> Self {
        self.max_decompressed_bytes = bytes;
        self
    }

    /// Keep accepted rows for [`Emulator::rows`] (default true). With false, only counts are
    /// kept: use it for benches and long runs.
    pub fn retain_rows(mut self, retain: bool) -> Self {
        self.retain_rows = retain;
        self
    }

    /// Also append accepted rows as JSON lines to `<dir>/<stream>.jsonl` (created at start;
    /// characters outside `[A-Za-z0-9_.-]` in the stream name become `_`). A write failure
    /// answers 500 `PersistFailed`.
    pub fn persist_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.persist_dir = Some(dir.into());
        self
    }

    /// Random fault rates from the start (see [`Emulator::set_fault_rates`]).
    pub fn fault_rates(mut self, rates: FaultRates) -> Self {
        self.fault_rates = Some(rates);
        self
    }

    /// How many records the request log keeps (default [`DEFAULT_REQUEST_LOG_CAPACITY`]; the
    /// oldest are dropped first; 0 keeps none).
    pub fn request_log_capacity(mut self, records: usize) -> Self {
        self.request_log_capacity = records;
        self
    }

    /// How long after it was accepted a row is seen by queries (default 0). The service takes
    /// seconds to minutes; a delay lets tests see rows arrive late.
    pub fn query_visibility_delay(mut self, delay: Duration) -> Self {
        self.query_visibility_delay = delay;
        self
    }

    /// The most rows and bytes a query result holds (defaults: the service's
    /// [`DEFAULT_QUERY_MAX_ROWS`] and [`DEFAULT_QUERY_MAX_BYTES`]); a larger result is cut and
    /// answered with a `PartialError`, as the service does.
    pub fn query_limits(mut self, max_rows: usize, max_bytes: usize) -> Self {
        self.query_max_rows = max_rows;
        self.query_max_bytes = max_bytes;
        self
    }

    /// Simulates a role assignment that takes `delay` to apply: a rule created through the
    /// management route answers uploads with the service's 403 (`OperationFailed`, "...
    /// IsRbacPresent: False ...") until `delay` after its creation. The service takes up to 30
    /// minutes. Default zero.
    pub fn role_propagation(mut self, delay: Duration) -> Self {
        self.role_propagation = delay;
        self
    }

    /// Binds 127.0.0.1 and starts the server thread.
    pub fn start(self) -> Result<Emulator, EmulatorError> {
        if let Some(dir) = &self.persist_dir {
            std::fs::create_dir_all(dir).map_err(|source| EmulatorError::PersistDir {
                path: dir.clone(),
                source,
            })?;
        }
        let config = Config {
            declarations: std::sync::RwLock::new(self.declarations),
            strict_schema: self.strict_schema,
            strict_size: self.strict_size,
            max_decompressed_bytes: self.max_decompressed_bytes,
            retain_rows: self.retain_rows,
            persist_dir: self.persist_dir,
            request_log_capacity: self.request_log_capacity,
            query_visibility_delay: self.query_visibility_delay,
            query_max_rows: self.query_max_rows,
            query_max_bytes: self.query_max_bytes,
            role_propagation: self.role_propagation,
            any_token: self.any_token,
            entra: self.entra,
        };
        let state = State {
            token: self.token.map(Secret::new),
            faults: FaultPlan::new(self.fault_rates),
            streams: Default::default(),
            log: Default::default(),
            stats: EmulatorStats::default(),
            late: None,
        };
        let shared = Arc::new(Shared::new(config, state));
        let acceptor = self.tls.as_ref().map(EmulatorTls::acceptor).transpose()?;
        let (addr, server) = server::spawn(
            shared.clone(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            acceptor,
        )?;
        let emulator = Emulator {
            credential: Arc::new(EmulatorCredential { shared: shared.clone() }),
            shared,
            addr,
            tls: self.tls,
            server,
        };
        let _ = emulator.shared.endpoint.set(emulator.endpoint());
        Ok(emulator)
    }
}
