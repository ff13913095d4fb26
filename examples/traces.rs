//! Logs joined with traces (feature `opentelemetry`): each row carries the OpenTelemetry trace
//! and span id of the span it was emitted in, the ids the exported spans have.
//!
//! ```text
//! cargo run --example traces --features opentelemetry
//! ```
//!
//! Runs against the built-in emulator, with the SDK's in-memory exporter standing in for your
//! OTLP (or other) exporter, then prints each row's ids next to the exported spans'.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_azure_logs::emulator::Emulator;
use tracing_subscriber::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = Emulator::start()?;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let (layer, guard) = emulator.logs_builder("dcr-traces", "Custom-Traces_CL").build()?;
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("traces-example")))
        .init();

    tracing::info_span!("checkout", order_id = 42).in_scope(|| {
        tracing::info!("cart loaded");
        tracing::info_span!("payment").in_scope(|| tracing::info!(amount_eur = 19.5, "charged"));
    });
    tracing::info!("outside any span");

    let flushed = guard.shutdown();
    provider.force_flush()?;
    println!("rows (flushed: {}):", flushed.completed);
    for row in emulator.rows("Custom-Traces_CL") {
        println!(
            "  {:<18} TraceId={} SpanId={}",
            row["Message"].as_str().unwrap_or_default(),
            row.get("TraceId").and_then(|v| v.as_str()).unwrap_or("-"),
            row.get("SpanId").and_then(|v| v.as_str()).unwrap_or("-"),
        );
    }
    println!("exported spans:");
    for span in exporter.get_finished_spans()? {
        println!(
            "  {:<18} trace {:032x} span {:016x}",
            span.name,
            span.span_context.trace_id(),
            span.span_context.span_id()
        );
    }
    Ok(())
}
