//! Ship `tracing` events (and your own rows) to Azure Monitor Logs through the Logs Ingestion API
//! (data collection endpoints and rules), without waiting on I/O, locking or (in steady state)
//! allocating on the application's threads.
//!
//! ```no_run
//! // Reads AZURE_DCE_ENDPOINT, AZURE_DCR_RULE_ID, AZURE_DCR_STREAM_NAME and picks an Azure
//! // credential; installs a registry + EnvFilter (RUST_LOG, default info) + this layer + LogTracer.
//! let _guard = tracing_azure_logs::init();
//! tracing::info!(user_id = 42, "signed in");
//! // Dropping the guard at the end of main flushes (at most 5 s by default).
//! ```
//!
//! Or compose the layer yourself:
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let credential = tracing_azure_logs::client::StaticTokenCredential::new("t");
//! let (layer, guard) = tracing_azure_logs::AzureLogs::builder()
//!     .endpoint("https://my-dce.eastus-1.ingest.monitor.azure.com")
//!     .rule_id("dcr-00000000000000000000000000000000")
//!     .stream("Custom-MyService_CL")
//!     .credential(credential)
//!     .static_column("Service", "checkout")
//!     .build()?;
//! tracing_subscriber::registry().with(tracing_subscriber::EnvFilter::new("info")).with(layer).init();
//! # drop(guard); Ok(()) }
//! ```
//!
//! # What happens to an event
//!
//! The layer encodes it as one JSON row (columns: see [`row`]) into a reused buffer and pushes it
//! on a bounded lock-free queue. A worker thread (its own current-thread tokio runtime: the
//! application needs no runtime, and a runtime in the application is never blocked) drains the
//! queue every few milliseconds, cuts rows into gzipped batches that fit the service's 1 MiB
//! limit, and uploads them, up to 5 at a time, with retries.
//!
//! - **Full queue**: the row is dropped and counted ([`Stats::dropped`]), and the worker adds a
//!   diagnostic row to the table saying how many were dropped; or, opt-in, the producer waits
//!   ([`FullPolicy::Block`]).
//! - **Failures** (rejected, retries exhausted, row too large) are counted ([`Stats::failed`]) and
//!   passed, with the rows, to the `on_error` callback (default: a line on stderr).
//! - **Delivery is at-least-once**: a request that timed out after the service stored it is sent
//!   again, and the service does not deduplicate.
//! - **Shutdown**: [`AzureLogsGuard::flush`] waits for acknowledgement; dropping the guard flushes
//!   for at most the flush timeout, then stops. Events after that are counted as dropped.
//! - **No feedback loop**: events emitted on the worker thread (by reqwest, hyper, h2, rustls,
//!   azure_core) are never shipped.
//!
//! # Features
//!
//! - `emulator`: a local Logs Ingestion API server ([`emulator`]) for tests and examples.
//! - `opentelemetry`: the `TraceId` and `SpanId` columns, the OpenTelemetry ids of each event's
//!   span as tracing-opentelemetry 0.34's layer (in the same subscriber) keeps them; see
//!   [`Columns::trace_id`](row::Columns).
#![deny(missing_docs)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
pub mod client;
mod clock;
#[cfg(feature = "emulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "emulator")))]
pub mod emulator;
mod env;
mod error;
pub mod export;
mod init;
mod layer;
mod logger;
mod pipeline;
pub mod provision;
pub mod query;
mod route;
pub mod row;
pub mod table;

pub mod log_bridge {
    //! A `log::Log` that feeds the pipeline directly, for programs (or dependencies) that log through
    //! the `log` facade, with or without `tracing`.
    //!
    //! A record becomes a row with the same columns as a tracing event: `Target` from the record's
    //! target, `File` and `Line` from its location, `Message` from its text, and its key-values (the
    //! `kv` feature of `log`) as typed `Properties`. `Spans` is empty; with the feature
    //! `opentelemetry`, `TraceId` and `SpanId` are those of the thread's current OpenTelemetry
    //! context, when it has a span.
    //!
    //! # Shipped once, never twice
    //!
    //! A process has one `log` logger. [`crate::init`] installs tracing-log's `LogTracer` as that
    //! logger, which turns records into tracing events that this crate's layer ships. Installing
    //! this bridge as well fails (the logger is already set) instead of shipping records twice; use
    //! one or the other:
    //! - an application on `tracing`: [`crate::init`] (or the layer + `LogTracer`);
    //! - an application on `log` only: [`init`] here.
    //!
    //! ```no_run
    //! # fn main() -> Result<(), Box<dyn std::error::Error>> {
    //! use tracing_azure_logs::log_bridge::{self, LogBridge};
    //!
    //! let builder = tracing_azure_logs::AzureLogsBuilder::from_env()?;
    //! let _guard = log_bridge::init(builder, LogBridge::new(log::LevelFilter::Info).target("hyper", log::LevelFilter::Warn))?;
    //! log::info!(order_id = 7, total = 12.5; "order placed");
    //! # Ok(()) }
    //! ```

    pub use crate::init::init_log_bridge as init;
    pub use crate::logger::{AzureLogger, LogBridge};
}
mod sync;
mod thread_role;

pub use builder::{AzureLogs, AzureLogsBuilder, Column, MAX_QUEUE_ROWS};
pub use client::{Audience, LogsIngestionClient, RetryPolicy, UploadError, UploadReport};
pub use env::{ENV_EMULATOR_TOKEN, ENV_ENDPOINT, ENV_RULE_ID, ENV_STREAM};
pub use error::InitError;
pub use init::{init, install, try_init};
pub use layer::AzureLogsLayer;
pub use pipeline::{
    AzureLogsGuard, FlushReport, FullPolicy, Incomplete, Spool, SpoolFull, SpoolMode, SpoolSync, Stats, StatsHandle,
    StreamStats,
};
pub use row::Columns;
pub use table::{SendError, Table};
