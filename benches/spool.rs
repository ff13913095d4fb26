//! How many rows per second the disk spool takes while the service is down: the issue's
//! event from one paced producer, the emulator answering 503 to everything and uploads retrying
//! for 10 minutes (so every upload slot stays busy), a default queue and a spool with the
//! default sync (every 500 ms). Rows that do not fit the queue while the worker writes batches
//! to disk are dropped: the highest rate with no drop is what the spool path sustains.
//!
//! Then, with the service up, the same producer without a spool and with one in
//! `SpoolMode::Always` (every batch written before its upload): the cost of writing everything.
//!
//! `cargo bench --bench spool` (`SPOOL_RATES=250000,500000`, `SPOOL_UP_RATES=500000,1000000` and
//! `SPOOL_SECS=5` change the plan).

use std::time::Duration;

use tracing_azure_logs::emulator::FaultRates;
use tracing_azure_logs::{RetryPolicy, Spool, SpoolMode};

mod common;
use common::in_request_span;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = common::env_secs("SPOOL_SECS", 5.0);
    let rates = common::env_rates("SPOOL_RATES", &[250_000, 500_000, 750_000, 1_000_000]);
    println!("== spool: one paced producer, {secs} s per rate, service down, default queue ==");
    let emu = common::emulator();
    emu.set_fault_rates(Some(FaultRates {
        unavailable: 1.0,
        ..FaultRates::default()
    }));
    let mut best = None;
    for rate in rates {
        let dir = std::env::temp_dir().join(format!("tal-spool-bench-{}-{rate}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let builder = common::builder(&emu)
            .retry_policy(RetryPolicy::default().with_deadline(Duration::from_secs(600)))
            .flush_timeout(Duration::from_millis(100))
            .spool(Spool::dir(&dir, 8 << 30));
        let (dispatch, guard) = common::layer_dispatch(builder);
        let duration = Duration::from_secs_f64(secs);
        let (emitted, elapsed) =
            tracing::dispatcher::with_default(&dispatch, || in_request_span(|| common::paced(rate, duration, || {})));
        let stats = guard.stats();
        drop(guard);
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "rate {rate:>9}/s: achieved {:>9.0}/s, emitted {emitted}, spooled {} ({:.1} MiB on disk), dropped {}",
            emitted as f64 / elapsed.as_secs_f64(),
            stats.spooled,
            stats.spool_bytes as f64 / (1 << 20) as f64,
            stats.dropped
        );
        if stats.dropped == 0 {
            best = Some(rate);
        }
    }
    match best {
        Some(rate) => println!("highest rate without a drop while spooling: {rate} rows/s"),
        None => println!("every rate dropped rows"),
    }
    emu.clear_faults();
    service_up(&emu, secs);
}

/// The service up: no spool against `SpoolMode::Always`, rate by rate, each pair back to back.
fn service_up(emu: &tracing_azure_logs::emulator::Emulator, secs: f64) {
    let rates = common::env_rates("SPOOL_UP_RATES", &[500_000, 1_000_000, 1_500_000]);
    println!("== service up: no spool vs SpoolMode::Always, {secs} s per rate ==");
    for rate in rates {
        for always in [false, true] {
            let dir = std::env::temp_dir().join(format!("tal-spool-bench-up-{}-{rate}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let mut builder = common::builder(emu).flush_timeout(Duration::from_secs(30));
            if always {
                builder = builder.spool(Spool::dir(&dir, 8 << 30).mode(SpoolMode::Always));
            }
            let (dispatch, guard) = common::layer_dispatch(builder);
            let duration = Duration::from_secs_f64(secs);
            let (emitted, elapsed) = tracing::dispatcher::with_default(&dispatch, || {
                in_request_span(|| common::paced(rate, duration, || {}))
            });
            let report = guard.flush_within(Duration::from_secs(30));
            let stats = report.stats;
            drop(guard);
            let _ = std::fs::remove_dir_all(&dir);
            println!(
                "rate {rate:>9}/s {:>10}: achieved {:>9.0}/s, sent {} of {emitted}, dropped {}, spool errors {}",
                if always { "Always" } else { "no spool" },
                emitted as f64 / elapsed.as_secs_f64(),
                stats.sent,
                stats.dropped,
                stats.spool_errors
            );
        }
    }
}
