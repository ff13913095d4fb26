//! The disk spool against the emulator: an outage longer than the retry deadline, and a
//! restart with the service still down. What the emulator stored decides.
#![cfg(feature = "emulator")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing_azure_logs::emulator::{Emulator, FaultRates};
use tracing_azure_logs::{AzureLogsBuilder, RetryPolicy, Spool};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-spool";
const STREAM: &str = "Custom-Spool_CL";
const WAIT: Duration = Duration::from_secs(60);

use common::TempDir;

/// A pipeline whose retries give up after one second, with a spool in `dir`.
fn pipeline(emu: &Emulator, dir: &TempDir) -> AzureLogsBuilder {
    emu.logs_builder(RULE, STREAM)
        .max_delay(Duration::from_millis(50))
        .flush_timeout(Duration::from_secs(3))
        .retry_policy(
            RetryPolicy::default()
                .with_base_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_millis(200))
                .with_deadline(Duration::from_secs(1)),
        )
        .spool(Spool::dir(&dir.0, 64 << 20))
}

fn down() -> FaultRates {
    FaultRates {
        unavailable: 1.0,
        ..FaultRates::default()
    }
}

fn emit(layer: tracing_azure_logs::AzureLogsLayer, seqs: std::ops::Range<u64>) {
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        for seq in seqs {
            tracing::info!(seq, "spooled event");
        }
    });
}

/// How many times each seq was stored.
fn stored(emu: &Emulator) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for row in emu.rows(STREAM) {
        if let Some(seq) = row["Properties"]["seq"].as_u64() {
            *counts.entry(seq).or_insert(0) += 1;
        }
    }
    counts
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn an_outage_longer_than_the_retry_deadline_loses_nothing() {
    let _limit = common::time_limit();
    let dir = TempDir::new("outage");
    let emu = Emulator::start().unwrap();
    emu.set_fault_rates(Some(down()));
    let (layer, guard) = pipeline(&emu, &dir).build().unwrap();
    emit(layer, 0..5_000);
    // Every batch gives up after a second: all of them reach the spool, none fails.
    wait_until("every row is spooled", || guard.stats().spooled == 5_000);
    let stats = guard.stats();
    assert_eq!((stats.sent, stats.failed, stats.dropped), (0, 0, 0), "{stats:?}");
    assert!(stats.spool_bytes > 0);
    assert_eq!(emu.row_count(STREAM), 0);

    emu.clear_faults();
    wait_until("the spool was sent", || guard.stats().sent == 5_000);
    let stats = guard.shutdown().stats;
    assert_eq!((stats.failed, stats.dropped, stats.spooled), (0, 0, 0), "{stats:?}");
    let counts = stored(&emu);
    assert_eq!(counts.len(), 5_000);
    assert!(counts.values().all(|&n| n == 1), "every row exactly once");
}

#[test]
fn rows_left_at_shutdown_are_sent_by_the_next_process_on_the_directory() {
    let _limit = common::time_limit();
    let dir = TempDir::new("restart");
    let emu = Emulator::start().unwrap();
    emu.set_fault_rates(Some(down()));
    let (layer, guard) = pipeline(&emu, &dir).build().unwrap();
    emit(layer, 0..2_000);
    // Dropping the guard with the service down: nothing is confirmed, everything is spooled.
    let first = guard.shutdown().stats;
    assert_eq!(first.spooled, 2_000, "{first:?}");
    assert_eq!((first.sent, first.failed, first.dropped), (0, 0, 0));

    // A second pipeline on the directory while the first holds it would be refused; the first
    // is gone now. The service is back.
    emu.clear_faults();
    let (_layer, guard) = pipeline(&emu, &dir).build().unwrap();
    wait_until("the first pipeline's rows arrived", || guard.stats().replayed == 2_000);
    let counts = stored(&emu);
    assert_eq!(counts.len(), 2_000);
    assert!(counts.values().all(|&n| n == 1), "every row exactly once");
    let second = guard.shutdown().stats;
    assert_eq!(
        (second.sent, second.spooled),
        (0, 0),
        "not this pipeline's rows: {second:?}"
    );
}

#[test]
fn a_second_pipeline_on_the_same_directory_is_refused_at_build() {
    let _limit = common::time_limit();
    let dir = TempDir::new("lock");
    let emu = Emulator::start().unwrap();
    let (_layer, _guard) = pipeline(&emu, &dir).build().unwrap();
    let error = pipeline(&emu, &dir).build().unwrap_err().to_string();
    assert!(error.contains("in use by another process"), "{error}");
}

#[test]
fn an_outage_longer_than_the_queue_holds_goes_to_disk_not_to_drops() {
    let _limit = common::time_limit();
    let dir = TempDir::new("queue");
    let emu = Emulator::start().unwrap();
    emu.set_fault_rates(Some(down()));
    // A queue of 2,000 rows, and uploads that keep retrying for the whole outage.
    let (layer, guard) = pipeline(&emu, &dir)
        .queue_capacity(2_000)
        .retry_policy(
            RetryPolicy::default()
                .with_base_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_millis(200))
                .with_deadline(Duration::from_secs(30)),
        )
        .build()
        .unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    const ROWS: u64 = 50_000;
    let started = Instant::now();
    let mut peak_spooled = 0;
    tracing::dispatcher::with_default(&dispatch, || {
        // 20,000 rows/s: 25 times what the queue holds over the 2.5 s outage.
        for chunk in 0..ROWS / 100 {
            let due = started + Duration::from_millis(chunk * 5);
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
            for seq in chunk * 100..(chunk + 1) * 100 {
                tracing::info!(
                    seq,
                    pad = "padding padding padding padding padding",
                    "during the outage"
                );
            }
            peak_spooled = peak_spooled.max(guard.stats().spooled);
        }
    });
    assert_eq!(guard.stats().dropped, 0, "{:?}", guard.stats());
    assert!(peak_spooled > 0, "rows went to disk during the outage");
    emu.clear_faults();
    wait_until("every row was sent", || guard.stats().sent == ROWS);
    let stats = guard.shutdown().stats;
    assert_eq!((stats.failed, stats.dropped, stats.spooled), (0, 0, 0), "{stats:?}");
    let counts = stored(&emu);
    assert_eq!(counts.len() as u64, ROWS);
    assert!(counts.values().all(|&n| n == 1), "every row exactly once");
}
