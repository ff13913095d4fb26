//! Trace correlation (feature `opentelemetry`): the `TraceId` and `SpanId` of the rows the
//! emulator received are those of the spans the OpenTelemetry SDK exported (in memory).
#![cfg(all(feature = "emulator", feature = "opentelemetry"))]

mod common;

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::Value;
use tracing::{Dispatch, Instrument};
use tracing_azure_logs::emulator::{Column as Col, Emulator};
use tracing_azure_logs::{AzureLogs, AzureLogsBuilder, AzureLogsGuard, Column};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-otel";
const STREAM: &str = "Custom-Traced_CL";

/// An emulator that declares the stream from the shape's own declaration, with strict types: a
/// row whose trace columns the declaration lacks, or with another type, is refused.
fn declared(shape: impl Fn(AzureLogsBuilder) -> AzureLogsBuilder) -> (Emulator, AzureLogsBuilder) {
    let declaration = shape(AzureLogs::builder()).columns().stream_declaration();
    let emu = Emulator::builder()
        .declare_stream(RULE, STREAM, Col::from_stream_declaration(&declaration).unwrap())
        .strict_schema(true)
        .start()
        .unwrap();
    let builder = shape(emu.logs_builder(RULE, STREAM).max_delay(Duration::from_millis(20)));
    (emu, builder)
}

struct Traced {
    dispatch: Dispatch,
    guard: AzureLogsGuard,
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
}

/// This crate's layer and tracing-opentelemetry's in one registry (ours first, or the
/// OpenTelemetry layer first), its spans ending in memory.
fn traced(builder: AzureLogsBuilder, activation: bool, ours_first: bool) -> Traced {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let tracer = provider.tracer("otel-test");
    let (layer, guard) = builder.build().unwrap();
    let dispatch = if ours_first {
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_context_activation(activation);
        Dispatch::new(tracing_subscriber::registry().with(layer).with(otel))
    } else {
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_context_activation(activation);
        Dispatch::new(tracing_subscriber::registry().with(otel).with(layer))
    };
    Traced {
        dispatch,
        guard,
        exporter,
        provider,
    }
}

impl Traced {
    /// Ships every row and exports every ended span.
    fn finish(&self) -> Vec<SpanData> {
        assert!(self.guard.flush_within(Duration::from_secs(20)).completed);
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no exported span {name}: {spans:?}"))
}

/// The exported span `name` whose field `n` was `n`.
fn span_n<'a>(spans: &'a [SpanData], name: &str, n: usize) -> &'a SpanData {
    let has_n = |s: &&SpanData| {
        s.name == name
            && s.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "n" && kv.value.as_str() == n.to_string())
    };
    spans
        .iter()
        .find(has_n)
        .unwrap_or_else(|| panic!("no exported span {name} with n = {n}"))
}

fn row<'a>(rows: &'a [Value], message: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["Message"] == message)
        .unwrap_or_else(|| panic!("no row {message}: {rows:?}"))
}

/// The row's ids, as the exported span's: 32 and 16 lowercase hex digits.
fn assert_ids(row: &Value, span: &SpanData) {
    assert_ids_as(row, span, Some("TraceId"), Some("SpanId"));
}

/// [`assert_ids`] under these column names; `None`: the column is dropped, and absent.
fn assert_ids_as(row: &Value, span: &SpanData, trace_column: Option<&str>, span_column: Option<&str>) {
    let trace = format!("{:032x}", span.span_context.trace_id());
    let id = format!("{:016x}", span.span_context.span_id());
    for (column, expected) in [(trace_column, trace), (span_column, id)] {
        if let Some(column) = column {
            assert_eq!(row[column], expected.as_str(), "{row}");
        }
    }
}

/// Nested spans, two events per span (the second from the cache), and events outside.
fn nested_spans_carry_their_ids(activation: bool, ours_first: bool) {
    let (emu, builder) = declared(|b| b);
    let t = traced(builder, activation, ours_first);
    tracing::dispatcher::with_default(&t.dispatch, || {
        tracing::info!("before");
        let request = tracing::info_span!("request", method = "GET");
        request.in_scope(|| {
            tracing::info!("in request");
            tracing::info_span!("db").in_scope(|| {
                tracing::info!("in db");
                tracing::info!("in db again");
            });
            // A recorded field: the scope is encoded again, the ids with it.
            tracing::Span::current().record("method", "POST");
            tracing::info!("in request again");
        });
        // Entered again, as a task's span is at every poll: the ids are the same.
        request.in_scope(|| tracing::info!("in request, entered again"));
        drop(request);
        tracing::info!("after");
        // More spans than a thread keeps scopes of: theirs are cleared and reused.
        for n in 0..20 {
            tracing::info_span!("short", n).in_scope(|| tracing::info!("short {n}"));
        }
    });
    let spans = t.finish();
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 27, "{rows:?}");
    assert_eq!(row(&rows, "in request again")["Spans"][0]["fields"]["method"], "POST");
    for n in 0..20 {
        assert_ids(row(&rows, &format!("short {n}")), span_n(&spans, "short", n));
    }
    let (request, db) = (span(&spans, "request"), span(&spans, "db"));
    assert_eq!(db.parent_span_id, request.span_context.span_id());
    assert_eq!(db.span_context.trace_id(), request.span_context.trace_id());
    for message in ["in request", "in request again", "in request, entered again"] {
        assert_ids(row(&rows, message), request);
    }
    for message in ["in db", "in db again"] {
        assert_ids(row(&rows, message), db);
    }
    for message in ["before", "after"] {
        let outside = row(&rows, message);
        assert!(
            outside.get("TraceId").is_none() && outside.get("SpanId").is_none(),
            "{outside}"
        );
    }
}

#[test]
fn rows_carry_the_exported_span_ids() {
    let _limit = common::time_limit();
    nested_spans_carry_their_ids(true, true);
}

#[test]
fn rows_carry_the_ids_with_the_opentelemetry_layer_first() {
    let _limit = common::time_limit();
    nested_spans_carry_their_ids(true, false);
}

/// Without context activation the OpenTelemetry layer builds no context on enter: the lookup
/// builds it, and the exported span has the ids the rows got.
#[test]
fn rows_carry_the_ids_without_context_activation() {
    let _limit = common::time_limit();
    nested_spans_carry_their_ids(false, true);
}

/// Tasks on a multi-thread runtime: each task's span is entered at every poll, on whichever
/// worker thread polls it.
#[test]
fn async_tasks_carry_their_spans_ids() {
    let _limit = common::time_limit();
    let (emu, builder) = declared(|b| b);
    let t = traced(builder, true, false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|n: usize| {
                let span = tracing::dispatcher::with_default(&t.dispatch, || tracing::info_span!("task", n));
                let task = async move {
                    for step in 0..3 {
                        tracing::info!("task {n} step {step}");
                        tokio::task::yield_now().await;
                    }
                };
                tokio::spawn(tracing::instrument::WithSubscriber::with_subscriber(
                    task.instrument(span),
                    t.dispatch.clone(),
                ))
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    drop(runtime);
    let spans = t.finish();
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 24, "{rows:?}");
    assert_eq!(spans.iter().filter(|s| s.name == "task").count(), 8);
    for n in 0..8 {
        for step in 0..3 {
            assert_ids(row(&rows, &format!("task {n} step {step}")), span_n(&spans, "task", n));
        }
    }
    // Eight traces: every task's span is a root.
    let traces: std::collections::HashSet<_> = rows.iter().map(|r| r["TraceId"].as_str().unwrap()).collect();
    assert_eq!(traces.len(), 8);
}

/// One event in a span `op`, through a pipeline of `shape` into a stream declared (strictly) from
/// that shape: the one row the emulator received, and the exported span.
fn one_row_in_a_span(shape: impl Fn(AzureLogsBuilder) -> AzureLogsBuilder) -> (Value, SpanData) {
    let (emu, builder) = declared(shape);
    let t = traced(builder, true, true);
    tracing::dispatcher::with_default(&t.dispatch, || {
        tracing::info_span!("op").in_scope(|| tracing::info!("in op"));
    });
    let spans = t.finish();
    let rows = emu.rows(STREAM);
    assert_eq!(rows.len(), 1, "{rows:?}");
    (rows[0].clone(), span(&spans, "op").clone())
}

/// The Application Insights names, dropped columns, and rows of the trace columns alone: the
/// stream declared from each shape (strict) accepts the rows; the provisioning bodies name the
/// columns too.
#[test]
fn trace_columns_can_be_renamed_and_dropped() {
    let _limit = common::time_limit();
    let renamed = |b: AzureLogsBuilder| {
        b.rename_column(Column::TraceId, "OperationId")
            .rename_column(Column::SpanId, "ParentId")
    };
    let table = renamed(AzureLogs::builder().stream(STREAM))
        .provisioning()
        .unwrap()
        .table_body()
        .to_string();
    assert!(
        table.contains(r#"{"name":"OperationId","type":"string"}"#)
            && table.contains(r#"{"name":"ParentId","type":"string"}"#),
        "{table}"
    );
    let (row, op) = one_row_in_a_span(renamed);
    assert_ids_as(&row, &op, Some("OperationId"), Some("ParentId"));
    assert!(row.get("TraceId").is_none() && row.get("SpanId").is_none(), "{row}");

    let (row, op) = one_row_in_a_span(|b| b.drop_column(Column::SpanId).drop_column(Column::Spans));
    assert_ids_as(&row, &op, Some("TraceId"), None);
    assert!(row.get("Spans").is_none(), "{row}");

    // Every other column dropped: the cached ids open the row, without a leading comma.
    let (row, op) = one_row_in_a_span(|b| {
        [
            Column::TimeGenerated,
            Column::Level,
            Column::Target,
            Column::Message,
            Column::Properties,
            Column::Spans,
            Column::File,
            Column::Line,
            Column::Thread,
        ]
        .into_iter()
        .fold(b.drop_static_column("Computer"), AzureLogsBuilder::drop_column)
    });
    assert_eq!(row.as_object().unwrap().len(), 2, "{row}");
    assert_ids(&row, &op);
}

/// `log` records (no tracing span), and tracing events outside tracing spans, take the ids of the
/// thread's current OpenTelemetry context: a span the OpenTelemetry API started, or a tracing
/// span tracing-opentelemetry activated.
#[test]
fn rows_outside_tracing_spans_take_the_current_opentelemetry_context() {
    let _limit = common::time_limit();
    let (emu, builder) = declared(|b| b);
    let t = traced(builder, true, true);
    let logger = t
        .guard
        .logger(tracing_azure_logs::log_bridge::LogBridge::new(log::LevelFilter::Info));
    let log = |message: &str| {
        log::Log::log(
            &logger,
            &log::Record::builder()
                .level(log::Level::Info)
                .target("app")
                .args(format_args!("{message}"))
                .build(),
        )
    };
    let tracer = t.provider.tracer("api");
    tracer.in_span("api-op", |cx| {
        assert!(cx.span().span_context().is_valid());
        log("in api span");
        tracing::dispatcher::with_default(&t.dispatch, || tracing::info!("event in api span"));
    });
    tracing::dispatcher::with_default(&t.dispatch, || {
        tracing::info_span!("traced").in_scope(|| log("in tracing span"));
    });
    log("outside");
    let spans = t.finish();
    let rows = emu.rows(STREAM);
    assert_ids(row(&rows, "in api span"), span(&spans, "api-op"));
    assert_ids(row(&rows, "event in api span"), span(&spans, "api-op"));
    assert_ids(row(&rows, "in tracing span"), span(&spans, "traced"));
    assert!(row(&rows, "outside").get("TraceId").is_none());
}

/// A span that the OpenTelemetry layer's own filter leaves out has no OpenTelemetry context: its
/// events take the ids of the nearest ancestor that has one.
#[test]
fn a_span_the_opentelemetry_layer_filters_out_takes_its_parents_ids() {
    let _limit = common::time_limit();
    let (emu, builder) = declared(|b| b);
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("otel-test"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.name() != "quiet"));
    let (layer, guard) = builder.build().unwrap();
    let t = Traced {
        dispatch: Dispatch::new(tracing_subscriber::registry().with(layer).with(otel)),
        guard,
        exporter,
        provider,
    };
    tracing::dispatcher::with_default(&t.dispatch, || {
        tracing::info_span!("outer").in_scope(|| {
            tracing::info_span!("quiet").in_scope(|| tracing::info!("in quiet"));
        });
    });
    let spans = t.finish();
    assert!(spans.iter().all(|s| s.name != "quiet"), "filtered out: {spans:?}");
    let rows = emu.rows(STREAM);
    let quiet = row(&rows, "in quiet");
    assert_ids(quiet, span(&spans, "outer"));
    assert_eq!(quiet["Spans"][1]["name"], "quiet", "{quiet}");
}
