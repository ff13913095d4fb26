//! What the worker sustains, end to end (encode on the app thread, drain, gzip, upload to the
//! emulator on the same 2 cores), per the performance section.
//!
//! `cargo bench --bench throughput` runs, in order:
//! - `burst`: 1,000,000 events as fast as one thread can emit them, default pipeline (65,536 rows,
//!   32 MiB): end-to-end rows/s (until the flush completes and the emulator counted the rows),
//!   drops, and peak RSS (`VmHWM`). Each burst runs in a fresh child process of this binary:
//!   `inproc` has the emulator in the same process (its memory counts), `outproc` runs the emulator
//!   in another child process (the figure is the application's own: app + layer + pipeline), and
//!   `inproc-unbounded` gives the queue room for the whole burst (no drops), which measures the
//!   worker's drain rate alone.
//! - `sustained`: one producer paced on the clock at each rate of `THROUGHPUT_RATES` (default
//!   250k,500k,750k,1M,1.5M,2M events/s) for `THROUGHPUT_SECS` (default 10) seconds, a fresh
//!   default pipeline per rate; per rate the achieved rate, drops, sent, uploads, the worker's and
//!   the emulator's CPU, and at the end the highest rate with zero drops.
//!
//! `cargo bench --bench throughput -- burst` or `-- sustained` runs one part.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tracing_azure_logs::client::StaticTokenCredential;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::{AzureLogs, AzureLogsBuilder};

mod common;
use common::{ThreadStat, events, in_request_span};

const BURST: u64 = 1_000_000;
const CHILD_TOKEN: &str = "bench-emulator-token";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--emulator-child") {
        return emulator_child();
    }
    if let Some(mode) = args.iter().find_map(|a| a.strip_prefix("--burst-child=")) {
        return burst(mode);
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let wanted = |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f.as_str()));
    if wanted("burst") {
        println!("== burst: {BURST} events from one thread, default capacity ==");
        for mode in ["inproc", "outproc", "inproc-unbounded"] {
            let exe = std::env::current_exe().expect("own path");
            let status = Command::new(exe)
                .arg(format!("--burst-child={mode}"))
                .status()
                .expect("burst child runs");
            assert!(status.success(), "burst child {mode} failed: {status}");
        }
    }
    if wanted("sustained") {
        sustained();
    }
}

// ---------------------------------------------------------------------------------------------
// Burst.

/// The emulator in another process: prints its endpoint, answers `count` with the stream's row
/// count and `hwm` with its own peak RSS (KiB), exits at end of input.
fn emulator_child() {
    let emu = Emulator::builder()
        .retain_rows(false)
        .token(CHILD_TOKEN)
        .start()
        .expect("emulator starts");
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", emu.endpoint()).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let answer = match line.as_deref() {
            Ok("count") => emu.row_count(common::STREAM) as u64,
            Ok("hwm") => common::status_kib("VmHWM"),
            _ => break,
        };
        writeln!(out, "{answer}").unwrap();
        out.flush().unwrap();
    }
}

enum Sink {
    Here(Emulator),
    Child {
        child: Child,
        input: ChildStdin,
        output: BufReader<ChildStdout>,
    },
}

impl Sink {
    fn start(in_process: bool) -> (Sink, AzureLogsBuilder) {
        if in_process {
            let emu = common::emulator();
            let builder = common::builder(&emu);
            return (Sink::Here(emu), builder);
        }
        let exe = std::env::current_exe().expect("own path");
        let mut child = Command::new(exe)
            .arg("--emulator-child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("emulator child starts");
        let input = child.stdin.take().expect("piped");
        let mut output = BufReader::new(child.stdout.take().expect("piped"));
        let mut endpoint = String::new();
        output.read_line(&mut endpoint).expect("endpoint line");
        let builder = AzureLogs::builder()
            .endpoint(endpoint.trim())
            .rule_id(common::RULE)
            .stream(common::STREAM)
            .credential(StaticTokenCredential::new(CHILD_TOKEN));
        (Sink::Child { child, input, output }, builder)
    }

    fn ask(&mut self, what: &str) -> u64 {
        match self {
            Sink::Here(emu) => match what {
                "count" => emu.row_count(common::STREAM) as u64,
                _ => 0,
            },
            Sink::Child { input, output, .. } => {
                writeln!(input, "{what}").unwrap();
                input.flush().unwrap();
                let mut line = String::new();
                output.read_line(&mut line).unwrap();
                line.trim().parse().unwrap()
            }
        }
    }

    fn rows(&mut self) -> u64 {
        self.ask("count")
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::Child { child, input, .. } = self {
            let _ = input.write_all(b"quit\n");
            let _ = child.wait();
        }
    }
}

fn burst(mode: &str) {
    let in_process = mode != "outproc";
    let (mut sink, mut builder) = Sink::start(in_process);
    if mode == "inproc-unbounded" {
        builder = builder.queue_capacity(BURST as usize + 1).queue_max_bytes(4 << 30);
    }
    let (dispatch, guard) = common::layer_dispatch(builder);
    tracing::dispatcher::with_default(&dispatch, || {
        // Warm: connection open, token cached, runtimes started.
        in_request_span(|| events(1_000));
        common::flush(&guard);
        let warm_rows = sink.rows();
        let base = guard.stats();
        let rss_before = common::status_kib("VmRSS");
        let reset = common::reset_peak_rss();
        let workers = common::threads_named(common::WORKER_COMM);
        let worker_before = ThreadStat::sum(&workers);

        let start = Instant::now();
        in_request_span(|| events(BURST));
        let emitted_in = start.elapsed();
        let report = guard.flush_within(Duration::from_secs(120));
        let s = guard.stats();
        let sent = s.sent - base.sent;
        let deadline = Instant::now() + Duration::from_secs(30);
        while sink.rows() < warm_rows + sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let total = start.elapsed();
        let rows = sink.rows() - warm_rows;
        let worker = ThreadStat::sum(&workers).since(worker_before);
        let hwm = common::status_kib("VmHWM");
        let child_hwm = match &sink {
            Sink::Child { .. } => format!(", emulator process VmHWM {:.1} MiB", sink.ask("hwm") as f64 / 1024.0),
            Sink::Here(_) => String::new(),
        };
        println!(
            "burst [{mode}]: emitted in {:.3} s ({:.0} ns/event); flush completed={} after {:.3} s in all; \
             rows/s end to end {:.0}; emulator rows {rows}; sent {sent} dropped {} failed {} uploads {}; \
             worker CPU {:.2} s ({:.0} ns/row)",
            emitted_in.as_secs_f64(),
            emitted_in.as_nanos() as f64 / BURST as f64,
            report.completed,
            total.as_secs_f64(),
            rows as f64 / total.as_secs_f64(),
            s.dropped - base.dropped,
            s.failed - base.failed,
            s.uploads - base.uploads,
            worker.cpu_ns as f64 / 1e9,
            worker.cpu_ns as f64 / sent.max(1) as f64,
        );
        println!(
            "burst [{mode}]: VmRSS before {:.1} MiB, peak (VmHWM{}) {:.1} MiB{}",
            rss_before as f64 / 1024.0,
            if reset {
                ", reset before the burst"
            } else {
                ", NOT reset: process lifetime"
            },
            hwm as f64 / 1024.0,
            child_hwm
        );
    });
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// Sustained.

struct RateResult {
    target: u64,
    achieved: f64,
    dropped: u64,
    sent: u64,
    uploads: u64,
    rows: u64,
}

fn sustained() {
    let secs = common::env_secs("THROUGHPUT_SECS", 10.0);
    let rates = common::env_rates(
        "THROUGHPUT_RATES",
        &[250_000, 500_000, 750_000, 1_000_000, 1_500_000, 2_000_000],
    );
    let duration = Duration::from_secs_f64(secs);
    println!("== sustained: one paced producer, {secs} s per rate, default pipeline, emulator in process ==");
    let emu = common::emulator();
    let emulator_threads = common::threads_prefixed("logs-emulator-");
    let mut results = Vec::new();
    for &rate in &rates {
        let (dispatch, guard) = common::layer_dispatch(common::builder(&emu));
        let rows_before = emu.row_count(common::STREAM) as u64;
        let (emitted, elapsed, max_pending, cpu) = tracing::dispatcher::with_default(&dispatch, || {
            in_request_span(|| events(1_000));
            common::flush(&guard);
            // After a flush the worker thread has surely named itself.
            let workers = common::threads_named(common::WORKER_COMM);
            assert_eq!(workers.len(), 1, "one worker thread");
            let w0 = ThreadStat::sum(&workers);
            let e0 = ThreadStat::sum(&emulator_threads);
            let p0 = common::this_thread_cpu_ns();
            let (emitted, elapsed, max_pending) = in_request_span(|| paced(rate, duration, &guard));
            let cpu = (
                common::this_thread_cpu_ns() - p0,
                ThreadStat::sum(&workers).since(w0),
                ThreadStat::sum(&emulator_threads).since(e0),
            );
            (emitted, elapsed, max_pending, cpu)
        });
        let flushed = guard.flush_within(Duration::from_secs(60));
        let s = flushed.stats;
        let rows = emu.row_count(common::STREAM) as u64 - rows_before;
        let result = RateResult {
            target: rate,
            achieved: emitted as f64 / elapsed.as_secs_f64(),
            dropped: s.dropped,
            sent: s.sent - 1_000,
            uploads: s.uploads,
            rows: rows.saturating_sub(1_000 + s.diagnostic_rows),
        };
        let pct = |ns: u64| ns as f64 / elapsed.as_nanos() as f64 * 100.0;
        println!(
            "rate {:>9}/s: achieved {:>9.0}/s, emitted {emitted}, dropped {}, sent {}, emulator rows {}, uploads {}, \
             diagnostic rows {}, flush completed={}, max pending {max_pending}; CPU: producer {:.0}%, worker {:.0}% \
             ({} vol. switches), emulator {:.0}%",
            result.target,
            result.achieved,
            result.dropped,
            result.sent,
            result.rows,
            result.uploads,
            s.diagnostic_rows,
            flushed.completed,
            pct(cpu.0),
            pct(cpu.1.cpu_ns),
            cpu.1.voluntary_switches,
            pct(cpu.2.cpu_ns),
        );
        results.push(result);
        drop(guard);
    }
    let best = results
        .iter()
        .filter(|r| r.dropped == 0 && r.achieved >= r.target as f64 * 0.98)
        .map(|r| r.target)
        .max();
    match best {
        Some(rate) => println!("highest rate with zero drops over {secs} s: {rate} events/s"),
        None => println!("no rate ran without drops"),
    }
}

/// [`common::paced`], also returning the highest `pending` seen.
fn paced(rate: u64, duration: Duration, guard: &tracing_azure_logs::AzureLogsGuard) -> (u64, Duration, u64) {
    let mut max_pending = 0;
    let (emitted, elapsed) = common::paced(rate, duration, || {
        max_pending = max_pending.max(guard.stats().pending())
    });
    (emitted, elapsed, max_pending)
}
