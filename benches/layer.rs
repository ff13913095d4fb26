//! Hot-path cost of one event, per the performance section: this layer (emulator as the
//! sink), `fmt().json()` over `tracing_appender::non_blocking(sink())`, and a bare registry, from
//! one and from two threads, plus the layer while its queue is full (the service holds every
//! request), with one pipeline for both threads and with one per thread; then heap allocations per event on the emitting thread, counted by a
//! per-thread counting global allocator, and the worker's wake-ups while events flow.
//!
//! `cargo bench --bench layer` (criterion; `-- one_thread` etc. filters). With `--features
//! opentelemetry`, two more subjects: the layer beside tracing-opentelemetry's, with the trace
//! columns (`azure_logs_otel`) and with them dropped (`azure_logs_otel_off`). The allocation report
//! is printed first, the criterion groups follow, and a summary with the ratios comes last.
//!
//! Honesty of the layer's figures: events are emitted in chunks of [`chunk`] per thread (well
//! under the 65,536-row queue), and the pipeline is flushed after each chunk outside the timed
//! part, so the timed events are enqueued, not dropped, while the worker drains, gzips and uploads
//! concurrently on the same 2 cores. Drops are counted and printed at the end (expected 0).
//!
//! Before criterion, a paired report measures every subject, and a control that uses no tracing
//! (`cpu_only`), in interleaved rounds from one and from two threads, and prints medians: the
//! layer's time over fmt json's within each round, and each subject's two-thread time over its
//! one-thread time, next to the control's (this VM's own cost of running two threads at once).
//!
//! Criterion's figures are wall-clock. The summary also gives each emitting thread's own CPU time
//! per event (`*_cpu`, from `CLOCK_THREAD_CPUTIME_ID`): on 2 cores the worker and the in-process
//! emulator preempt the emitters, which wall-clock time counts and CPU time does not.
//!
//! Environment: `BENCH_CHUNK=N` changes the chunk; `BENCH_ALLOC_BACKTRACE=N` prints where the
//! first N steady-state allocations of the layer's events come from; `BENCH_PROFILE_EVENTS=N`
//! only emits N events through the layer and exits (for `valgrind --tool=callgrind
//! --toggle-collect='*common::events*'`); `BENCH_ROUNDS=N` (default 24, 0 skips it) and
//! `BENCH_SUBJECTS=a,b` shape the paired report.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use tracing::Dispatch;
use tracing_azure_logs::AzureLogsGuard;
use tracing_azure_logs::emulator::{Emulator, Fault};

mod common;
use common::{ThreadStat, events};

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
            v.in_span(|| v.events(chunk()));
            v.settle();
        }
        v.in_span(|| {
            eprintln!("== {}: backtraces of the first {n} allocations ==", v.name);
            TRACE.with(|t| t.set(n));
            v.events(chunk());
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
    /// What the second emitting thread uses, when not `dispatch`: a pipeline of its own.
    second: Option<Dispatch>,
    /// A span (of `dispatch`) that every request span is a child of, on every thread.
    server: Option<tracing::Span>,
    /// Events per entry of the request span: the span is entered for this many events, exited,
    /// and entered again, as an async task's span is at every poll. `None`: entered once.
    poll: Option<u64>,
    /// Settles what was emitted (outside the timed part); `None` for variants without a pipeline.
    guard: Option<AzureLogsGuard>,
}

impl Variant {
    /// The dispatch emitting thread `t` uses.
    fn dispatch(&self, t: usize) -> &Dispatch {
        match (t, &self.second) {
            (1, Some(second)) => second,
            _ => &self.dispatch,
        }
    }

    /// Runs `f` in a new request span (under `server`, if any). With `poll`, the span is not
    /// entered here but by [`events`](Self::events), a few events at a time.
    fn in_span<R>(&self, f: impl FnOnce() -> R) -> R {
        if self.poll.is_none() {
            return common::in_request_span_under(self.server.as_ref(), f);
        }
        let span = common::request_span(self.server.as_ref());
        POLLED.with(|p| *p.borrow_mut() = Some(span));
        let out = f();
        POLLED.with(|p| p.borrow_mut().take());
        out
    }

    /// Emits `n` of the events (inside [`in_span`](Self::in_span)).
    fn events(&self, n: u64) {
        let Some(every) = self.poll else {
            return events(n);
        };
        POLLED.with(|p| {
            let span = p.borrow();
            let span = span.as_ref().expect("inside in_span");
            let mut left = n;
            while left > 0 {
                let k = left.min(every);
                span.in_scope(|| events(k));
                left -= k;
            }
        });
    }

    fn settle(&self) {
        if let Some(guard) = &self.guard {
            common::flush(guard);
        }
    }
}

thread_local! {
    /// The request span of a `poll` variant, entered by [`Variant::events`].
    static POLLED: std::cell::RefCell<Option<tracing::Span>> = const { std::cell::RefCell::new(None) };
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
fn timed_events(cpu_group: &'static str, v: &Variant, n: u64) -> Duration {
    v.in_span(|| {
        let cpu = common::this_thread_cpu_ns();
        let start = Instant::now();
        v.events(n);
        let wall = start.elapsed();
        let cpu = Duration::from_nanos(common::this_thread_cpu_ns() - cpu);
        record(cpu_group, v.name, cpu, n);
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
            elapsed += timed_events("one_thread_cpu", v, n);
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
                        tracing::dispatcher::with_default(v.dispatch(t), || {
                            let mut elapsed = Duration::ZERO;
                            let mut left = iters;
                            for _ in 0..chunks {
                                let n = left.min(chunk());
                                barrier.wait();
                                elapsed += timed_events("two_threads_cpu", v, n);
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
        tracing::dispatcher::with_default(v.dispatch(t), || {
            let mut counted = (0u64, 0u64);
            for (total, count_it) in [(warm, false), (measured, true)] {
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk());
                    barrier.wait();
                    v.in_span(|| {
                        let before = thread_allocs();
                        v.events(n);
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
            v.in_span(|| ());
        }
        let before = thread_allocs().0;
        for _ in 0..spans {
            v.in_span(|| ());
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
    tracing::dispatcher::with_default(&v.dispatch, || v.in_span(|| v.events(n)));
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
// Two threads against one, in interleaved rounds, with a control that uses no tracing at all.

/// Work of about the same size as an event that touches nothing but its own thread's buffer: the
/// machine's own cost of running two threads at once (shared caches, memory, the hypervisor).
#[inline(never)]
fn cpu_only(n: u64, buf: &mut Vec<u8>) {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..n {
        buf.clear();
        for _ in 0..24 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(b",\"field\":");
            buf.extend_from_slice(itoa::Buffer::new().format(x % 1_000_000_000).as_bytes());
        }
        std::hint::black_box(&buf);
    }
}

/// Per-event CPU time of each emitting thread, in rounds that take turns between the subjects
/// (the variants and the [`cpu_only`] control) and between one and two threads, a few chunks
/// each: this VM's speed drifts by tens of percent over seconds, and measuring the subjects one
/// after another for seconds each (as criterion does) puts that drift into their ratios. Each
/// turn first emits one untimed chunk (the subject warms up again after the others ran). The
/// same two threads run every round (a fresh thread would start with a cold allocator arena,
/// which costs fmt json, not this layer), and the first round is a warm-up. Prints medians over
/// `BENCH_ROUNDS` rounds (default 24; `BENCH_SUBJECTS=a,b` picks subjects) of each subject's
/// time, of the layer's time over fmt json's (paired within a round), and of two threads' time
/// over one thread's.
fn paired_report(variants: &[Variant]) {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    if rounds == 0 {
        return;
    }
    let chunks = 2;
    let mut names: Vec<&str> = variants.iter().map(|v| v.name).collect();
    names.push("cpu_only");
    // The steps, in order: (round, subject, threads); round 0 is the warm-up.
    // `BENCH_SUBJECTS=a,b`: only these subjects (by name).
    let only = std::env::var("BENCH_SUBJECTS").unwrap_or_default();
    let included = |i: usize| only.is_empty() || only.split(',').any(|n| n == names[i]);
    let mut plan = Vec::new();
    for round in 0..=rounds {
        let order: [usize; 2] = if round % 2 == 0 { [1, 2] } else { [2, 1] };
        for threads in order {
            for k in 0..names.len() {
                let subject = (k + round) % names.len();
                if included(subject) {
                    plan.push((round, subject, threads));
                }
            }
        }
    }
    let barrier = Barrier::new(2);
    // Each step's CPU time per event, per thread that took part.
    let per_thread: Vec<Vec<Option<f64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (barrier, plan) = (&barrier, &plan);
                s.spawn(move || {
                    let mut out = Vec::with_capacity(plan.len());
                    for &(_, subject, threads) in plan {
                        let variant = variants.get(subject);
                        let mut cpu = 0;
                        // Chunk 0 warms the subject up again after the others ran; untimed.
                        for c in 0..=chunks {
                            barrier.wait();
                            if t < threads {
                                let n = chunk();
                                let timed = || {
                                    let start = common::this_thread_cpu_ns();
                                    match variant {
                                        Some(v) => v.events(n),
                                        None => CONTROL_BUF.with(|b| cpu_only(n, &mut b.borrow_mut())),
                                    }
                                    common::this_thread_cpu_ns() - start
                                };
                                let took = match variant {
                                    Some(v) => tracing::dispatcher::with_default(v.dispatch(t), || v.in_span(timed)),
                                    None => timed(),
                                };
                                if c > 0 {
                                    cpu += took;
                                }
                            }
                            barrier.wait();
                            if let (0, Some(v)) = (t, variant) {
                                v.settle();
                            }
                        }
                        out.push((t < threads).then(|| cpu as f64 / (chunks * chunk()) as f64));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("paired thread")).collect()
    });
    // samples[threads - 1][subject][round - 1]: the mean over the threads that took part.
    let mut samples = vec![vec![Vec::new(); names.len()]; 2];
    for (step, &(round, subject, threads)) in plan.iter().enumerate() {
        if round == 0 {
            continue;
        }
        let times: Vec<f64> = per_thread.iter().filter_map(|p| p[step]).collect();
        samples[threads - 1][subject].push(times.iter().sum::<f64>() / times.len() as f64);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let ratios = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<f64>>();
    println!(
        "== paired: each emitting thread's CPU time per event, medians of {rounds} interleaved rounds (min-max) =="
    );
    for (i, name) in names.iter().enumerate() {
        if samples[0][i].is_empty() {
            continue;
        }
        let one = median(samples[0][i].clone());
        let two = median(samples[1][i].clone());
        let scaling = median(ratios(&samples[1][i], &samples[0][i]));
        println!(
            "paired {name}: 1 thread {:.0} ns ({:.0}-{:.0}); 2 threads {:.0} ns ({:.0}-{:.0}); 2 threads / 1 thread {:.3} ({:.3}-{:.3})",
            one.0, one.1, one.2, two.0, two.1, two.2, scaling.0, scaling.1, scaling.2
        );
    }
    let measured = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .filter(|&i| !samples[0][i].is_empty())
    };
    if let (Some(layer), Some(fmt)) = (measured("azure_logs"), measured("fmt_json_non_blocking")) {
        for threads in [1, 2] {
            let (m, lo, hi) = median(ratios(&samples[threads - 1][layer], &samples[threads - 1][fmt]));
            println!(
                "paired azure_logs/fmt_json, {threads} thread(s): median {m:.3} (1/{:.1}; rounds 1/{:.1}-1/{:.1})",
                1.0 / m,
                1.0 / hi,
                1.0 / lo
            );
        }
    }
}

thread_local! {
    static CONTROL_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

// ---------------------------------------------------------------------------------------------

/// The layer while the service does not answer and the queue is full: every event is encoded,
/// then dropped and counted. The emulator holds each request for an hour; the queue holds 1,024
/// rows (the worker's in-flight and waiting batches take about 20,000 more before it stops
/// reading). The guard's flush at the end gives up after 100 ms.
fn full_queue_pipeline(stalled: &Emulator) -> (Dispatch, AzureLogsGuard) {
    stalled.inject(Fault::Latency(Duration::from_secs(3600)), usize::MAX);
    common::layer_dispatch(
        common::builder(stalled)
            .queue_capacity(1_024)
            .flush_timeout(Duration::from_millis(100))
            .on_error(|_| {}),
    )
}

/// A pipeline of its own whose request spans are children of a `server` span, entered `poll`
/// events at a time (or once).
fn nested_variant(emu: &Emulator, name: &'static str, poll: Option<u64>) -> Variant {
    let (dispatch, guard) = common::layer_dispatch(common::builder(emu));
    let server = tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("server", region = "westeurope", version = "1.4.2")
    });
    Variant {
        name,
        dispatch,
        second: None,
        server: Some(server),
        poll,
        guard: Some(guard),
    }
}

/// This layer and tracing-opentelemetry's (spans only, into an SDK tracer without exporter),
/// with the trace columns or without them.
#[cfg(feature = "opentelemetry")]
fn traced_variant(emu: &Emulator, name: &'static str, ids: bool) -> Variant {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_azure_logs::Column;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    let builder = common::builder(emu);
    let builder = if ids {
        builder
    } else {
        builder.drop_column(Column::TraceId).drop_column(Column::SpanId)
    };
    let (layer, guard) = builder.build().expect("pipeline builds");
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("bench"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.is_span()));
    Variant {
        name,
        dispatch: Dispatch::new(tracing_subscriber::registry().with(layer).with(otel)),
        second: None,
        server: None,
        poll: None,
        guard: Some(guard),
    }
}

fn main() {
    let emu = common::emulator();
    let (layer, guard) = common::layer_dispatch(common::builder(&emu));
    let (fmt, _fmt_guard) = common::fmt_json_dispatch();
    let mut variants = vec![
        Variant {
            name: "azure_logs",
            dispatch: layer,
            second: None,
            server: None,
            poll: None,
            guard: Some(guard),
        },
        Variant {
            name: "fmt_json_non_blocking",
            dispatch: fmt,
            second: None,
            server: None,
            poll: None,
            guard: None,
        },
        Variant {
            name: "registry",
            dispatch: common::registry_dispatch(),
            second: None,
            server: None,
            poll: None,
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
    // Before the second pipeline starts: it tells the worker thread by its name.
    wakeup_report(&variants[0], 50_000);
    // Request spans under a server span that both threads share: each event's scope has two
    // spans, and the outer one is the same on every thread. Then the same, with the request span
    // entered for 4 events at a time, as a task's span is at each poll.
    variants.push(nested_variant(&emu, "azure_logs_nested", None));
    variants.push(nested_variant(&emu, "azure_logs_polled", Some(4)));
    // Feature `opentelemetry`: the layer beside tracing-opentelemetry's (which only sees spans,
    // so its cost per event is none), with the trace columns and with them dropped: the
    // difference is what the columns cost an event.
    #[cfg(feature = "opentelemetry")]
    {
        variants.push(traced_variant(&emu, "azure_logs_otel", true));
        variants.push(traced_variant(&emu, "azure_logs_otel_off", false));
    }
    let stalled = common::emulator();
    let (full, full_guard) = full_queue_pipeline(&stalled);
    let (full_a, full_guard_a) = full_queue_pipeline(&stalled);
    let (full_b, full_guard_b) = full_queue_pipeline(&stalled);
    variants.push(Variant {
        name: "azure_logs_full_queue",
        dispatch: full,
        second: None,
        server: None,
        poll: None,
        // Never settles: nothing is sent.
        guard: None,
    });
    // The same, but each emitting thread has a pipeline (subscriber, queue, worker) of its own:
    // the two threads share no data at all, so what two threads cost over one here is the
    // machine's, not the hot path's.
    variants.push(Variant {
        name: "azure_logs_full_queue_apart",
        dispatch: full_a,
        second: Some(full_b),
        server: None,
        poll: None,
        guard: None,
    });
    println!("== allocations on the emitting thread, steady state ==");
    alloc_report(&variants);
    paired_report(&variants);

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
    let mut sent = 0;
    for v in &variants {
        let Some(guard) = v.guard.as_ref() else { continue };
        common::flush(guard);
        let s = guard.stats();
        sent += s.sent;
        println!(
            "{} pipeline: enqueued {} dropped {} sent {} failed {} uploads {}",
            v.name, s.enqueued, s.dropped, s.sent, s.failed, s.uploads
        );
    }
    println!(
        "emulator rows {} (every shipping pipeline; sent {sent})",
        emu.row_count(common::STREAM)
    );
    let s = full_guard.stats();
    println!(
        "azure_logs_full_queue pipeline: enqueued {} dropped {} sent {} (emitted {})",
        s.enqueued,
        s.dropped,
        s.sent,
        s.enqueued + s.dropped
    );
    drop((full_guard, full_guard_a, full_guard_b));
    stalled.shutdown();
}
