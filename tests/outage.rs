//! A minute-long outage loses nothing with the default configuration and the default queue.
//!
//! Three outages run at once, each against its own emulator and pipeline, at 1,000 events/s:
//! 60 s of 503s, 60 s of refused connections (the emulator is stopped and started again on the
//! same port), and 60 s of requests that hang (held without an answer, never stored). Each must
//! deliver every event exactly once (distinct sequence numbers counted at the emulator) with the
//! books exact. Before the default retry was bounded by its deadline instead of 5 attempts, each
//! lost most of the outage's rows.
//!
//! One test per binary: it runs about two minutes and its pipelines are the only load.
#![cfg(feature = "emulator")]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing_azure_logs::emulator::{Emulator, FaultRates};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-00000000000000000000000000000060";
const STREAM: &str = "Custom-Outage_CL";
const TOKEN: &str = "outage-token";
const RATE_PER_SEC: u64 = 1_000;
const BEFORE: Duration = Duration::from_secs(3);
const OUTAGE: Duration = Duration::from_secs(60);
const AFTER: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug)]
enum Outage {
    Unavailable,
    Refused,
    Hang,
}

#[test]
fn a_minute_of_503s_refusals_or_hangs_loses_no_row_with_the_defaults() {
    let _limit = common::Watchdog::start(Duration::from_secs(420));
    let runs: Vec<_> = [Outage::Unavailable, Outage::Refused, Outage::Hang]
        .into_iter()
        .map(|outage| {
            std::thread::Builder::new()
                .name(format!("{outage:?}"))
                .spawn(move || run(outage))
                .unwrap()
        })
        .collect();
    let results: Vec<Result<String, String>> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    for r in &results {
        eprintln!("{}", r.as_ref().unwrap_or_else(|e| e));
    }
    assert!(results.iter().all(Result::is_ok), "{results:#?}");
}

fn run(outage: Outage) -> Result<String, String> {
    let dir = scratch_dir(outage);
    let start = |port: u16| {
        Emulator::builder()
            .token(TOKEN)
            .port(port)
            .retain_rows(false)
            .persist_dir(&dir)
            .start()
    };
    let mut emu = Some(start(0).unwrap());
    let port = emu.as_ref().unwrap().addr().port();
    // The defaults: queue, retry policy, request timeout, max_delay.
    let (layer, guard) = emu.as_ref().unwrap().logs_builder(RULE, STREAM).build().unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));

    let total = (BEFORE + OUTAGE + AFTER).as_secs() * RATE_PER_SEC;
    let began = Instant::now();
    let mut phase = 0;
    tracing::dispatcher::with_default(&dispatch, || {
        for seq in 0..total {
            // Paced against the clock, 1 event per millisecond.
            let due = began + Duration::from_micros(seq * 1_000_000 / RATE_PER_SEC);
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
            let elapsed = began.elapsed();
            if phase == 0 && elapsed >= BEFORE {
                phase = 1;
                let e = emu.as_ref().unwrap();
                match outage {
                    Outage::Unavailable => e.set_fault_rates(Some(FaultRates {
                        unavailable: 1.0,
                        ..FaultRates::default()
                    })),
                    Outage::Hang => e.set_fault_rates(Some(FaultRates {
                        hang: 1.0,
                        hang_duration: OUTAGE,
                        ..FaultRates::default()
                    })),
                    Outage::Refused => emu.take().unwrap().shutdown(),
                }
            }
            if phase == 1 && elapsed >= BEFORE + OUTAGE {
                phase = 2;
                match outage {
                    Outage::Refused => emu = Some(restart(&start, port)),
                    _ => emu.as_ref().unwrap().clear_faults(),
                }
            }
            tracing::info!(seq, "outage test event");
        }
    });
    let emitted_in = began.elapsed();
    let report = guard.flush_within(Duration::from_secs(240));
    let stats = report.stats;
    let settled_in = began.elapsed();
    drop(guard);
    if let Some(e) = emu.take() {
        e.shutdown();
    }

    let counts = seq_counts(&dir.join(format!("{STREAM}.jsonl")));
    let _ = std::fs::remove_dir_all(&dir);
    let missing = (0..total).filter(|s| !counts.contains_key(s)).count();
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    let summary = format!(
        "{outage:?}: emitted {total} in {emitted_in:.1?}, settled in {settled_in:.1?}; distinct at the emulator {}, \
         missing {missing}, duplicated {duplicated}; stats {stats:?}",
        counts.len()
    );
    let exact = report.completed
        && missing == 0
        && duplicated == 0
        && counts.len() as u64 == total
        && stats.sent == total
        && stats.failed == 0
        && stats.dropped == 0
        && stats.enqueued == total;
    if exact { Ok(summary) } else { Err(summary) }
}

/// Starts the emulator on `port` again; the port was just freed, so binding may need a moment.
fn restart(
    start: &dyn Fn(u16) -> Result<Emulator, tracing_azure_logs::emulator::EmulatorError>,
    port: u16,
) -> Emulator {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match start(port) {
            Ok(emu) => return emu,
            Err(e) if Instant::now() > deadline => panic!("cannot bind port {port} again: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn scratch_dir(outage: Outage) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tal-outage-{outage:?}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// How many times each `seq` was stored, from the emulator's persisted JSON lines.
fn seq_counts(file: &Path) -> BTreeMap<u64, u32> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        if row["Target"] != "outage" {
            continue;
        }
        let seq = row["Properties"]["seq"].as_u64().unwrap();
        *counts.entry(seq).or_insert(0) += 1;
    }
    counts
}
