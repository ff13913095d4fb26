//! Building a pipeline does not change how tracing dispatches on other threads: an event emitted
//! while another event is being recorded (inside a field's `Debug`) still reaches the global
//! subscriber. A scoped default dispatcher anywhere in the process (the worker used to install
//! one) makes tracing-core send such events to no subscriber, on every thread.
//!
//! One test per binary: it needs a process in which nothing ever installed a scoped dispatcher.
#![cfg(feature = "emulator")]

mod common;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_azure_logs::emulator::Emulator;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// Counts the events of target `inner`, and formats every field it sees.
struct CountInner(Arc<AtomicUsize>);

impl<S: Subscriber> Layer<S> for CountInner {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() == "inner" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        struct Format;
        impl Visit for Format {
            fn record_debug(&mut self, _: &Field, value: &dyn fmt::Debug) {
                let _ = format!("{value:?}");
            }
        }
        event.record(&mut Format);
    }
}

/// A value whose `Debug` emits an event.
struct Noisy;

impl fmt::Debug for Noisy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        tracing::info!(target: "inner", "emitted while formatting a field");
        f.write_str("noisy")
    }
}

#[test]
fn an_event_emitted_while_recording_another_arrives_with_a_pipeline_built() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = emu
        .logs_builder("dcr-reentrant", "Custom-Reentrant_CL")
        .max_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    let inner = Arc::new(AtomicUsize::new(0));
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry()
            .with(CountInner(inner.clone()))
            .with(layer),
    )
    .unwrap();
    // The worker has run (and shipped through its HTTP stack) before the event.
    tracing::info!("warm up");
    assert!(guard.flush_within(Duration::from_secs(30)).completed);
    // The blocking client's runtime is started too.
    let client = emu.client().build().unwrap();
    client
        .upload_blocking("dcr-reentrant", "Custom-Other_CL", [serde_json::json!({"a": 1})])
        .unwrap();

    tracing::info!(value = ?Noisy, "outer");
    assert!(guard.flush_within(Duration::from_secs(30)).completed);

    // Each layer formats `value` once, and each time the inner event reaches both layers.
    assert_eq!(
        inner.load(Ordering::SeqCst),
        2,
        "the inner events reached the global subscriber"
    );
    let rows = emu.rows("Custom-Reentrant_CL");
    let messages: Vec<&str> = rows.iter().filter_map(|r| r["Message"].as_str()).collect();
    assert_eq!(
        messages
            .iter()
            .filter(|m| **m == "emitted while formatting a field")
            .count(),
        2,
        "{messages:?}"
    );
    assert_eq!(messages.iter().filter(|m| **m == "outer").count(), 1, "{messages:?}");
}
