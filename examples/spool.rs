//! The disk spool through an outage and a restart, against the built-in emulator.
//!
//! 1. The service is down (every request gets 503) for longer than the retry deadline: the
//!    batches go to the spool instead of failing.
//! 2. The pipeline stops while the service is still down: what it holds goes to the spool too.
//! 3. A new pipeline on the same directory, with the service back, sends everything.
//!
//! ```text
//! cargo run --example spool
//! ```

use std::time::{Duration, Instant};

use tracing_azure_logs::emulator::{Emulator, FaultRates};
use tracing_azure_logs::{AzureLogsBuilder, RetryPolicy, Spool};
use tracing_subscriber::prelude::*;

const STREAM: &str = "Custom-SpoolDemo_CL";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("tracing-azure-logs-spool-demo-{}", std::process::id()));
    let emu = Emulator::start()?;
    let pipeline = |emu: &Emulator| -> AzureLogsBuilder {
        emu.logs_builder("dcr-spool-demo", STREAM)
            .flush_timeout(Duration::from_secs(2))
            // Give up on a batch after 2 s, so the demo is short (the default is 2 minutes).
            .retry_policy(RetryPolicy::default().with_deadline(Duration::from_secs(2)))
            .spool(Spool::dir(&dir, 256 * 1024 * 1024))
    };

    println!("1. the service is down; 1,000 events are emitted");
    emu.set_fault_rates(Some(FaultRates {
        unavailable: 1.0,
        ..FaultRates::default()
    }));
    let (layer, guard) = pipeline(&emu).build()?;
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        for order in 0..1_000u64 {
            tracing::info!(order, "order placed");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while guard.stats().spooled < 1_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats = guard.stats();
    println!(
        "   spooled {} row(s), {} bytes on disk; sent {}, failed {}",
        stats.spooled, stats.spool_bytes, stats.sent, stats.failed
    );

    println!("2. the pipeline stops while the service is still down");
    tracing::dispatcher::with_default(&dispatch, || tracing::warn!("shutting down during the outage"));
    let stats = guard.shutdown().stats;
    println!("   spooled {} row(s); failed {}", stats.spooled, stats.failed);

    println!("3. the service is back; a new pipeline on the same directory");
    emu.clear_faults();
    let (_layer, guard) = pipeline(&emu).build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while guard.stats().replayed < 1_001 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = guard.shutdown().stats;
    println!(
        "   sent {} row(s) the first pipeline left; the emulator holds {} row(s)",
        stats.replayed,
        emu.row_count(STREAM)
    );
    let _ = std::fs::remove_dir_all(&dir);
    emu.shutdown();
    Ok(())
}
