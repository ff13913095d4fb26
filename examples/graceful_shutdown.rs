//! Graceful shutdown in a tokio program: on SIGTERM (`docker stop`, Kubernetes, systemd) or
//! Ctrl-C, stop serving, then drop the guard, which flushes what is queued. Without this, those
//! signals end the process before the guard is dropped, and the open batch is lost.
//!
//! It "serves" (emits an event every 100 ms) for 3 s or until a signal, whichever comes first,
//! against the built-in emulator unless `AZURE_DCE_ENDPOINT` and friends are set:
//!
//! ```text
//! cargo run --example graceful_shutdown      # press Ctrl-C within 3 s to see the signal path
//! ```
//!
//! A program that does not handle signals itself can call `guard.flush_on_signals()` instead.

use std::time::Duration;

use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::{AzureLogsBuilder, ENV_ENDPOINT};

const STREAM: &str = "Custom-Shutdown_CL";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = match std::env::var_os(ENV_ENDPOINT) {
        Some(_) => None,
        None => Some(Emulator::start()?),
    };
    let builder = match &emulator {
        Some(emu) => emu.logs_builder("dcr-shutdown", STREAM),
        None => AzureLogsBuilder::from_env()?,
    };
    let guard = tracing_azure_logs::install(builder)?;

    let why = tokio::select! {
        _ = serve() => "done serving",
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = terminate() => "SIGTERM",
    };
    tracing::info!(why, "shutting down");

    // Dropping the guard does the same; shutdown() also reports.
    let report = guard.shutdown();
    println!(
        "{why}: flushed {}, sent {}, failed {}, dropped {}",
        report.completed, report.stats.sent, report.stats.failed, report.stats.dropped
    );
    if let Some(emu) = emulator {
        println!("the emulator holds {} rows", emu.row_count(STREAM));
        emu.shutdown();
    }
    Ok(())
}

async fn serve() {
    for request in 0..30u64 {
        tracing::info!(request, "handled a request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(unix)]
async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn terminate() {
    std::future::pending().await
}
