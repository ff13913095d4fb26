//! Hot-path cost of one event, per the performance section: this layer (emulator as the
//! sink), `fmt().json()` over `tracing_appender::non_blocking(sink())`, and a bare registry, from
//! one and from two threads; then heap allocations per event on the emitting thread, counted by a
//! per-thread counting global allocator, and the worker's wake-ups while events flow.
//!
//! `cargo bench --bench layer` (criterion; `-- one_thread` etc. filters). The allocation report
//! is printed first, the criterion groups follow, and a summary with the ratios comes last.
//!
//! Honesty of the layer's figures: events are emitted in chunks of [`chunk`] per thread (well
//! under the 65,536-row queue), and the pipeline is flushed after each chunk outside the timed
//! part, so the timed events are enqueued, not dropped, while the worker drains, gzips and uploads
//! concurrently on the same 2 cores. Drops are counted and printed at the end (expected 0).
//!
//! Criterion's figures are wall-clock. The summary also gives each emitting thread's own CPU time
//! per event (`*_cpu`, from `CLOCK_THREAD_CPUTIME_ID`): on 2 cores the worker and the in-process
//! emulator preempt the emitters, which wall-clock time counts and CPU time does not.
//!
//! Environment: `BENCH_CHUNK=N` changes the chunk; `BENCH_ALLOC_BACKTRACE=N` prints where the
//! first N steady-state allocations of the layer's events come from; `BENCH_PROFILE_EVENTS=N`
//! only emits N events through the layer and exits (for `valgrind --tool=callgrind
//! --toggle-collect='*common::events*'`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use tracing::Dispatch;
use tracing_azure_logs::AzureLogsGuard;

mod common;
use common::{ThreadStat, events, in_request_span};

// ---------------------------------------------------------------------------------------------
// Counting allocator: allocations made by the current thread.

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static ALLOC_BYTES: Cell<u64> = const { Cell::new(0) };
}

thread_local! {
    /// How many more allocations of this thread to print a backtrace for (diagnostics).
    static TRACE: Cell<u32> = const { Cell::new(0) };
    static TRACING: Cell<bool> = const { Cell::new(false) };
}

fn count(size: usize) {
    // `try_with`: the allocator also runs while thread locals are torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
    let _ = ALLOC_BYTES.try_with(|c| c.set(c.get() + size as u64));
    if TRACE.try_with(Cell::get).unwrap_or(0) > 0 && !TRACING.with(Cell::get) {
        // The backtrace allocates: those allocations are not traced.
        TRACING.with(|t| t.set(true));
        TRACE.with(|t| t.set(t.get() - 1));
        eprintln!(
            "allocation of {size} bytes on the emitting thread:\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        TRACING.with(|t| t.set(false));
    }
}

/// With `BENCH_ALLOC_BACKTRACE=N`, prints where the first N allocations of steady-state events on
/// the emitting thread come from, for each variant that allocates.
fn trace_allocations(v: &Variant) {
    let n: u32 = match std::env::var("BENCH_ALLOC_BACKTRACE").ok().and_then(|s| s.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => return,
    };
    tracing::dispatcher::with_default(&v.dispatch, || {
        for _ in 0..4 {
            in_request_span(|| events(chunk()));
            v.settle();
        }
        in_request_span(|| {
            eprintln!("== {}: backtraces of the first {n} allocations ==", v.name);
            TRACE.with(|t| t.set(n));
            events(chunk());
            TRACE.with(|t| t.set(0));
        });
        v.settle();
    });
}

// SAFETY: forwards every call to `System` unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn thread_allocs() -> (u64, u64) {
    (ALLOCS.with(Cell::get), ALLOC_BYTES.with(Cell::get))
}

// ---------------------------------------------------------------------------------------------
// Variants.

/// Events per thread between two flushes of the layer's pipeline: 16,384, or `BENCH_CHUNK`.
fn chunk() -> u64 {
    static CHUNK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CHUNK.get_or_init(|| {
        std::env::var("BENCH_CHUNK")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or(16_384)
    })
}

struct Variant {
    name: &'static str,
    dispatch: Dispatch,
    /// Settles what was emitted (outside the timed part); `None` for variants without a pipeline.
    guard: Option<AzureLogsGuard>,
}

impl Variant {
    fn settle(&self) {
        if let Some(guard) = &self.guard {
            common::flush(guard);
        }
    }
}

type Totals = BTreeMap<(&'static str, &'static str), (Duration, u64)>;

/// Total timed duration and events per (group, variant), over every timed run (warm-up included).
static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

fn record(group: &'static str, name: &'static str, elapsed: Duration, events: u64) {
    let mut totals = TOTALS.lock().unwrap();
    let entry = totals.entry((group, name)).or_default();
    entry.0 += elapsed;
    entry.1 += events;
}

/// Emits `n` events in the request span and returns the wall-clock time they took; the thread's
/// CPU time for them is recorded under `cpu_group`. The two differ when other threads (the
/// worker, the in-process emulator, the other emitter) take this thread's core meanwhile.
fn timed_events(cpu_group: &'static str, name: &'static str, n: u64) -> Duration {
    in_request_span(|| {
        let cpu = common::this_thread_cpu_ns();
        let start = Instant::now();
        events(n);
        let wall = start.elapsed();
        let cpu = Duration::from_nanos(common::this_thread_cpu_ns() - cpu);
        record(cpu_group, name, cpu, n);
        wall
    })
}

/// One thread emits `iters` events in chunks; only the emission is timed.
fn one_thread(v: &Variant, iters: u64) -> Duration {
    tracing::dispatcher::with_default(&v.dispatch, || {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let n = left.min(chunk());
            elapsed += timed_events("one_thread_cpu", v.name, n);
            left -= n;
            v.settle();
        }
        record("one_thread", v.name, elapsed, iters);
        elapsed
    })
}

/// Two threads each emit `iters` events in lockstep chunks; the result is the slower thread's
/// timed total, so criterion's time per iteration is ns per event per thread.
fn two_threads(v: &Variant, iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    let chunks = iters.div_ceil(chunk());
    let per_thread: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let barrier = &barrier;
                std::thread::Builder::new()
                    .name(format!("bench-{t}"))
                    .spawn_scoped(s, move || {
                        tracing::dispatcher::with_default(&v.dispatch, || {
                            let mut elapsed = Duration::ZERO;
                            let mut left = iters;
                            for _ in 0..chunks {
                                let n = left.min(chunk());
                                barrier.wait();
                                elapsed += timed_events("two_threads_cpu", v.name, n);
                                left -= n;
                                barrier.wait();
                                if t == 0 {
                                    v.settle();
                                }
                            }
                            elapsed
                        })
                    })
                    .expect("spawn")
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("bench thread")).collect()
    });
    let slowest = per_thread.into_iter().max().unwrap_or_default();
    record("two_threads", v.name, slowest, iters);
    slowest
}

// ---------------------------------------------------------------------------------------------
// Allocations per event, and the worker's wake-ups.

/// Allocations (count, bytes) on each emitting thread for `measured` events per thread after
/// `warm` events per thread, with `threads` threads; spans are created outside the counted part.
fn allocs_per_event(v: &Variant, threads: usize, warm: u64, measured: u64) -> (f64, f64) {
    let barrier = Barrier::new(threads);
    let run = |t: usize| {
        tracing::dispatcher::with_default(&v.dispatch, || {
            let mut counted = (0u64, 0u64);
            for (total, count_it) in [(warm, false), (measured, true)] {
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk());
                    barrier.wait();
                    in_request_span(|| {
                        let before = thread_allocs();
                        events(n);
                        let after = thread_allocs();
                        if count_it {
                            counted.0 += after.0 - before.0;
                            counted.1 += after.1 - before.1;
                        }
                    });
                    left -= n;
                    barrier.wait();
                    if t == 0 {
                        v.settle();
                    }
                }
            }
            counted
        })
    };
    let counts: Vec<(u64, u64)> = if threads == 1 {
        vec![run(0)]
    } else {
        std::thread::scope(|s| {
            let run = &run;
            let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || run(t))).collect();
            handles.into_iter().map(|h| h.join().expect("alloc thread")).collect()
        })
    };
    let n = (measured * threads as u64) as f64;
    let sum = counts.iter().fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
    (sum.0 as f64 / n, sum.1 as f64 / n)
}

/// Allocations for creating, entering, exiting and closing the request span, per span.
fn allocs_per_span(v: &Variant, spans: u64) -> f64 {
    tracing::dispatcher::with_default(&v.dispatch, || {
        for _ in 0..1_000 {
            in_request_span(|| ());
        }
        let before = thread_allocs().0;
        for _ in 0..spans {
            in_request_span(|| ());
        }
        (thread_allocs().0 - before) as f64 / spans as f64
    })
}

fn alloc_report(variants: &[Variant]) {
    let mut one = Vec::new();
    let mut two = Vec::new();
    let mut spans = Vec::new();
    for v in variants {
        let (a1, b1) = allocs_per_event(v, 1, 200_000, 200_000);
        let (a2, b2) = allocs_per_event(v, 2, 100_000, 100_000);
        one.push(format!("{}={a1:.3}", v.name));
        two.push(format!("{}={a2:.3}", v.name));
        spans.push(format!("{}={:.2}", v.name, allocs_per_span(v, 10_000)));
        println!(
            "  {:<24} bytes allocated/event: 1 thread {b1:.1}, 2 threads {b2:.1}",
            v.name
        );
    }
    println!("allocs/event (app thread, 1 thread): {}", one.join(" "));
    println!("allocs/event (app threads, 2 threads, per event): {}", two.join(" "));
    println!(
        "allocs/span (create+enter+exit+close, not per event): {}",
        spans.join(" ")
    );
}

/// The worker thread's context switches while one thread emits `n` events (no flush inside), and
/// over an idle period of the same length: with no per-event wake-up, both are about the number
/// of 5 ms ticks plus uploads, far below `n`.
fn wakeup_report(v: &Variant, n: u64) {
    let Some(guard) = &v.guard else { return };
    let workers = common::threads_named(common::WORKER_COMM);
    if workers.len() != 1 {
        println!(
            "worker wake-ups: cannot tell ({} threads named {})",
            workers.len(),
            common::WORKER_COMM
        );
        return;
    }
    common::flush(guard);
    let before = ThreadStat::of(workers[0]);
    let dropped_before = guard.stats().dropped;
    let start = Instant::now();
    tracing::dispatcher::with_default(&v.dispatch, || in_request_span(|| events(n)));
    let busy = start.elapsed();
    let during = ThreadStat::of(workers[0]).since(before);
    let dropped = guard.stats().dropped - dropped_before;
    common::flush(guard);
    std::thread::sleep(Duration::from_millis(1_100));
    let before = ThreadStat::of(workers[0]);
    std::thread::sleep(busy);
    let idle = ThreadStat::of(workers[0]).since(before);
    println!(
        "worker wake-ups while 1 thread emits {n} events in {:.1} ms: {} voluntary + {} involuntary switches \
         ({:.5}/event; dropped {dropped}); idle for as long: {} + {}",
        busy.as_secs_f64() * 1e3,
        during.voluntary_switches,
        during.involuntary_switches,
        (during.voluntary_switches + during.involuntary_switches) as f64 / n as f64,
        idle.voluntary_switches,
        idle.involuntary_switches,
    );
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let emu = common::emulator();
    let (layer, guard) = common::layer_dispatch(common::builder(&emu));
    let (fmt, _fmt_guard) = common::fmt_json_dispatch();
    let variants = [
        Variant {
            name: "azure_logs",
            dispatch: layer,
            guard: Some(guard),
        },
        Variant {
            name: "fmt_json_non_blocking",
            dispatch: fmt,
            guard: None,
        },
        Variant {
            name: "registry",
            dispatch: common::registry_dispatch(),
            guard: None,
        },
    ];

    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    // `BENCH_PROFILE_EVENTS=N`: only emit N events through the layer (for a profiler), and stop.
    if let Some(n) = std::env::var("BENCH_PROFILE_EVENTS").ok().and_then(|s| s.parse().ok()) {
        one_thread(&variants[0], n);
        return;
    }
    for v in &variants[..1] {
        trace_allocations(v);
    }
    println!("== allocations on the emitting thread, steady state ==");
    alloc_report(&variants);
    wakeup_report(&variants[0], 50_000);

    let mut group = criterion.benchmark_group("one_thread");
    for v in &variants {
        group.bench_function(BenchmarkId::from_parameter(v.name), |b| {
            b.iter_custom(|n| one_thread(v, n))
        });
    }
    group.finish();
    let mut group = criterion.benchmark_group("two_threads");
    for v in &variants {
        group.bench_function(BenchmarkId::from_parameter(v.name), |b| {
            b.iter_custom(|n| two_threads(v, n))
        });
    }
    group.finish();
    criterion.final_summary();

    println!(
        "== summary: mean ns/event per thread over every timed run (warm-up included); *_cpu: the emitting \
         thread's own CPU time =="
    );
    let totals = TOTALS.lock().unwrap().clone();
    for group in ["one_thread", "one_thread_cpu", "two_threads", "two_threads_cpu"] {
        let ns = |name: &'static str| {
            totals
                .get(&(group, name))
                .map(|(d, n)| d.as_nanos() as f64 / (*n).max(1) as f64)
        };
        let (Some(layer), Some(fmt), Some(reg)) = (ns("azure_logs"), ns("fmt_json_non_blocking"), ns("registry"))
        else {
            continue;
        };
        println!(
            "{group}: azure_logs={layer:.0} fmt_json_non_blocking={fmt:.0} registry={reg:.0} ns/event; \
             azure_logs/fmt_json = {:.3} (1/{:.1})",
            layer / fmt,
            fmt / layer
        );
    }
    if let Some(guard) = variants[0].guard.as_ref() {
        common::flush(guard);
        let s = guard.stats();
        println!(
            "azure_logs pipeline: enqueued {} dropped {} sent {} failed {} uploads {}; emulator rows {}",
            s.enqueued,
            s.dropped,
            s.sent,
            s.failed,
            s.uploads,
            emu.row_count(common::STREAM)
        );
    }
}
