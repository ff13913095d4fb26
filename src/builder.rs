//! The composition root: [`AzureLogsBuilder`] checks the settings and builds every part of the
//! pipeline (client, queue, destinations, routes, worker, layer, guard). No other module imports it.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use serde_json::Value;

use crate::client::{
    Audience, CheckStep, ClientSettings, FailedBatch, Finding, HealthReport, OnError, RetryPolicy,
    StaticTokenCredential, Step, Verdict, credential_from_env_with, default_http_client, run_blocking,
};
use crate::env::{ENV_EMULATOR_TOKEN, ENV_ENDPOINT, ENV_RULE_ID, ENV_STREAM, env_var, missing_vars};
use crate::error::ConfigError;
use crate::layer::AzureLogsLayer;
use crate::pipeline::destinations::{Destination, Destinations};
use crate::pipeline::spool::Spool;
use crate::pipeline::stats::Outcomes;
use crate::pipeline::worker::spill::SpoolState;
use crate::pipeline::worker::{Worker, WorkerConfig};
use crate::pipeline::{AzureLogsGuard, FullPolicy};
use crate::route::{FieldRoute, Routes};
use crate::row::{Columns, RowShape};

/// Most rows a queue can be set to hold; bound memory with `queue_max_bytes`.
pub const MAX_QUEUE_ROWS: usize = 4 * 1024 * 1024;

/// A default column, to rename or turn off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Column {
    /// `TimeGenerated`.
    TimeGenerated,
    /// `Level`.
    Level,
    /// `Target`.
    Target,
    /// `Message`.
    Message,
    /// `Properties`.
    Properties,
    /// `Spans`.
    Spans,
    /// `TraceId` (feature `opentelemetry`); rename it to `OperationId` for the Application
    /// Insights name.
    #[cfg(feature = "opentelemetry")]
    TraceId,
    /// `SpanId` (feature `opentelemetry`); rename it to `ParentId` for the Application Insights
    /// name.
    #[cfg(feature = "opentelemetry")]
    SpanId,
    /// `File`.
    File,
    /// `Line`.
    Line,
    /// `Thread`.
    Thread,
    /// The row id column (off unless [`AzureLogsBuilder::row_id_column`] turned it on).
    RowId,
}

/// Entry point of the tracing pipeline.
#[derive(Debug)]
pub struct AzureLogs;

impl AzureLogs {
    /// A builder with nothing set; see [`AzureLogsBuilder::from_env`] for the environment.
    pub fn builder() -> AzureLogsBuilder {
        AzureLogsBuilder::default()
    }
}

/// Configures the layer and its pipeline. Defaults are given on each method.
pub struct AzureLogsBuilder {
    endpoint: Option<String>,
    rule_id: Option<String>,
    stream: Option<String>,
    credential: Option<Arc<dyn TokenCredential>>,
    client: ClientSettings,
    columns: Columns,
    queue_rows: usize,
    queue_bytes: usize,
    full_policy: FullPolicy,
    max_delay: Duration,
    flush_timeout: Duration,
    on_error: Option<OnError>,
    diagnostic_interval: Duration,
    target_routes: Vec<(String, String)>,
    field_route: Option<(String, Vec<String>)>,
    spool: Option<Spool>,
}

impl Default for AzureLogsBuilder {
    fn default() -> Self {
        let mut columns = Columns::default();
        columns.statics.push(("Computer".into(), Value::String(host_name())));
        AzureLogsBuilder {
            endpoint: None,
            rule_id: None,
            stream: None,
            credential: None,
            // gzip level 1: one worker then keeps up with hundreds of thousands of events per second.
            client: ClientSettings {
                gzip_level: 1,
                ..ClientSettings::default()
            },
            columns,
            queue_rows: 65_536,
            queue_bytes: 32 * 1024 * 1024,
            full_policy: FullPolicy::DropNewest,
            max_delay: Duration::from_secs(1),
            flush_timeout: Duration::from_secs(5),
            on_error: None,
            diagnostic_interval: Duration::from_secs(10),
            target_routes: Vec::new(),
            field_route: None,
            spool: None,
        }
    }
}

impl std::fmt::Debug for AzureLogsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLogsBuilder")
            .field("endpoint", &self.endpoint)
            .field("rule_id", &self.rule_id)
            .field("stream", &self.stream)
            .field("credential", &self.credential)
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

impl AzureLogsBuilder {
    /// Reads the destination from `AZURE_DCE_ENDPOINT`, `AZURE_DCR_RULE_ID` and
    /// `AZURE_DCR_STREAM_NAME` (the names the official SDK samples use); the error names every
    /// missing one. The credential is picked at build by
    /// [`credential_from_env`](crate::client::credential_from_env), or is a fixed token when
    /// `AZURE_LOGS_EMULATOR_TOKEN` is set (local emulator only).
    pub fn from_env() -> Result<Self, ConfigError> {
        let (endpoint, rule_id, stream) = (env_var(ENV_ENDPOINT), env_var(ENV_RULE_ID), env_var(ENV_STREAM));
        let missing = missing_vars([
            (ENV_ENDPOINT, &endpoint),
            (ENV_RULE_ID, &rule_id),
            (ENV_STREAM, &stream),
        ]);
        if !missing.is_empty() {
            return Err(ConfigError::MissingEnvironment(missing));
        }
        let mut builder = AzureLogs::builder()
            .endpoint(endpoint.unwrap_or_default())
            .rule_id(rule_id.unwrap_or_default())
            .stream(stream.unwrap_or_default());
        if let Some(token) = env_var(ENV_EMULATOR_TOKEN) {
            builder = builder.credential(StaticTokenCredential::new(token));
        }
        Ok(builder)
    }

    /// The ingestion endpoint: a data collection endpoint (DCE) or the DCR's own logs ingestion
    /// endpoint. `https://` is required, except for loopback hosts (the emulator).
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The data collection rule's immutable id (`dcr-...`).
    pub fn rule_id(mut self, rule_id: impl Into<String>) -> Self {
        self.rule_id = Some(rule_id.into());
        self
    }

    /// The stream events go to (`Custom-...`), as declared in the rule.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// The credential. Default: [`credential_from_env`](crate::client::credential_from_env).
    pub fn credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        self.credential = Some(credential);
        self
    }

    /// The HTTP client for uploads (and for the default credential). Default:
    /// [`default_http_client`](crate::client::default_http_client).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.client.http = Some(client);
        self
    }

    /// The cloud whose token audience to ask for. Default: Azure public cloud.
    pub fn audience(mut self, audience: Audience) -> Self {
        self.client.audience = audience;
        self
    }

    /// Renames a default column.
    pub fn rename_column(mut self, column: Column, name: impl Into<String>) -> Self {
        *self.column_mut(column) = Some(name.into());
        self
    }

    /// Adds a column `name` (type `long`) with a 64-bit id per row, unique per process start.
    /// Delivery is at-least-once (a request that timed out after the service stored it, or a
    /// spooled batch sent again after a crash, arrives twice); the id tells such a duplicate from
    /// a second row. Declare the column in the DCR's stream and the table (the
    /// [`Columns::stream_declaration`] lists it), then deduplicate in queries:
    ///
    /// ```text
    /// MyService_CL
    /// | where TimeGenerated > ago(1d)
    /// | summarize arg_min(TimeGenerated, *) by RowId, Computer
    /// ```
    ///
    /// Rows of `log` records and the crate's diagnostic rows get ids too; rows of
    /// [`Table`](crate::Table)s do not (they are the application's own objects).
    pub fn row_id_column(mut self, name: impl Into<String>) -> Self {
        self.columns.row_id = Some(name.into());
        self
    }

    /// Leaves a default column out of every row.
    pub fn drop_column(mut self, column: Column) -> Self {
        *self.column_mut(column) = None;
        self
    }

    /// Adds a column with the same value in every row (for example a service name or environment),
    /// or replaces one of that name. `Computer` (the host name) is present by default; remove it
    /// with [`drop_static_column`](Self::drop_static_column).
    pub fn static_column(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        let name = name.into();
        let value = value.into();
        match self.columns.statics.iter_mut().find(|(n, _)| *n == name) {
            Some(existing) => existing.1 = value,
            None => self.columns.statics.push((name, value)),
        }
        self
    }

    /// Removes a static column, including the default `Computer`.
    pub fn drop_static_column(mut self, name: &str) -> Self {
        self.columns.statics.retain(|(n, _)| n != name);
        self
    }

    /// The columns as configured so far, e.g. for [`Columns::stream_declaration`].
    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    /// Queue capacity in rows. Default 65,536.
    pub fn queue_capacity(mut self, rows: usize) -> Self {
        self.queue_rows = rows;
        self
    }

    /// Queue capacity in bytes of encoded rows. Default 32 MiB. Rows are kept in pages of up to
    /// 64 KiB (a 64th of this, at least 1 KiB; a bigger row gets a page of its own size), taken
    /// from a pool that never holds more than this.
    pub fn queue_max_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    /// What happens to a row when the queue is full. Default: drop it and count it.
    pub fn full_policy(mut self, policy: FullPolicy) -> Self {
        self.full_policy = policy;
        self
    }

    /// Longest time a row waits for its batch to fill before the batch is sent anyway. Default 1 s.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How long dropping the guard waits for the final flush. Default 5 s.
    pub fn flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    /// Uploads in flight at once. Default 5.
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.client.max_concurrency = n;
        self
    }

    /// How failed uploads are retried. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.client.retry = retry;
        self
    }

    /// Time limit of one HTTP attempt. Default 30 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.client.request_timeout = timeout;
        self
    }

    /// gzip level 0-9. Default 1: the fastest, so one worker keeps up with hundreds of thousands of
    /// events per second (about 4.5x smaller than the JSON).
    pub fn gzip_level(mut self, level: u32) -> Self {
        self.client.gzip_level = level;
        self
    }

    /// Cap on a batch's uncompressed JSON. Default 1,048,576; the gzipped body always stays at most
    /// 1,048,576 bytes.
    pub fn max_uncompressed_batch(mut self, bytes: usize) -> Self {
        self.client.max_uncompressed = bytes;
        self
    }

    /// Called with every batch of rows that could not be delivered. Default: a line on stderr per
    /// failed batch. It runs on the worker thread: keep it quick (a panic in it is caught), and
    /// note that `tracing` events emitted there are not shipped (nothing on that thread is, to
    /// avoid feedback loops); `Table::send` from it works. `guard.flush()` or dropping the guard
    /// from it cannot wait for the worker it runs on: they return at once
    /// ([`Incomplete::OnPipelineThread`](crate::Incomplete::OnPipelineThread)). The rows it gets
    /// add up to `Stats::failed`: the worker's own diagnostic rows are never passed to it.
    pub fn on_error(mut self, on_error: impl Fn(FailedBatch) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(on_error));
        self
    }

    /// While rows are being dropped, the worker adds one diagnostic row per interval to the stream
    /// saying how many. Default 10 s.
    pub fn diagnostic_interval(mut self, interval: Duration) -> Self {
        self.diagnostic_interval = interval;
        self
    }

    /// Sends events whose target is `target_prefix` (or below it, as in `app::audit::login`) to
    /// `stream` of the same rule, instead of the main stream.
    pub fn route_target(mut self, target_prefix: impl Into<String>, stream: impl Into<String>) -> Self {
        self.target_routes.push((target_prefix.into(), stream.into()));
        self
    }

    /// Sends events whose field `field` holds the name of one of `streams` (a string, as in
    /// `info!(table = "Custom-Audit_CL", ...)`) to that stream of the same rule. Other values, and
    /// events without the field, go where target routes or the main stream send them. The field
    /// stays in `Properties`. Only declared streams are routed to, so a typo cannot create a
    /// destination.
    pub fn route_field(
        mut self,
        field: impl Into<String>,
        streams: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        self.field_route = Some((field.into(), streams.into_iter().map(Into::into).collect()));
        self
    }

    fn column_mut(&mut self, column: Column) -> &mut Option<String> {
        let c = &mut self.columns;
        match column {
            Column::TimeGenerated => &mut c.time_generated,
            Column::Level => &mut c.level,
            Column::Target => &mut c.target,
            Column::Message => &mut c.message,
            Column::Properties => &mut c.properties,
            Column::Spans => &mut c.spans,
            #[cfg(feature = "opentelemetry")]
            Column::TraceId => &mut c.trace_id,
            #[cfg(feature = "opentelemetry")]
            Column::SpanId => &mut c.span_id,
            Column::File => &mut c.file,
            Column::Line => &mut c.line,
            Column::Thread => &mut c.thread,
            Column::RowId => &mut c.row_id,
        }
    }

    /// Keeps batches the service cannot take now on disk, in `spool`'s directory, and sends them
    /// later, also from the next process on that directory (see [`Spool`]). Default: none, and
    /// such batches fail after the retry deadline. The directory is opened (and locked) at build.
    pub fn spool(mut self, spool: Spool) -> Self {
        self.spool = Some(spool);
        self
    }

    /// What Azure needs for this builder's rows: the table, the rule and the role, from the
    /// columns as configured here (renamed, dropped and static columns included) and the stream
    /// set with [`stream`](Self::stream). See [`Provisioning`](crate::provision::Provisioning).
    pub fn provisioning(&self) -> Result<crate::provision::Provisioning, crate::provision::ProvisionError> {
        let stream = self.stream.as_deref().unwrap_or_default();
        crate::provision::Provisioning::for_columns(stream, &self.columns)
    }

    /// Checks, before [`build`](Self::build), that rows would be delivered with these settings:
    /// they are all set and well-formed, the credential gives a token, the endpoint answers, and
    /// the service accepts an upload of `[]` to the stream and to every routed stream. Each
    /// problem comes with a hint; print the report (`Display`) or act on
    /// [`HealthReport::is_healthy`]. Blocks for a few requests, each bounded by the request
    /// timeout; safe inside a tokio runtime. Starts nothing and stores nothing.
    ///
    /// ```no_run
    /// let builder = tracing_azure_logs::AzureLogsBuilder::from_env()?;
    /// let report = builder.check();
    /// eprintln!("{report}");
    /// if !report.is_healthy() {
    ///     std::process::exit(1);
    /// }
    /// # Ok::<(), tracing_azure_logs::client::ConfigError>(())
    /// ```
    pub fn check(&self) -> HealthReport {
        let endpoint = self.endpoint.clone().unwrap_or_default();
        let report = |steps: Vec<CheckStep>| HealthReport {
            endpoint: endpoint.clone(),
            steps,
        };
        let settings_problem = |detail: String, hint: String| {
            report(vec![CheckStep::problem(
                Step::Settings,
                Verdict::Fail,
                Finding::Settings,
                detail,
                hint,
            )])
        };
        let settings_set = || {
            CheckStep::pass(
                Step::Settings,
                "endpoint, rule and stream are set and well-formed".into(),
            )
        };
        let missing = missing_vars([
            ("endpoint", &self.endpoint),
            ("rule_id", &self.rule_id),
            ("stream", &self.stream),
        ]);
        if !missing.is_empty() {
            return settings_problem(
                format!("not set: {}", missing.join(", ")),
                format!(
                    "set them on the builder, or set {ENV_ENDPOINT}, {ENV_RULE_ID} and {ENV_STREAM} and use \
                     AzureLogsBuilder::from_env (the provisioning commands print all three)"
                ),
            );
        }
        let mut settings = self.client.clone();
        let http = match &settings.http {
            Some(http) => http.clone(),
            None => match default_http_client() {
                Ok(http) => http,
                Err(e) => return settings_problem(e.to_string(), "the HTTP client could not be built".into()),
            },
        };
        settings.http = Some(http.clone());
        let credential = match &self.credential {
            Some(credential) => credential.clone(),
            None => match credential_from_env_with(&http) {
                Ok(credential) => credential,
                Err(e) => {
                    let message = e.to_string();
                    let hint = crate::client::credential_hint(&message, settings.audience.scope());
                    let failed =
                        CheckStep::problem(Step::Credential, Verdict::Fail, Finding::Credential, message, hint);
                    return report(vec![settings_set(), failed]);
                }
            },
        };
        let client = match settings.build(&endpoint, credential) {
            Ok(client) => client,
            Err(e) => return settings_problem(e.to_string(), "fix the setting the error names".into()),
        };
        let rule_id = self.rule_id.clone().unwrap_or_default();
        let mut streams = vec![self.stream.clone().unwrap_or_default()];
        let routed = self.target_routes.iter().map(|(_, s)| s);
        let fields = self.field_route.iter().flat_map(|(_, streams)| streams);
        for stream in routed.chain(fields) {
            if !streams.contains(stream) {
                streams.push(stream.clone());
            }
        }
        let streams: Vec<(String, String)> = streams.into_iter().map(|s| (rule_id.clone(), s)).collect();
        let mut checked = run_blocking(async move { client.check_streams(&streams).await });
        checked.steps.insert(0, settings_set());
        checked
    }

    /// Checks the settings, starts the worker thread, and returns the layer and its guard.
    pub fn build(self) -> Result<(AzureLogsLayer, AzureLogsGuard), ConfigError> {
        let missing = missing_vars([
            ("endpoint", &self.endpoint),
            ("rule_id", &self.rule_id),
            ("stream", &self.stream),
        ]);
        if !missing.is_empty() {
            return Err(ConfigError::InvalidOption {
                option: "destination",
                reason: format!("not set: {} (or use AzureLogsBuilder::from_env)", missing.join(", ")),
            });
        }
        if self.queue_rows == 0 || self.queue_bytes == 0 {
            return Err(ConfigError::InvalidOption {
                option: "queue_capacity",
                reason: "must be above zero".into(),
            });
        }
        if self.queue_rows > MAX_QUEUE_ROWS {
            return Err(ConfigError::InvalidOption {
                option: "queue_capacity",
                reason: format!(
                    "{} rows is over the limit of {MAX_QUEUE_ROWS}; bound memory with queue_max_bytes instead",
                    self.queue_rows
                ),
            });
        }
        self.columns.check()?;
        let mut settings = self.client;
        let credential = match self.credential {
            Some(credential) => credential,
            None => {
                // One HTTP client for the credential and the uploads.
                let http = match &settings.http {
                    Some(http) => http.clone(),
                    None => default_http_client()?,
                };
                settings.http = Some(http.clone());
                credential_from_env_with(&http)?
            }
        };
        let client = settings.build(&self.endpoint.unwrap_or_default(), credential)?;
        let rule_id = self.rule_id.unwrap_or_default();
        let shape = Arc::new(RowShape::new(&self.columns));
        let queue = Arc::new(crate::pipeline::queue::Queue::new(
            self.queue_rows,
            self.queue_bytes,
            self.full_policy,
        ));
        let (control, control_rx) = crossbeam_channel::unbounded();
        let in_rule = |stream: String| Destination {
            rule_id: rule_id.clone(),
            stream,
        };
        let destinations = Arc::new(Destinations::new(in_rule(self.stream.unwrap_or_default())));
        let mut routes = Routes::default();
        for (prefix, stream) in self.target_routes {
            routes.targets.push((prefix, destinations.id_for(&in_rule(stream))));
        }
        if let Some((name, streams)) = self.field_route {
            let streams = streams
                .into_iter()
                .map(|s| {
                    let id = destinations.id_for(&in_rule(s.clone()));
                    (s, id)
                })
                .collect();
            routes.field = Some(FieldRoute { name, streams });
        }
        // Calibrates the event clock here rather than in the first event.
        crate::clock::start();
        // Opened here, so a locked or unusable directory is an error at build.
        let spool = match &self.spool {
            Some(spool) => {
                let store = spool.open().map_err(|e| ConfigError::InvalidOption {
                    option: "spool",
                    reason: e.to_string(),
                })?;
                let mut state = SpoolState::new(store, spool);
                state.report_recovery();
                Some(state)
            }
            None => None,
        };
        let outcomes = Arc::new(Outcomes::default());
        let worker = Worker::new(
            queue.clone(),
            destinations.clone(),
            Arc::new(client.clone()),
            outcomes.clone(),
            WorkerConfig {
                max_delay: self.max_delay,
                diagnostic_interval: self.diagnostic_interval,
                on_error: self.on_error,
                shape: shape.clone(),
            },
            spool,
        )
        .spawn(control_rx)
        .map_err(|e| ConfigError::InvalidOption {
            option: "worker",
            reason: format!("cannot start the worker thread: {e}"),
        })?;
        let layer = AzureLogsLayer::new(queue.clone(), shape, Arc::new(routes));
        let guard = AzureLogsGuard {
            queue,
            outcomes,
            destinations,
            shape: layer.shape.clone(),
            routes: layer.routes.clone(),
            client,
            control,
            worker: Some(worker),
            flush_timeout: self.flush_timeout,
        };
        Ok((layer, guard))
    }
}

/// The host name: `HOSTNAME`/`COMPUTERNAME`, else the kernel's, else empty.
fn host_name() -> String {
    let from_env = std::env::var("HOSTNAME")
        .or_else(|_| std::env::var("COMPUTERNAME"))
        .ok();
    from_env
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
