//! SIGTERM against a child process that emitted events still held in its open batch: with
//! `flush_on_signals` every event arrives and the child still dies of SIGTERM; without it, the
//! events are lost (what the helper is for).
#![cfg(all(feature = "emulator", unix))]

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tracing_azure_logs::AzureLogs;
use tracing_azure_logs::client::StaticTokenCredential;
use tracing_azure_logs::emulator::Emulator;
use tracing_subscriber::prelude::*;

const STREAM: &str = "Custom-Signals_CL";
const TOKEN: &str = "signals-token";
const EVENTS: u64 = 500;

#[test]
fn sigterm_flushes_with_the_helper_and_loses_the_open_batch_without() {
    let _limit = common::time_limit();
    for helper in [true, false] {
        let emu = Emulator::builder().token(TOKEN).start().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "child_emits_then_waits_for_a_signal",
                "--nocapture",
            ])
            .env("TAL_SIGNALS_ENDPOINT", emu.endpoint())
            .env("TAL_SIGNALS_HELPER", if helper { "1" } else { "0" })
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait for the child to say its events are queued.
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.trim() == "READY" {
                    let _ = ready_tx.send(());
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(60))
            .expect("the child got ready");
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the child did not end after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.signal(), Some(libc::SIGTERM), "helper {helper}: {status:?}");
        let arrived = emu.row_count(STREAM) as u64;
        if helper {
            assert_eq!(
                arrived, EVENTS,
                "every queued event was flushed before the process ended"
            );
        } else {
            assert_eq!(arrived, 0, "without the helper the open batch dies with the process");
        }
        emu.shutdown();
    }
}

/// The child's part; run only by the test above (`--ignored --exact`).
#[test]
#[ignore = "run as a child process by sigterm_flushes_with_the_helper_and_loses_the_open_batch_without"]
fn child_emits_then_waits_for_a_signal() {
    let endpoint = std::env::var("TAL_SIGNALS_ENDPOINT").expect("run by the parent test");
    let (layer, guard) = AzureLogs::builder()
        .endpoint(endpoint)
        .rule_id("dcr-signals")
        .stream(STREAM)
        .credential(StaticTokenCredential::new(TOKEN))
        // Nothing leaves before the signal: the batch stays open.
        .max_delay(Duration::from_secs(300))
        .build()
        .unwrap();
    if std::env::var("TAL_SIGNALS_HELPER").as_deref() == Ok("1") {
        guard.flush_on_signals().unwrap();
    }
    tracing_subscriber::registry().with(layer).init();
    for seq in 0..EVENTS {
        tracing::info!(seq, "before the signal");
    }
    println!("READY");
    // The parent's SIGTERM ends the process; this bound only stops an orphan.
    std::thread::sleep(Duration::from_secs(60));
    drop(guard);
    std::process::exit(3);
}
