//! One-line setup: the global subscriber, the layer and the `log` bridge.

use crate::builder::AzureLogsBuilder;
use crate::error::InitError;
use crate::logger::LogBridge;
use crate::pipeline::AzureLogsGuard;

/// Installs, in one line, a global subscriber: the registry, an `EnvFilter` from `RUST_LOG`
/// (default `info`), this crate's layer configured from the environment
/// ([`AzureLogsBuilder::from_env`]), and the `log` → `tracing` bridge (`LogTracer`). Returns the
/// guard, which must live until the end of `main`. If another `log` logger is already installed,
/// tracing events are still shipped and a warning says that `log` records are not.
pub fn try_init() -> Result<AzureLogsGuard, InitError> {
    install(AzureLogsBuilder::from_env()?)
}

/// [`try_init`], panicking with the error's text when it fails.
pub fn init() -> AzureLogsGuard {
    try_init().unwrap_or_else(|e| panic!("tracing_azure_logs::init failed: {e}"))
}

/// Installs the global subscriber (registry + `EnvFilter` + the layer) and `LogTracer` for
/// `builder`'s pipeline.
pub fn install(builder: AzureLogsBuilder) -> Result<AzureLogsGuard, InitError> {
    use tracing_subscriber::layer::SubscriberExt;
    let (layer, guard) = builder.build()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry().with(filter).with(layer);
    tracing::subscriber::set_global_default(subscriber).map_err(|e| InitError::SubscriberAlreadySet(e.to_string()))?;
    if let Err(e) = tracing_log::LogTracer::init() {
        // Tracing events are shipped; only `log` records are not. Say so where it will be seen.
        eprintln!("tracing-azure-logs: another `log` logger is installed, so `log` records are not shipped: {e}");
        tracing::warn!(target: "tracing_azure_logs", "another `log` logger is installed, so `log` records are not shipped: {e}");
    }
    Ok(guard)
}

/// Builds the pipeline from `builder` and installs its `log` bridge as the process's logger
/// (no `tracing` subscriber is installed). Fails if a logger is already set, e.g. `LogTracer`
/// from [`crate::init`]: records are never shipped twice.
pub fn init_log_bridge(builder: AzureLogsBuilder, bridge: LogBridge) -> Result<AzureLogsGuard, InitError> {
    let (_layer, guard) = builder.build()?;
    let max = bridge.max_level();
    log::set_boxed_logger(Box::new(guard.logger(bridge))).map_err(|e| InitError::LoggerAlreadySet(e.to_string()))?;
    log::set_max_level(max);
    Ok(guard)
}
