//! A program that logs through the `log` crate only (no tracing), shipped by the direct bridge.
//!
//! With `AZURE_DCE_ENDPOINT`, `AZURE_DCR_RULE_ID` and `AZURE_DCR_STREAM_NAME` set, records go to
//! Azure; without them, to the built-in emulator, and the rows it received are printed.
//!
//! ```text
//! cargo run --example log_bridge
//! ```

use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::log_bridge::{self, LogBridge};
use tracing_azure_logs::{AzureLogsBuilder, ENV_ENDPOINT};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = match std::env::var_os(ENV_ENDPOINT) {
        Some(_) => None,
        None => Some(Emulator::start()?),
    };
    let builder = match &emulator {
        Some(emu) => emu.logs_builder("dcr-log-bridge", "Custom-LogBridge_CL"),
        None => AzureLogsBuilder::from_env()?,
    };
    // Info and above, but only warnings from the chatty `legacy::pool` module.
    let bridge = LogBridge::new(log::LevelFilter::Info).target("legacy::pool", log::LevelFilter::Warn);
    let guard = log_bridge::init(builder, bridge)?;

    log::info!(user_id = 42, plan = "pro"; "user signed in");
    log::warn!(target: "legacy::pool", idle = 3, max = 16; "pool nearly idle");
    log::info!(target: "legacy::pool", "not shipped: below the target's level");
    log::error!(code = 503, retry = true; "upstream unavailable");

    let report = guard.shutdown();
    println!(
        "flushed: {}  sent {}  failed {}  dropped {}",
        report.completed, report.stats.sent, report.stats.failed, report.stats.dropped
    );
    if let Some(emu) = emulator {
        for row in emu.rows("Custom-LogBridge_CL") {
            println!(
                "{:<5} {:<13} {:<24} {}",
                row["Level"].as_str().unwrap_or(""),
                row["Target"].as_str().unwrap_or(""),
                row["Message"].as_str().unwrap_or(""),
                row["Properties"]
            );
        }
    }
    Ok(())
}
