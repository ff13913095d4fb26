//! The tracing layer and its pipeline against the emulator: what the emulator received decides.
#![cfg(feature = "emulator")]

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tracing::Dispatch;
use tracing_azure_logs::client::FailedBatch;
use tracing_azure_logs::emulator::{Column as Col, Emulator, Fault};
use tracing_azure_logs::{AzureLogs, AzureLogsBuilder, Column, FullPolicy, RetryPolicy};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-pipeline";
const STREAM: &str = "Custom-AppLogs_CL";
const WAIT: Duration = Duration::from_secs(30);

/// Polls `condition` until it holds or [`WAIT`] passes.
fn wait_until(condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    condition()
}

fn pipeline(emu: &Emulator) -> AzureLogsBuilder {
    emu.logs_builder(RULE, STREAM)
        .max_delay(Duration::from_millis(50))
        .retry_policy(
            RetryPolicy::default()
                .with_base_delay(Duration::from_millis(20))
                .with_max_delay(Duration::from_millis(100))
                .with_deadline(Duration::from_secs(20)),
        )
}

fn dispatch(layer: tracing_azure_logs::AzureLogsLayer) -> Dispatch {
    Dispatch::new(tracing_subscriber::registry().with(layer))
}

/// An emulator whose stream is declared from the row shape's own stream declaration, with strict
/// type checks: rows that do not match what the crate prints for the DCR are refused.
fn declared(columns: &tracing_azure_logs::Columns) -> Emulator {
    let columns = Col::from_stream_declaration(&columns.stream_declaration()).unwrap();
    Emulator::builder()
        .declare_stream(RULE, STREAM, columns)
        .strict_schema(true)
        .start()
        .unwrap()
}

#[test]
fn rows_have_every_default_column_with_json_types() {
    let _limit = common::time_limit();
    let shape = |b: AzureLogsBuilder| b.static_column("Service", "checkout");
    let emu = declared(shape(AzureLogs::builder()).columns());
    let (layer, guard) = shape(pipeline(&emu)).build().unwrap();
    let before = SystemTime::now();
    let mut line = 0;
    tracing::dispatcher::with_default(&dispatch(layer), || {
        let span = tracing::info_span!(
            "request",
            method = "GET",
            request_id = 7u64,
            user = tracing::field::Empty
        );
        let _entered = span.enter();
        span.record("user", "ada");
        let inner = tracing::info_span!("db", table = "items");
        let _inner = inner.enter();
        line = line!() + 1;
        tracing::info!(
            target: "app::http",
            status = 200u16,
            path = "/api/v1/items/123",
            latency_ms = 12.5f64,
            user_id = 42u64,
            negative = -3i64,
            ok = true,
            nan = f64::NAN,
            quoted = "say \"hi\"\n",
            debug = ?vec![1, 2],
            "request handled"
        );
    });
    let after = SystemTime::now();
    let report = guard.flush_within(WAIT);
    assert!(report.completed);
    assert_eq!(
        (report.stats.sent, report.stats.dropped, report.stats.failed),
        (1, 0, 0)
    );

    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    let time = row["TimeGenerated"].as_str().unwrap();
    assert_eq!(time.len(), "2026-11-22T10:00:00.123456Z".len(), "{time}");
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    // The event's own time (to the microsecond, which truncation may take below `before`).
    let at = SystemTime::from(azure_core::time::parse_rfc3339(time).unwrap());
    let micro = Duration::from_micros(1);
    assert!(
        before - micro <= at && at <= after,
        "{time} not between {before:?} and {after:?}"
    );
    assert_eq!(row["Level"], "INFO");
    assert_eq!(row["Target"], "app::http");
    assert_eq!(row["Message"], "request handled");
    assert_eq!(
        row["Properties"],
        json!({
            "status": 200, "path": "/api/v1/items/123", "latency_ms": 12.5, "user_id": 42, "negative": -3,
            "ok": true, "nan": null, "quoted": "say \"hi\"\n", "debug": "[1, 2]"
        })
    );
    assert_eq!(
        row["Spans"],
        json!([
            {"name": "request", "fields": {"method": "GET", "request_id": 7, "user": "ada"}},
            {"name": "db", "fields": {"table": "items"}}
        ])
    );
    assert!(row["File"].as_str().unwrap().ends_with("pipeline.rs"));
    assert_eq!(row["Line"], line);
    // The test harness names each test's thread after the test.
    assert_eq!(row["Thread"], std::thread::current().name().unwrap());
    assert_eq!(row["Service"], "checkout");
    let host = std::env::var("HOSTNAME")
        .or_else(|_| std::fs::read_to_string("/proc/sys/kernel/hostname"))
        .unwrap_or_default();
    assert_eq!(row["Computer"], host.trim());
    assert!(
        emu.requests().iter().all(|r| r.status == Some(204)),
        "strict schema accepted every row"
    );
}

#[test]
fn renamed_dropped_and_static_columns() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu)
        .rename_column(Column::Level, "Severity")
        .rename_column(Column::Message, "Text")
        .drop_column(Column::Spans)
        .drop_column(Column::File)
        .drop_column(Column::Line)
        .drop_column(Column::Thread)
        .drop_static_column("Computer")
        .static_column("Env", "test")
        .static_column("Shard", 3)
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || {
        let _s = tracing::info_span!("ignored", x = 1).entered();
        tracing::warn!(code = 5, "careful");
    });
    assert!(guard.flush_within(WAIT).completed);
    assert_eq!(emu.row_count(STREAM), 1);
    let row = emu.rows(STREAM).pop().unwrap();
    let mut keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "Env",
            "Properties",
            "Severity",
            "Shard",
            "Target",
            "Text",
            "TimeGenerated"
        ]
    );
    assert_eq!(row["Severity"], "WARN");
    assert_eq!(row["Text"], "careful");
    assert_eq!(row["Shard"], 3);
    assert_eq!(row["Env"], "test");
    assert_eq!(row["Properties"], json!({"code": 5}));
}

#[test]
fn long_values_are_truncated_at_a_char_boundary() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let long = "ü".repeat(50_000); // 100,000 bytes
    tracing::dispatcher::with_default(&dispatch(layer), || {
        tracing::info!(blob = long.as_str(), "{}", long);
    });
    assert!(guard.flush_within(WAIT).completed);
    assert_eq!(emu.row_count(STREAM), 1);
    let row = emu.rows(STREAM).pop().unwrap();
    for value in [&row["Properties"]["blob"], &row["Message"]] {
        let s = value.as_str().unwrap();
        assert!(s.len() <= 65_536 && s.len() > 65_500, "{}", s.len());
        assert!(s.ends_with("…[truncated]"));
    }
}

#[test]
fn four_threads_200k_events_arrive_exactly_once() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu)
        .full_policy(FullPolicy::Block(Duration::from_secs(10)))
        .build()
        .unwrap();
    let dispatch = dispatch(layer);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let dispatch = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for i in 0..50_000u64 {
                        tracing::info!(t, i, "event");
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let report = guard.flush_within(Duration::from_secs(60));
    assert!(report.completed);
    let stats = report.stats;
    assert_eq!(
        (stats.enqueued, stats.sent, stats.dropped, stats.failed),
        (200_000, 200_000, 0, 0)
    );
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 200_000);
    let unique: HashSet<(u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["Properties"]["t"].as_u64().unwrap(),
                r["Properties"]["i"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(unique.len(), 200_000, "no duplicates, none missing");
    assert!(
        emu.requests()
            .iter()
            .all(|r| r.wire_bytes <= 1_048_576 && r.status == Some(204))
    );
}

#[test]
fn tiny_queue_and_slow_service_account_for_every_row() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Latency(Duration::from_millis(100)), 1_000);
    let failures: Arc<Mutex<Vec<FailedBatch>>> = Arc::default();
    let sink = failures.clone();
    let (layer, guard) = pipeline(&emu)
        .queue_capacity(16)
        .max_concurrency(1)
        .max_uncompressed_batch(2_000)
        .diagnostic_interval(Duration::from_millis(50))
        .on_error(move |f| sink.lock().unwrap().push(f))
        .build()
        .unwrap();
    let emitted = 3_000u64;
    tracing::dispatcher::with_default(&dispatch(layer), || {
        for i in 0..emitted {
            tracing::info!(i, "burst");
        }
    });
    // Drops happened during the burst; the diagnostic row reports them once the worker sees it.
    let report = guard.flush_within(WAIT);
    assert!(report.completed);
    let stats = guard.shutdown().stats;
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.sent + stats.dropped + stats.failed, emitted, "{stats:?}");
    let rows = emu.rows(STREAM);
    let (diagnostics, app): (Vec<&Value>, Vec<&Value>) = rows.iter().partition(|r| r["Target"] == "tracing_azure_logs");
    assert_eq!(app.len() as u64, stats.sent);
    // Only latency is injected: rows arrive (each once), none fails.
    assert!(!app.is_empty());
    let ids: HashSet<u64> = app.iter().map(|r| r["Properties"]["i"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), app.len(), "a row arrived twice");
    assert_eq!(stats.failed, 0, "{stats:?}");
    assert!(!diagnostics.is_empty(), "the diagnostic row arrived");
    assert_eq!(diagnostics.len() as u64, stats.diagnostic_rows);
    let reported: u64 = diagnostics
        .iter()
        .map(|r| r["Properties"]["dropped"].as_u64().unwrap())
        .sum();
    assert!(reported > 0 && reported <= stats.dropped);
    // Each report's total is the sum of the reports so far.
    let mut sum = 0;
    for d in &diagnostics {
        sum += d["Properties"]["dropped"].as_u64().unwrap();
        assert_eq!(d["Properties"]["dropped_total"].as_u64(), Some(sum), "{d}");
    }
    assert_eq!(diagnostics[0]["Level"], "WARN");
    let failed_rows: usize = failures.lock().unwrap().iter().map(FailedBatch::len).sum();
    assert_eq!(failed_rows as u64, stats.failed);
}

#[test]
fn flush_returns_once_rows_are_at_the_emulator_and_drop_delivers_the_rest() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    // Batches never close on age here: only a flush sends them.
    let (layer, guard) = pipeline(&emu).max_delay(Duration::from_secs(3600)).build().unwrap();
    let dispatch = dispatch(layer);
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..10 {
            tracing::info!(i, "before flush");
        }
    });
    assert_eq!(emu.row_count(STREAM), 0);
    let report = guard.flush();
    assert!(report.completed);
    assert_eq!(emu.row_count(STREAM), 10, "flush returned only after the rows arrived");
    assert_eq!(report.stats.sent, 10);

    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..5 {
            tracing::info!(i, "before drop");
        }
    });
    let stats = guard.stats_handle();
    drop(guard);
    assert_eq!(
        emu.row_count(STREAM),
        15,
        "dropping the guard delivered the queued rows"
    );

    // After the guard is gone, events are counted as dropped, not shipped.
    tracing::dispatcher::with_default(&dispatch, || tracing::info!("too late"));
    let after = stats.get();
    assert_eq!((after.sent, after.dropped), (15, 1));
    assert_eq!(emu.row_count(STREAM), 15);
}

#[test]
fn stalled_service_drop_returns_within_the_timeout_and_reports_the_loss() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Latency(Duration::from_secs(60)), 100);
    let failures: Arc<Mutex<Vec<FailedBatch>>> = Arc::default();
    let sink = failures.clone();
    let (layer, guard) = pipeline(&emu)
        .flush_timeout(Duration::from_millis(500))
        .on_error(move |f| sink.lock().unwrap().push(f))
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || {
        for i in 0..10 {
            tracing::info!(i, "stuck");
        }
    });
    assert!(wait_until(|| emu.stats().in_flight >= 1), "an upload is in flight");
    let started = Instant::now();
    let report = guard.shutdown();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(!report.completed);
    assert_eq!((report.stats.sent, report.stats.failed), (0, 10), "{:?}", report.stats);
    let failed: usize = failures.lock().unwrap().iter().map(FailedBatch::len).sum();
    assert_eq!(failed, 10);
    assert!(
        failures
            .lock()
            .unwrap()
            .iter()
            .all(|f| f.reason().to_string().contains("not confirmed")),
        "{:?}",
        failures.lock().unwrap()
    );
}

#[test]
fn composes_with_env_filter_and_per_layer_filters() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info,noisy=off"))
        .with(layer.with_filter(tracing_subscriber::filter::LevelFilter::WARN));
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!("filtered by the layer's own filter");
        tracing::warn!(target: "noisy", "filtered by EnvFilter");
        tracing::warn!("kept");
        tracing::error!("kept too");
    });
    assert!(guard.flush_within(WAIT).completed);
    let messages: Vec<Value> = emu.rows(STREAM).iter().map(|r| r["Message"].clone()).collect();
    assert_eq!(messages, vec![json!("kept"), json!("kept too")]);
}

fn emit_and_drop_guard_in_async_context(emu: &Emulator) {
    let (layer, guard) = pipeline(emu).build().unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || {
        for i in 0..20 {
            tracing::info!(i, "from async");
        }
    });
    drop(guard);
}

#[tokio::test(flavor = "current_thread")]
async fn guard_dropped_inside_a_current_thread_runtime() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emit_and_drop_guard_in_async_context(&emu);
    assert_eq!(emu.row_count(STREAM), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_dropped_inside_a_multi_thread_runtime() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emit_and_drop_guard_in_async_context(&emu);
    assert_eq!(emu.row_count(STREAM), 20);
}

#[test]
fn target_routes_send_events_to_another_stream() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu)
        .route_target("app::audit", "Custom-Audit_CL")
        .build()
        .unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || {
        tracing::info!(target: "app::audit::login", user = "ada", "signed in");
        tracing::info!(target: "app::auditing", "not audit");
        tracing::info!("plain");
    });
    assert!(guard.flush_within(WAIT).completed);
    let audit = emu.rows("Custom-Audit_CL");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["Properties"]["user"], "ada");
    let main: Vec<Value> = emu.rows(STREAM).iter().map(|r| r["Message"].clone()).collect();
    assert_eq!(main, [json!("not audit"), json!("plain")]);
}

#[test]
fn missing_settings_are_named() {
    let err = AzureLogs::builder().rule_id("dcr-1").build().unwrap_err().to_string();
    assert!(
        err.contains("endpoint") && err.contains("stream") && !err.contains("rule_id"),
        "{err}"
    );
}

#[test]
fn one_callsite_on_one_thread_through_two_differently_shaped_pipelines() {
    let _limit = common::time_limit();
    fn emit(n: u32) {
        tracing::info!(n, "same callsite");
    }
    let emu = Emulator::start().unwrap();
    let (first, first_guard) = pipeline(&emu).build().unwrap();
    let (second, second_guard) = emu
        .logs_builder(RULE, "Custom-Second_CL")
        .rename_column(Column::Level, "Severity")
        .drop_column(Column::File)
        .static_column("Pipeline", "second")
        .build()
        .unwrap();
    for round in 0..2 {
        tracing::dispatcher::with_default(&dispatch(first.clone()), || emit(round));
        tracing::dispatcher::with_default(&dispatch(second.clone()), || emit(round));
    }
    assert!(first_guard.flush_within(WAIT).completed && second_guard.flush_within(WAIT).completed);
    let n = |rows: &[Value]| rows.iter().map(|r| r["Properties"]["n"].clone()).collect::<Vec<_>>();
    assert_eq!(n(&emu.rows(STREAM)), [json!(0), json!(1)]);
    assert_eq!(n(&emu.rows("Custom-Second_CL")), [json!(0), json!(1)]);
    for row in emu.rows(STREAM) {
        assert!(
            row.get("Level").is_some() && row.get("File").is_some() && row.get("Pipeline").is_none(),
            "{row}"
        );
    }
    let second_rows = emu.rows("Custom-Second_CL");
    assert_eq!(second_rows.len(), 2);
    for row in second_rows {
        assert!(
            row.get("Severity").is_some() && row.get("Level").is_none() && row.get("File").is_none(),
            "{row}"
        );
        assert_eq!(row["Pipeline"], "second");
    }
}

#[test]
fn frequent_flushes_against_a_stalled_service_keep_the_worker_bounded() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Latency(Duration::from_secs(60)), 1_000);
    let (layer, guard) = pipeline(&emu)
        .queue_capacity(64)
        .max_concurrency(1)
        .max_uncompressed_batch(2_000)
        .flush_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let dispatch = dispatch(layer);
    let mut worst = 0;
    for round in 0..200u64 {
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..50u64 {
                tracing::info!(round, i, "while the service stalls");
            }
        });
        // Flushes cannot complete (the service stalls); each must not add a waiting batch.
        let stats = guard.flush_within(Duration::from_millis(1)).stats;
        worst = worst.max(stats.pending());
    }
    // Queue (64 rows) + per stream one open and one waiting batch + one in flight (~2,000 B each,
    // under 40 rows of ~100 B): well under 250 rows however many flushes were asked for.
    assert!(worst <= 250, "rows held by the pipeline grew to {worst}");
    // Held, not given up on: no row failed, and flushes did not start uploads past the one
    // allowed (it is still stalled).
    let held = guard.stats();
    // More than the queue holds: the worker took rows into batches.
    assert!(worst > 64 && held.failed == 0, "worst {worst}, {held:?}");
    let at_emulator = emu.stats();
    assert!(
        at_emulator.max_in_flight == 1 && at_emulator.requests == 0,
        "one upload started and is still stalled: {at_emulator:?}"
    );
    let stats = guard.shutdown().stats;
    assert_eq!(stats.sent + stats.failed + stats.dropped, 200 * 50, "{stats:?}");
}

#[test]
fn an_event_emitted_while_a_span_records_a_field_does_not_deadlock() {
    let _limit = common::time_limit();
    struct Chatty;
    impl std::fmt::Debug for Chatty {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            tracing::warn!("emitted from Debug while the span records");
            f.write_str("chatty")
        }
    }
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let dispatch = dispatch(layer);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request", detail = tracing::field::Empty);
            let _entered = span.enter();
            span.record("detail", tracing::field::debug(Chatty));
            tracing::info!("after the record");
        });
        let _ = done.send(());
    });
    finished.recv_timeout(WAIT).expect("the thread finished (no deadlock)");
    assert!(guard.flush_within(WAIT).completed);
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["Spans"][0]["fields"]["detail"], "chatty");
}

#[test]
fn duplicate_or_empty_column_names_and_huge_queues_are_refused() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let err = pipeline(&emu)
        .static_column("Level", "x")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"Level\" is used twice"), "{err}");
    let err = pipeline(&emu)
        .rename_column(Column::Message, "Properties")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"Properties\" is used twice"), "{err}");
    let err = pipeline(&emu)
        .rename_column(Column::Thread, "")
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    let err = pipeline(&emu)
        .queue_capacity(usize::MAX)
        .build()
        .unwrap_err()
        .to_string();
    assert!(err.contains("queue_max_bytes"), "{err}");
    assert!(emu.requests().is_empty());
}

#[test]
fn deeply_nested_spans_keep_the_innermost_64() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || {
        let spans: Vec<_> = (0..100u32)
            .map(|depth| tracing::info_span!("level", depth).entered())
            .collect();
        tracing::info!("deep");
        drop(spans);
    });
    assert!(guard.flush_within(WAIT).completed);
    assert_eq!(emu.row_count(STREAM), 1);
    let row = emu.rows(STREAM).pop().unwrap();
    let spans = row["Spans"].as_array().unwrap();
    assert_eq!(spans.len(), 64);
    assert_eq!(spans[0]["fields"]["depth"], 36, "root side dropped");
    assert_eq!(spans[63]["fields"]["depth"], 99, "innermost last");
}

/// Each thread writes into its own page of the queue: rows of a thread that logged and now sits
/// idle (its page still open) and of a thread that has exited must still be read and flushed.
#[test]
fn flush_delivers_rows_of_idle_and_exited_threads() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).max_delay(Duration::from_secs(3600)).build().unwrap();
    let dispatch = dispatch(layer);
    let logged = Arc::new(std::sync::Barrier::new(2));
    let release = Arc::new(std::sync::Barrier::new(2));
    let idle = {
        let (dispatch, logged, release) = (dispatch.clone(), logged.clone(), release.clone());
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || {
                for i in 0..3 {
                    tracing::info!(i, "from the idle thread");
                }
            });
            logged.wait();
            // Alive and silent while the main thread flushes.
            release.wait();
        })
    };
    let exited = {
        let dispatch = dispatch.clone();
        std::thread::spawn(move || {
            tracing::dispatcher::with_default(&dispatch, || tracing::info!("from the exited thread"));
        })
    };
    exited.join().unwrap();
    logged.wait();

    let report = guard.flush_within(WAIT);
    release.wait();
    idle.join().unwrap();
    assert!(report.completed);
    let messages: HashSet<String> = emu
        .rows(STREAM)
        .iter()
        .map(|r| format!("{}:{}", r["Message"].as_str().unwrap(), r["Properties"]["i"]))
        .collect();
    let expected: HashSet<String> = [
        "from the idle thread:0",
        "from the idle thread:1",
        "from the idle thread:2",
        "from the exited thread:null",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(messages, expected);
    assert_eq!(emu.row_count(STREAM), 4, "a row arrived twice");
    assert_eq!(report.stats.sent, 4);
}

#[test]
fn threads_that_log_once_and_idle_do_not_fill_the_queue() {
    let _limit = common::time_limit();
    // With the default queue (65,536 rows), each open page is lent 256 rows, so 200 threads that
    // logged once and sit idle would hold 51,000 unused rows, and a 20,000-row burst would find
    // no room, unless the worker takes their pages back. Default policy: such rows are dropped.
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let dispatch = dispatch(layer);
    let logged = Arc::new(std::sync::Barrier::new(201));
    let release = Arc::new(std::sync::Barrier::new(201));
    let idle: Vec<_> = (0..200u64)
        .map(|t| {
            let (dispatch, logged, release) = (dispatch.clone(), logged.clone(), release.clone());
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || tracing::info!(t, "once"));
                logged.wait();
                release.wait();
            })
        })
        .collect();
    logged.wait();
    // Every row read and every idle page taken back: the whole capacity is free again.
    assert!(
        wait_until(|| guard.stats().queue_room == 65_536),
        "idle threads hold {} rows",
        65_536 - guard.stats().queue_room
    );
    // A burst that needs room the idle threads' pages held: nothing may be dropped.
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..20_000u64 {
            tracing::info!(i, "busy");
        }
    });
    let report = guard.flush_within(WAIT);
    release.wait();
    for t in idle {
        t.join().unwrap();
    }
    assert!(report.completed);
    assert_eq!((report.stats.sent, report.stats.dropped), (20_200, 0));
    let rows = emu.rows(STREAM);
    assert_eq!(rows.iter().filter(|r| r["Message"] == "once").count(), 200);
    assert_eq!(rows.iter().filter(|r| r["Message"] == "busy").count(), 20_000);
}

#[test]
fn flush_under_sustained_overload_returns_once_its_rows_are_settled() {
    let _limit = common::time_limit();
    // Uploads take 30 ms each, one at a time, ~10 rows per batch: rows keep coming far faster
    // than they leave, for as long as the flush takes. The flush must not wait for that to end.
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Latency(Duration::from_millis(30)), 1_000_000);
    let (layer, guard) = pipeline(&emu)
        .queue_capacity(256)
        .max_concurrency(1)
        .max_uncompressed_batch(2_000)
        .build()
        .unwrap();
    let dispatch = dispatch(layer);
    let flushed = std::sync::atomic::AtomicBool::new(false);
    let (before, report) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            tracing::dispatcher::with_default(&dispatch, || {
                let started = Instant::now();
                let mut i = 0u64;
                while !flushed.load(std::sync::atomic::Ordering::SeqCst) && started.elapsed() < 2 * WAIT {
                    tracing::info!(i, "steady load");
                    i += 1;
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
        });
        // Other threads' flushes, with a short timeout, keep coming meanwhile.
        let other = s.spawn(|| {
            while !flushed.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = guard.flush_within(Duration::from_millis(1));
            }
        });
        // Overloaded: rows are being dropped, and the table says so while it lasts.
        assert!(wait_until(|| guard.stats().dropped > 0));
        assert!(
            wait_until(|| guard.stats().diagnostic_rows > 0),
            "no drop report reached the table"
        );
        let before = guard.stats();
        let report = guard.flush_within(WAIT);
        // At the emulator when the flush returned: at least every row enqueued before it.
        let arrived = emu.row_count(STREAM) as u64;
        assert!(arrived >= before.enqueued, "{arrived} rows at the emulator, {before:?}");
        flushed.store(true, std::sync::atomic::Ordering::SeqCst);
        load.join().unwrap();
        other.join().unwrap();
        (before, report)
    });
    assert!(report.completed, "the flush waited for the overload to end: {report:?}");
    assert_eq!(report.stats.failed, 0, "only latency is injected");
    let reports = emu
        .rows(STREAM)
        .iter()
        .filter(|r| r["Target"] == "tracing_azure_logs")
        .count() as u64;
    assert!(reports >= before.diagnostic_rows && reports > 0);
}

/// The `Spans` column of each row the emulator received, in the order of the rows' `seq` field.
fn spans_by_seq(emu: &Emulator) -> Vec<Value> {
    let mut rows = emu.rows(STREAM);
    rows.sort_by_key(|r| r["Properties"]["seq"].as_u64());
    rows.iter().map(|r| r["Spans"].clone()).collect()
}

/// `(seq, span names root first)` of each row the emulator received, sorted.
fn span_names_by_seq(emu: &Emulator) -> Vec<(u64, Vec<String>)> {
    let mut rows: Vec<(u64, Vec<String>)> = emu
        .rows(STREAM)
        .iter()
        .map(|row| {
            let names = row["Spans"].as_array().unwrap().iter();
            let names = names.map(|s| s["name"].as_str().unwrap().to_owned()).collect();
            (row["Properties"]["seq"].as_u64().unwrap(), names)
        })
        .collect();
    rows.sort();
    rows
}

/// The spans of each event are those the registry itself names for it (`Context::event_span`
/// and its scope, read by a reference layer in the same subscriber under the same per-layer
/// filter), across the cases the layer's own span stack must get right: nesting, a span entered
/// again while inside another, exits out of order, a span its filter hides, explicit and no
/// parents, two threads, and a clone of the layer in a second subscriber whose span ids repeat
/// the first's.
#[test]
fn spans_of_each_event_are_what_the_registry_says() {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;

    type Seen = Arc<Mutex<Vec<(u64, Vec<String>)>>>;
    struct Reference(Seen);
    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Reference {
        fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
            struct Seq(u64);
            impl tracing::field::Visit for Seq {
                fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                    if field.name() == "seq" {
                        self.0 = value;
                    }
                }
                fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
                    self.record_u64(field, value as u64);
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            let mut seq = Seq(0);
            event.record(&mut seq);
            let names = ctx
                .event_scope(event)
                .map(|scope| scope.from_root().map(|s| s.name().to_owned()).collect())
                .unwrap_or_default();
            self.0.lock().unwrap().push((seq.0, names));
        }
    }
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let seen: Seen = Arc::default();
    let hides = || filter_fn(|meta| meta.name() != "hidden");
    let subscriber = |layer: tracing_azure_logs::AzureLogsLayer| {
        Dispatch::new(
            tracing_subscriber::registry()
                .with(Reference(seen.clone()).with_filter(hides()))
                .with(layer.with_filter(hides())),
        )
    };
    let (first, second) = (subscriber(layer.clone()), subscriber(layer));
    let mut seq = 0u64;
    let mut event = || {
        seq += 1;
        tracing::info!(seq, "event");
    };
    tracing::dispatcher::with_default(&first, || {
        event();
        let a = tracing::info_span!("a");
        let apart = tracing::info_span!("apart");
        let b;
        {
            let entered_a = a.enter();
            event();
            b = tracing::info_span!("b");
            let hidden = tracing::info_span!(parent: &b, "hidden");
            let entered_b = b.enter();
            event();
            {
                let _again = a.enter();
                event();
            }
            event();
            {
                let _hidden = hidden.enter();
                event();
            }
            drop(entered_a);
            event();
            tracing::info!(parent: &apart, seq = 100, "explicit parent");
            tracing::info!(parent: None, seq = 101, "no parent");
            // The second subscriber's spans get the ids the first's got (`a`, `apart`, `b` and
            // `hidden`, on this thread); these are not entered.
            tracing::dispatcher::with_default(&second, || {
                let _unentered: Vec<_> = (0..4).map(|_| tracing::info_span!("other_subscriber")).collect();
                tracing::info!(seq = 102, "in the second subscriber");
                let _inside = tracing::info_span!("second_entered").entered();
                tracing::info!(seq = 103, "in a span of the second subscriber");
            });
            event();
            drop(entered_b);
            event();
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                tracing::dispatcher::with_default(&first, || {
                    tracing::info!(seq = 200, "another thread, no span");
                    let _b = b.enter();
                    tracing::info!(seq = 201, "another thread, in b");
                })
            });
        });
        event();
        // Last, since it leaves a dead span on top of this thread's stacks (the registry's too):
        // a span whose guard was leaked, then closed. Neither stack falls back to `a`.
        let _a = a.enter();
        let leaked = tracing::info_span!("leaked");
        std::mem::forget(leaked.enter());
        event();
        drop(leaked);
        event();
    });
    assert!(guard.flush_within(WAIT).completed);

    let mut expected = seen.lock().unwrap().clone();
    expected.sort();
    assert_eq!(span_names_by_seq(&emu), expected);
    // The cases were the intended ones (the registry's view of them, spelled out).
    let names = |seq: u64| expected.iter().find(|(s, _)| *s == seq).unwrap().1.join(">");
    assert_eq!(
        (1..=8).map(names).collect::<Vec<_>>(),
        ["", "a", "a>b", "a>b", "a>b", "a>b", "a>b", "a>b"]
    );
    assert_eq!([9, 10, 11, 12].map(names), ["", "", "a>leaked", ""]);
    assert_eq!(
        [100, 101, 102, 103, 200, 201].map(names),
        ["apart", "", "", "second_entered", "", "a>b"]
    );
}

/// A field recorded on a span shows in the next event of every thread inside it: the leaf's,
/// recorded on the event's own thread, and a shared parent's, recorded on another thread while
/// the event's thread stays inside the span (its scope is cached between events).
#[test]
fn recorded_span_fields_show_in_the_next_event_on_every_thread() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let dispatch = dispatch(layer);
    let server = tracing::dispatcher::with_default(&dispatch, || tracing::info_span!("server", phase = "starting"));
    let (recorded_tx, recorded) = std::sync::mpsc::channel::<()>();
    let (emitted_tx, emitted) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let (dispatch, server) = (&dispatch, &server);
        s.spawn(move || {
            tracing::dispatcher::with_default(dispatch, || {
                let request = tracing::info_span!(parent: server, "request", user = tracing::field::Empty);
                let _entered = request.enter();
                tracing::info!(seq = 1u64, "before any record");
                request.record("user", "ada");
                tracing::info!(seq = 2u64, "after the leaf's record");
                emitted_tx.send(()).unwrap();
                recorded.recv_timeout(WAIT).unwrap();
                tracing::info!(seq = 3u64, "after the parent's record on another thread");
            });
        });
        emitted.recv_timeout(WAIT).unwrap();
        server.record("phase", "serving");
        recorded_tx.send(()).unwrap();
    });
    assert!(guard.flush_within(WAIT).completed);
    let spans = spans_by_seq(&emu);
    let scope = |phase: &str, user: Option<&str>| {
        let request = match user {
            Some(user) => json!({"name": "request", "fields": {"user": user}}),
            None => json!({"name": "request", "fields": {}}),
        };
        json!([{"name": "server", "fields": {"phase": phase}}, request])
    };
    assert_eq!(
        spans,
        [
            scope("starting", None),
            scope("starting", Some("ada")),
            scope("serving", Some("ada"))
        ]
    );
}

/// A layer swapped in by `reload` (which does not call `on_layer`) still names each event's
/// spans as the registry does, spans entered before the swap included.
#[test]
fn a_reloaded_layer_names_the_spans_entered_before_it() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    let replacement = layer.clone();
    let (reloadable, handle) = tracing_subscriber::reload::Layer::new(layer);
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(reloadable));
    tracing::dispatcher::with_default(&dispatch, || {
        let server = tracing::info_span!("server").entered();
        tracing::info!(seq = 1u64, "before the reload");
        handle.reload(replacement).unwrap();
        tracing::info!(seq = 2u64, "after the reload");
        let request = tracing::info_span!("request").entered();
        tracing::info!(seq = 3u64, "in a span entered after the reload");
        drop(request);
        drop(server);
        tracing::info!(seq = 4u64, "outside");
    });
    assert!(guard.flush_within(WAIT).completed);
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        span_names_by_seq(&emu),
        [
            (1, names(&["server"])),
            (2, names(&["server"])),
            (3, names(&["server", "request"])),
            (4, names(&[]))
        ]
    );
}

/// Two pipelines' layers in one registry (two tables, say): creating a span does not panic, and
/// both tables get each event with its spans.
#[test]
fn two_pipelines_in_one_registry_both_get_the_spans() {
    let _limit = common::time_limit();
    let (first, second) = (Emulator::start().unwrap(), Emulator::start().unwrap());
    let (layer_a, guard_a) = pipeline(&first).build().unwrap();
    let (layer_b, guard_b) = pipeline(&second).build().unwrap();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer_a).with(layer_b));
    tracing::dispatcher::with_default(&dispatch, || {
        let request = tracing::info_span!("request", user = tracing::field::Empty).entered();
        request.record("user", "ada");
        tracing::info!("in both tables");
    });
    assert!(guard_a.flush_within(WAIT).completed && guard_b.flush_within(WAIT).completed);
    for emu in [&first, &second] {
        let rows = emu.rows(STREAM);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0]["Spans"],
            json!([{"name": "request", "fields": {"user": "ada"}}])
        );
    }
}

/// A span entered again (as an async task's span is at every poll) shows what was recorded on it
/// while it was exited, and a new span in a closed span's slot shows its own fields, not the
/// closed one's (exited spans' encoded scopes are kept for their next enter).
#[test]
fn spans_entered_again_or_reusing_an_id_show_their_current_fields() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || {
        let task = tracing::info_span!("task", step = 1u64);
        task.in_scope(|| tracing::info!(seq = 1u64, "first poll"));
        task.in_scope(|| tracing::info!(seq = 2u64, "second poll"));
        task.record("step", 2u64);
        task.in_scope(|| tracing::info!(seq = 3u64, "after a record between polls"));
        drop(task);
        let next = tracing::info_span!("next_task", step = 9u64);
        next.in_scope(|| tracing::info!(seq = 4u64, "a new span in the closed one's slot"));
    });
    assert!(guard.flush_within(WAIT).completed);
    let spans = spans_by_seq(&emu);
    let span = |name: &str, step: u64| json!([{"name": name, "fields": {"step": step}}]);
    assert_eq!(
        spans,
        [span("task", 1), span("task", 1), span("task", 2), span("next_task", 9)]
    );
}

#[test]
fn on_error_gets_the_rows_stats_count_failed_and_no_diagnostic_row() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    // Every request is refused: the diagnostic row about the drops fails along with the rows.
    emu.inject(Fault::Status(400), 100_000);
    let failures: Arc<Mutex<Vec<FailedBatch>>> = Arc::default();
    let sink = failures.clone();
    let (layer, guard) = pipeline(&emu)
        .queue_capacity(16)
        .max_concurrency(1)
        .diagnostic_interval(Duration::from_millis(10))
        .on_error(move |f| sink.lock().unwrap().push(f))
        .build()
        .unwrap();
    let dispatch = dispatch(layer);
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..2_000u64 {
            tracing::info!(i, "burst");
        }
    });
    // The flush settles the batch that holds the diagnostic row about the drops: it failed too.
    assert!(guard.flush_within(WAIT).completed);
    emu.clear_faults();
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..2_000u64 {
            tracing::info!(i, "second burst");
        }
    });
    assert!(guard.flush_within(WAIT).completed);
    // The diagnostic row about the second burst's drops may be added after the flush's rows.
    let diagnostic_arrived = || emu.rows(STREAM).iter().any(|r| r["Target"] == "tracing_azure_logs");
    assert!(
        wait_until(diagnostic_arrived),
        "a diagnostic row arrived after the faults ended"
    );
    // The first diagnostic row that arrives counts the drops of one that did not: a diagnostic
    // row was in a failed batch, so the books below are tested with one.
    let rows = emu.rows(STREAM);
    let first = rows
        .iter()
        .find(|r| r["Target"] == "tracing_azure_logs")
        .expect("a diagnostic row arrived after the faults ended");
    let properties = &first["Properties"];
    let dropped = properties["dropped"].as_u64().expect("dropped");
    let total = properties["dropped_total"].as_u64().expect("dropped_total");
    assert!(dropped > 0 && total > dropped, "{first}");
    let stats = guard.shutdown().stats;
    let failures = failures.lock().unwrap();
    let failed_rows: usize = failures.iter().map(FailedBatch::len).sum();
    assert!(stats.dropped > 0 && stats.failed > 0, "{stats:?}");
    assert_eq!(
        failed_rows as u64, stats.failed,
        "on_error's rows add up to Stats::failed"
    );
    for batch in failures.iter() {
        assert_eq!(batch.rows().len(), batch.len());
        for row in batch.rows() {
            assert!(
                !row.contains("\"Target\":\"tracing_azure_logs\""),
                "a diagnostic row: {row}"
            );
        }
    }
}

#[test]
fn flush_or_drop_from_on_error_returns_at_once_and_the_worker_keeps_shipping() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Status(400), 1);
    let slot: Arc<std::sync::OnceLock<std::sync::Weak<tracing_azure_logs::AzureLogsGuard>>> = Arc::default();
    let seen: Arc<Mutex<Vec<tracing_azure_logs::FlushReport>>> = Arc::default();
    let (cell, sink) = (slot.clone(), seen.clone());
    let (layer, guard) = pipeline(&emu)
        .on_error(move |_| {
            if let Some(guard) = cell.get().and_then(std::sync::Weak::upgrade) {
                sink.lock().unwrap().push(guard.flush());
            }
        })
        .build()
        .unwrap();
    let guard = Arc::new(guard);
    slot.set(Arc::downgrade(&guard)).unwrap();
    let dispatch = dispatch(layer);
    tracing::dispatcher::with_default(&dispatch, || tracing::info!(i = 0u64, "refused"));
    assert!(wait_until(|| !seen.lock().unwrap().is_empty()), "on_error ran");
    let inner = seen.lock().unwrap()[0];
    assert!(!inner.completed);
    assert_eq!(inner.incomplete, Some(tracing_azure_logs::Incomplete::OnPipelineThread));
    // The worker was not left waiting for itself: later rows still leave.
    tracing::dispatcher::with_default(&dispatch, || tracing::info!(i = 1u64, "after"));
    let report = guard.flush_within(WAIT);
    assert!(report.completed, "{report:?}");
    assert_eq!(report.stats.sent, 1);
    assert_eq!(report.stats.failed, 1);
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["Message"], "after");
}

#[test]
fn an_optional_row_id_is_unique_per_row_and_shares_the_process_prefix() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let builder = pipeline(&emu).row_id_column("RowId");
    let declaration = builder.columns().stream_declaration().to_string();
    assert!(
        declaration.contains(r#"{"name":"RowId","type":"long"}"#),
        "{declaration}"
    );
    let (layer, guard) = builder.build().unwrap();
    let shared = dispatch(layer);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let shared = shared.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&shared, || {
                    for i in 0..2_500u64 {
                        tracing::info!(t, i, "with a row id");
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(guard.flush_within(WAIT).completed);
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 10_000);
    let ids: Vec<u64> = rows
        .iter()
        .map(|r| r["RowId"].as_u64().expect("every row has an id"))
        .collect();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 10_000, "no two rows share an id");
    assert!(ids.iter().all(|&id| id < 1 << 63), "a positive signed long");
    let prefixes: HashSet<u64> = ids.iter().map(|id| id >> 40).collect();
    assert_eq!(prefixes.len(), 1, "one prefix per process start");
    // Without the setting, rows have no id.
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).build().unwrap();
    tracing::dispatcher::with_default(&dispatch(layer), || tracing::info!("no id"));
    assert!(guard.flush_within(WAIT).completed);
    assert!(emu.rows(STREAM)[0].get("RowId").is_none());
}
