//! How many rows per second the disk spool takes while the service is down: the issue's
//! event from one paced producer, the emulator answering 503 to everything and uploads retrying
//! for 10 minutes (so every upload slot stays busy), a default queue and a spool with the
//! default sync (every 500 ms). Rows that do not fit the queue while the worker writes batches
//! to disk are dropped: the highest rate with no drop is what the spool path sustains.
//!
//! `cargo bench --bench spool` (`SPOOL_RATES=250000,500000` and `SPOOL_SECS=5` change the plan).

use std::time::Duration;

use tracing_azure_logs::emulator::FaultRates;
use tracing_azure_logs::{RetryPolicy, Spool};

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
}
