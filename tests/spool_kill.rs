//! SIGKILL of a child process that emits 10,000 rows/s with a spool in `SpoolMode::Always`,
//! while the service refuses every upload: a second process on the same directory sends what
//! the first left. What the emulator stored decides: the rows of the killed process that arrive
//! are a prefix of what it emitted (a tail lost, never a hole), and the tail is within the
//! documented bound (the rows of the last `max_delay`, the open batch).
#![cfg(all(feature = "emulator", unix))]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_azure_logs::client::StaticTokenCredential;
use tracing_azure_logs::emulator::{Emulator, FaultRates};
use tracing_azure_logs::{AzureLogs, Spool, SpoolMode};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-kill";
const STREAM: &str = "Custom-Kill_CL";
const TOKEN: &str = "kill-token";
/// Rows per second the child emits.
const RATE: u64 = 10_000;
/// The pipeline's `max_delay` (the default): an open batch closes at this age at the latest.
const MAX_DELAY: Duration = Duration::from_secs(1);
const WAIT: Duration = Duration::from_secs(60);

use common::TempDir;

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(role: &str, emu: &Emulator, dir: &TempDir) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture"])
        .env("TAL_KILL_ROLE", role)
        .env("TAL_KILL_ENDPOINT", emu.endpoint())
        .env("TAL_KILL_DIR", &dir.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the child did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_in_always_mode_loses_a_tail_within_max_delay_and_never_a_hole() {
    let _limit = common::time_limit();
    let dir = TempDir::new("spool-kill");
    let emu = Emulator::builder().token(TOKEN).start().unwrap();

    let mut child = spawn("emit", &emu, &dir);
    // The rows the child has emitted, as it says after each step.
    let emitted = Arc::new(AtomicU64::new(0));
    let stdout = child.stdout.take().unwrap();
    let counter = emitted.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(n) = line.strip_prefix("EMITTED ") {
                counter.store(n.trim().parse().unwrap(), Ordering::SeqCst);
            }
        }
    });
    // First the service takes rows; then it refuses every upload (503), so closed batches are
    // on disk and unconfirmed when the process is killed.
    wait_until("rows arrived", || emu.row_count(STREAM) >= 5_000);
    emu.set_fault_rates(Some(FaultRates {
        unavailable: 1.0,
        ..FaultRates::default()
    }));
    let refused_from = emitted.load(Ordering::SeqCst);
    wait_until("two more seconds of rows", || {
        emitted.load(Ordering::SeqCst) >= refused_from + 2 * RATE
    });
    child.kill().unwrap();
    wait_for_exit(&mut child);
    reader.join().unwrap();
    // Every row up to this count was emitted; at most a few more (emitted after the last line).
    let last = emitted.load(Ordering::SeqCst);
    let before_restart = emu.row_count(STREAM);

    emu.clear_faults();
    let mut drain = spawn("drain", &emu, &dir);
    let status = wait_for_exit(&mut drain);
    assert!(status.success(), "the second process drained the spool: {status:?}");

    let rows = emu.rows(STREAM);
    let seqs: BTreeSet<u64> = rows
        .iter()
        .filter_map(|row| row["Properties"]["seq"].as_u64())
        .collect();
    let arrived = seqs.len() as u64;
    // Row ids: a row sent twice (at-least-once) keeps its id, so ids deduplicate; each process
    // start draws its own prefix (the top 24 bits).
    let id = |row: &serde_json::Value| row["RowId"].as_u64().expect("a RowId");
    let first_ids: BTreeSet<u64> = rows
        .iter()
        .filter(|r| r["Properties"]["seq"].is_u64())
        .map(id)
        .collect();
    assert_eq!(first_ids.len() as u64, arrived, "one id per row, duplicates included");
    let first_prefixes: BTreeSet<u64> = first_ids.iter().map(|id| id >> 40).collect();
    let restarted: Vec<u64> = rows
        .iter()
        .filter(|r| r["Message"] == "after the restart")
        .map(id)
        .collect();
    assert_eq!(restarted.len(), 1, "the second process's row arrived");
    assert_eq!(first_prefixes.len(), 1, "one prefix per process start");
    assert!(
        !first_prefixes.contains(&(restarted[0] >> 40)),
        "a new process start draws a new prefix"
    );
    assert_eq!(
        seqs.last().copied(),
        arrived.checked_sub(1),
        "the rows that arrived are 0..{arrived}: a hole is a row lost from a closed batch"
    );
    assert!(
        arrived > refused_from,
        "rows of the refused seconds arrived from the spool ({arrived} ≤ {refused_from})"
    );
    assert!(
        emu.row_count(STREAM) > before_restart,
        "the second process sent what the first left"
    );
    let lost = last.saturating_sub(arrived);
    let lost_ms = lost * 1_000 / RATE;
    eprintln!("SIGKILL at {last} rows emitted: {arrived} arrived, the last {lost} ({lost_ms} ms) lost");
    // The bound: rows not yet in a closed batch, at most the last `max_delay`, plus the worker's
    // 5 ms tick and the child's report step; 100 ms of slack for scheduling on a busy machine.
    let bound = RATE * (MAX_DELAY.as_millis() as u64 + 100) / 1_000;
    assert!(lost <= bound, "{lost} rows lost, more than the bound of {bound}");
    emu.shutdown();
}

/// The child's part; run only by the test above (`--ignored --exact`).
#[test]
#[ignore = "run as a child process by sigkill_in_always_mode_loses_a_tail_within_max_delay_and_never_a_hole"]
fn child() {
    let role = std::env::var("TAL_KILL_ROLE").expect("run by the parent test");
    let (layer, guard) = AzureLogs::builder()
        .endpoint(std::env::var("TAL_KILL_ENDPOINT").unwrap())
        .rule_id(RULE)
        .stream(STREAM)
        .credential(StaticTokenCredential::new(TOKEN))
        .max_delay(MAX_DELAY)
        .row_id_column("RowId")
        .spool(Spool::dir(std::env::var("TAL_KILL_DIR").unwrap(), 256 << 20).mode(SpoolMode::Always))
        .build()
        .unwrap();
    let started = Instant::now();
    if role == "drain" {
        // Sends what the killed process left and one row of its own, then ends.
        tracing_subscriber::registry().with(layer).init();
        tracing::info!("after the restart");
        let stats = guard.stats_handle();
        while stats.get().spool_backlog > 0 || stats.get().sent == 0 {
            assert!(started.elapsed() < WAIT, "the spool did not drain: {:?}", stats.get());
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("DRAINED {:?}", stats.get());
        return;
    }
    tracing_subscriber::registry().with(layer).init();
    let mut seq = 0u64;
    // Until the parent's SIGKILL; the bound only stops an orphan.
    while started.elapsed() < WAIT {
        let due = started.elapsed().as_micros() as u64 * RATE / 1_000_000;
        while seq < due {
            tracing::info!(seq, "until SIGKILL");
            seq += 1;
        }
        println!("EMITTED {seq}");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(guard);
    std::process::exit(3);
}
