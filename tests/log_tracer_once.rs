//! With `LogTracer` + the layer (what `init()` installs), a `log` record is shipped exactly once,
//! and the direct bridge refuses to install beside it. One test per binary: global state.
#![cfg(feature = "emulator")]

mod common;

use std::time::Duration;

use tracing_azure_logs::InitError;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::log_bridge::{self, LogBridge};

#[test]
fn a_record_through_log_tracer_arrives_once() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let builder = || {
        emu.logs_builder("dcr-once", "Custom-Once_CL")
            .max_delay(Duration::from_millis(20))
    };
    // What init() does, with an explicit builder instead of the environment.
    let guard = tracing_azure_logs::install(builder()).unwrap();
    let err = log_bridge::init(builder(), LogBridge::new(log::LevelFilter::Trace)).unwrap_err();
    assert!(matches!(err, InitError::LoggerAlreadySet(_)), "{err}");

    let line = line!() + 1;
    log::warn!(target: "legacy::db", attempt = 3; "connection reset");
    tracing::info!("a tracing event");
    assert!(guard.flush_within(Duration::from_secs(20)).completed);

    let rows = emu.rows("Custom-Once_CL");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let record: Vec<_> = rows.iter().filter(|r| r["Message"] == "connection reset").collect();
    assert_eq!(record.len(), 1, "shipped exactly once");
    // tracing-log's normalized metadata gives the record's own target, file and line.
    assert_eq!(record[0]["Target"], "legacy::db");
    assert_eq!(record[0]["Level"], "WARN");
    assert!(record[0]["File"].as_str().unwrap().ends_with("log_tracer_once.rs"));
    assert_eq!(record[0]["Line"], line);
    assert!(
        record[0]["Properties"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| !k.starts_with("log.")),
        "{:?}",
        record[0]["Properties"]
    );
}
