//! Shared by the benches: the event, the pipeline against an in-process emulator, and
//! readers of `/proc` (peak RSS, per-thread CPU time and context switches).
#![allow(dead_code)]

use std::time::Duration;

use tracing::Dispatch;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::{AzureLogs, AzureLogsBuilder, AzureLogsGuard};
use tracing_subscriber::prelude::*;

pub const RULE: &str = "dcr-bench";
pub const STREAM: &str = "Custom-Bench_CL";
/// The worker thread's name as `/proc/*/comm` shows it (cut to 15 bytes).
pub const WORKER_COMM: &str = "tracing-azure-l";

/// Runs `f` inside an entered `info_span!("request", method = "GET", request_id = 7u64)`.
#[inline(never)]
pub fn in_request_span<R>(f: impl FnOnce() -> R) -> R {
    in_request_span_under(None, f)
}

/// Like [`in_request_span`], with the request span a child of `parent` when given (a span that
/// other threads' request spans share, as a server's or a task's span is).
#[inline(never)]
pub fn in_request_span_under<R>(parent: Option<&tracing::Span>, f: impl FnOnce() -> R) -> R {
    let span = request_span(parent);
    let _entered = span.enter();
    f()
}

/// The issue's `info_span!("request", method = "GET", request_id = 7u64)`, a child of `parent`
/// when given (else of the current span), not entered.
pub fn request_span(parent: Option<&tracing::Span>) -> tracing::Span {
    match parent {
        Some(parent) => tracing::info_span!(parent: parent, "request", method = "GET", request_id = 7u64),
        None => tracing::info_span!("request", method = "GET", request_id = 7u64),
    }
}

/// Emits the event `n` times (call it inside [`in_request_span`]).
#[inline(never)]
pub fn events(n: u64) {
    for _ in 0..n {
        tracing::info!(
            target: "app::http",
            status = 200u16,
            path = "/api/v1/items/123",
            latency_ms = 12.5f64,
            user_id = 42u64,
            "request handled"
        );
    }
}

/// An emulator that keeps counts only.
pub fn emulator() -> Emulator {
    Emulator::builder().retain_rows(false).start().expect("emulator starts")
}

/// The layer's pipeline with its defaults (capacity 65,536 rows / 32 MiB, max delay 1 s, gzip 1,
/// 5 uploads in flight) against `emu`.
pub fn builder(emu: &Emulator) -> AzureLogsBuilder {
    AzureLogs::builder()
        .endpoint(emu.endpoint())
        .rule_id(RULE)
        .stream(STREAM)
        .credential(emu.credential())
}

/// `registry().with(layer)` as a `Dispatch`, and the guard.
pub fn layer_dispatch(builder: AzureLogsBuilder) -> (Dispatch, AzureLogsGuard) {
    let (layer, guard) = builder.build().expect("pipeline builds");
    (Dispatch::new(tracing_subscriber::registry().with(layer)), guard)
}

/// `fmt().json()` (span list and current span, the defaults) over `non_blocking(sink())`.
pub fn fmt_json_dispatch() -> (Dispatch, tracing_appender::non_blocking::WorkerGuard) {
    let (writer, guard) = tracing_appender::non_blocking(std::io::sink());
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_span_list(true)
        .with_writer(writer)
        .finish();
    (Dispatch::new(subscriber), guard)
}

pub fn registry_dispatch() -> Dispatch {
    Dispatch::new(tracing_subscriber::registry())
}

/// Flushes, insisting that it completes.
pub fn flush(guard: &AzureLogsGuard) {
    let report = guard.flush_within(Duration::from_secs(60));
    assert!(report.completed, "flush did not complete: {:?}", report.stats);
}

/// A `kB` line of `/proc/self/status` (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5); whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Thread ids of this process whose `comm` is `name`.
pub fn threads_named(name: &str) -> Vec<u32> {
    threads_where(|comm| comm == name)
}

/// Thread ids of this process whose `comm` starts with `prefix`.
pub fn threads_prefixed(prefix: &str) -> Vec<u32> {
    threads_where(|comm| comm.starts_with(prefix))
}

fn threads_where(keep: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
        keep(comm.trim_end()).then_some(tid)
    })
    .collect()
}

/// Per-thread counters from `/proc`: CPU time on CPU (ns) and context switches.
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadStat {
    pub cpu_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
}

impl ThreadStat {
    pub fn of(tid: u32) -> ThreadStat {
        let cpu_ns = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0)
        };
        ThreadStat {
            cpu_ns,
            voluntary_switches: field("voluntary_ctxt_switches"),
            involuntary_switches: field("nonvoluntary_ctxt_switches"),
        }
    }

    /// Summed over threads.
    pub fn sum(tids: &[u32]) -> ThreadStat {
        tids.iter()
            .map(|&t| ThreadStat::of(t))
            .fold(ThreadStat::default(), |a, b| ThreadStat {
                cpu_ns: a.cpu_ns + b.cpu_ns,
                voluntary_switches: a.voluntary_switches + b.voluntary_switches,
                involuntary_switches: a.involuntary_switches + b.involuntary_switches,
            })
    }

    pub fn since(self, earlier: ThreadStat) -> ThreadStat {
        ThreadStat {
            cpu_ns: self.cpu_ns - earlier.cpu_ns,
            voluntary_switches: self.voluntary_switches - earlier.voluntary_switches,
            involuntary_switches: self.involuntary_switches - earlier.involuntary_switches,
        }
    }
}

/// This thread's CPU time, in ns (`CLOCK_THREAD_CPUTIME_ID`: exact, unlike `/proc/*/schedstat`,
/// which a running thread sees only up to its last scheduler tick).
pub fn this_thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A number of seconds from the environment variable `name`, or `default`.
pub fn env_secs(name: &str, default: f64) -> f64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Comma-separated rates (events per second) from the environment variable `name`, or `default`.
pub fn env_rates(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|s| s.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// Emits the event at `rate` per second, paced on the clock, for `duration` (call it
/// inside [`in_request_span`]); calls `sample` every 10 ms. Returns the events emitted and the
/// time taken.
pub fn paced(rate: u64, duration: Duration, mut sample: impl FnMut()) -> (u64, Duration) {
    let start = std::time::Instant::now();
    let mut emitted = 0u64;
    let mut last_sample = start;
    loop {
        let now = std::time::Instant::now();
        let since = now - start;
        if since >= duration {
            return (emitted, since);
        }
        if now - last_sample >= Duration::from_millis(10) {
            sample();
            last_sample = now;
        }
        let due = (rate as f64 * since.as_secs_f64()) as u64;
        if emitted < due {
            let n = (due - emitted).min(256);
            events(n);
            emitted += n;
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}
