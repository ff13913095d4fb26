//! The `log` bridge installed on its own: typed key-values, columns, level and target filters.
//! One test per binary: it installs the process's logger.
#![cfg(feature = "emulator")]

mod common;

use std::time::Duration;

use serde_json::json;
use tracing_azure_logs::InitError;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::log_bridge::{self, LogBridge};

#[test]
fn log_records_with_key_values_arrive_typed() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let builder = emu
        .logs_builder("dcr-log", "Custom-Log_CL")
        .max_delay(Duration::from_millis(20));
    let bridge = LogBridge::new(log::LevelFilter::Info).target("noisy", log::LevelFilter::Warn);
    let guard = log_bridge::init(builder, bridge).unwrap();

    let line = line!() + 1;
    log::info!(order_id = 7, total = 12.5, paid = true, who = "ada", big = u64::MAX; "order {} placed", 7);
    log::debug!("below the default level");
    log::info!(target: "noisy::pool", "below the target's level");
    log::warn!(target: "noisy::pool", "kept");
    assert!(guard.flush_within(Duration::from_secs(20)).completed);

    let rows = emu.rows("Custom-Log_CL");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["Level"], "INFO");
    assert_eq!(row["Target"], "log_bridge");
    assert_eq!(row["Message"], "order 7 placed");
    assert_eq!(
        row["Properties"],
        json!({"order_id": 7, "total": 12.5, "paid": true, "who": "ada", "big": u64::MAX})
    );
    assert!(row["File"].as_str().unwrap().ends_with("log_bridge.rs"));
    assert_eq!(row["Line"], line);
    assert_eq!(row["Spans"], json!([]));
    assert_eq!(rows[1]["Target"], "noisy::pool");
    assert_eq!(rows[1]["Level"], "WARN");

    // A second logger cannot be installed, so nothing is ever shipped twice.
    let again = emu.logs_builder("dcr-log", "Custom-Log_CL");
    let err = log_bridge::init(again, LogBridge::new(log::LevelFilter::Info)).unwrap_err();
    assert!(matches!(err, InitError::LoggerAlreadySet(_)), "{err}");
    assert!(tracing_log::LogTracer::init().is_err());
    log::info!("once");
    assert!(guard.flush_within(Duration::from_secs(20)).completed);
    assert_eq!(
        emu.rows("Custom-Log_CL")
            .iter()
            .filter(|r| r["Message"] == "once")
            .count(),
        1
    );
}
