//! An outage that holds 3,000,000 rows: a child process emits them while the service answers
//! 503 to every upload for longer than the retry deadline, so they all go to the spool; then
//! the service answers again and the spool drains. The child's peak RSS (`VmHWM`) is the
//! pipeline's own (the emulator runs in this process), and the spool directory's size is
//! sampled all along. What the emulator wrote to its files decides: every row arrives, each
//! `RowId` distinct.
#![cfg(all(feature = "emulator", target_os = "linux"))]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing_azure_logs::client::StaticTokenCredential;
use tracing_azure_logs::emulator::{Emulator, FaultRates};
use tracing_azure_logs::{AzureLogs, RetryPolicy, Spool};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-backlog";
const STREAM: &str = "Custom-Backlog_CL";
const TOKEN: &str = "backlog-token";
const ROWS: u64 = 3_000_000;
/// Rows per second the child emits: 10 minutes of 5,000 rows/s in 10 s.
const RATE: u64 = 300_000;
const MAX_BYTES: u64 = 256 << 20;
const RSS_LIMIT_KIB: u64 = 64 << 10;
const WAIT: Duration = Duration::from_secs(120);

use common::TempDir;

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn an_outage_of_three_million_rows_loses_none_within_64_mib_and_max_bytes() {
    let _limit = common::Watchdog::start(Duration::from_secs(300));
    let spool = TempDir::new("backlog-spool");
    let persisted = TempDir::new("backlog-service");
    std::fs::create_dir_all(&spool.0).unwrap();
    let emu = Emulator::builder()
        .token(TOKEN)
        .retain_rows(false)
        .persist_dir(&persisted.0)
        .fault_rates(FaultRates {
            unavailable: 1.0,
            ..FaultRates::default()
        })
        .start()
        .unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "child", "--nocapture"])
        .env("TAL_BACKLOG_ENDPOINT", emu.endpoint())
        .env("TAL_BACKLOG_DIR", &spool.0)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();

    // The spool directory's size, sampled until the child ends.
    let running = Arc::new(AtomicBool::new(true));
    let largest = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (running, largest, dir) = (running.clone(), largest.clone(), spool.0.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                largest.fetch_max(dir_bytes(&dir), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let mut next = |prefix: &str| -> String {
        lines
            .find_map(|line| line.strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("the child never said {prefix:?}"))
    };
    let t0 = Instant::now();
    let spooled = next("SPOOLED ");
    eprintln!("{:?} all rows on disk during the outage: {spooled}", t0.elapsed());
    // The outage ends once every row is on disk.
    emu.clear_faults();
    let done = next("DONE ");
    eprintln!("{:?} drained: {done}", t0.elapsed());
    let status = child.wait().unwrap();
    running.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    assert!(status.success(), "{status:?}");

    let field = |name: &str| -> u64 {
        let start = done
            .find(&format!("{name}: "))
            .unwrap_or_else(|| panic!("{name} in {done}"))
            + name.len()
            + 2;
        done[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("sent"), ROWS, "{done}");
    assert_eq!((field("failed"), field("dropped")), (0, 0), "{done}");
    let peak_kib = field("vmhwm_kib");
    assert!(
        peak_kib <= RSS_LIMIT_KIB,
        "peak RSS {peak_kib} KiB over {RSS_LIMIT_KIB} KiB"
    );
    let largest = largest.load(Ordering::Relaxed);
    assert!(largest <= MAX_BYTES, "the spool took {largest} bytes, over {MAX_BYTES}");
    assert!(largest > 10 << 20, "the rows were on disk ({largest} bytes at most)");

    // What the service stored: each row once at least, by its id, and every seq.
    let file = std::fs::File::open(persisted.0.join("Custom-Backlog_CL.jsonl")).unwrap();
    let mut ids = Vec::with_capacity(ROWS as usize);
    let mut seqs = vec![false; ROWS as usize];
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line.unwrap();
        ids.push(number_after(&line, "\"RowId\":").expect("a RowId"));
        seqs[number_after(&line, "\"seq\":").expect("a seq") as usize] = true;
    }
    let stored = ids.len();
    eprintln!("{:?} read back", t0.elapsed());
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, ROWS, "distinct row ids ({stored} rows stored)");
    assert!(seqs.iter().all(|&s| s), "every seq arrived");
    eprintln!(
        "3,000,000 rows: {stored} stored, peak RSS {} MiB, spool at most {} MiB",
        peak_kib >> 10,
        largest >> 20
    );
    emu.shutdown();
}

/// The integer after `key` in a JSON line (read this way, not parsed whole: 3,000,000 rows are
/// read in seconds in a debug build).
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The child's part; run only by the test above (`--ignored --exact`).
#[test]
#[ignore = "run as a child process by an_outage_of_three_million_rows_loses_none_within_64_mib_and_max_bytes"]
fn child() {
    let endpoint = std::env::var("TAL_BACKLOG_ENDPOINT").expect("run by the parent test");
    let (layer, guard) = AzureLogs::builder()
        .endpoint(endpoint)
        .rule_id(RULE)
        .stream(STREAM)
        .credential(StaticTokenCredential::new(TOKEN))
        .row_id_column("RowId")
        // A short deadline, so the test's outage outlasts it many times.
        .retry_policy(
            RetryPolicy::default()
                .with_base_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_millis(500))
                .with_deadline(Duration::from_secs(2)),
        )
        .spool(Spool::dir(std::env::var("TAL_BACKLOG_DIR").unwrap(), MAX_BYTES))
        .build()
        .unwrap();
    let stats = guard.stats_handle();
    let started = Instant::now();
    let wait = |what: &str, done: &dyn Fn(&tracing_azure_logs::Stats) -> bool| {
        while !done(&stats.get()) {
            assert!(started.elapsed() < WAIT, "{what}: {:?}", stats.get());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        let mut seq = 0u64;
        while seq < ROWS {
            let due = (started.elapsed().as_micros() as u64 * RATE / 1_000_000).min(ROWS);
            while seq < due {
                tracing::info!(seq, "held through an outage");
                seq += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    wait("every row on disk", &|s| s.spooled == ROWS || s.failed + s.dropped > 0);
    println!("SPOOLED {:?}", stats.get());
    wait("the spool drained", &|s| {
        (s.sent == ROWS && s.spool_backlog == 0) || s.failed + s.dropped > 0
    });
    drop(guard);
    let s = stats.get();
    println!(
        "DONE sent: {}, failed: {}, dropped: {}, spool_bytes: {}, vmhwm_kib: {}",
        s.sent,
        s.failed,
        s.dropped,
        s.spool_bytes,
        status_kib("VmHWM")
    );
}
