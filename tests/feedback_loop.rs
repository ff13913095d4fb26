//! With everything at TRACE and the layer installed globally (plus the `log` bridge), the HTTP
//! stack's own events during uploads and token fetches (reqwest, hyper, azure_core's pipeline,
//! azure_identity; rustls too, when its `log` output is compiled in) never reach the emulator:
//! only what the application emitted. The same holds for the runtime thread of `upload_blocking`. Checked to fail with the protections disabled.
//! One test per binary, since it installs global state.
#![cfg(feature = "emulator")]

mod common;

use std::time::Duration;

use tracing_azure_logs::emulator::Emulator;
use tracing_subscriber::prelude::*;

#[test]
fn trace_level_http_stack_events_never_reach_the_emulator() {
    let _limit = common::time_limit();
    // The token comes from a real ClientSecretCredential over TLS, so the worker thread also runs
    // rustls and azure_core while it ships.
    let entra = common::QuietEntra::start("token-for-loop");
    let http = entra.entra.http_client();
    let credential = entra.entra.client_secret_credential(&http, "loop-secret");
    let emu = Emulator::builder().token("token-for-loop").start().unwrap();
    let (layer, guard) = emu
        .logs_builder("dcr-loop", "Custom-Loop_CL")
        .credential(credential)
        .http_client(http)
        .max_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    // Built on this (the application's) thread before the subscriber: building an HTTP client logs.
    let direct_http = entra.entra.http_client();
    let direct = entra.entra.client_secret_credential(&direct_http, "loop-secret");
    let client = tracing_azure_logs::LogsIngestionClient::builder(emu.endpoint(), direct)
        .http_client(direct_http)
        .build()
        .unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("trace"))
        .with(layer);
    tracing::subscriber::set_global_default(subscriber).unwrap();
    tracing_log::LogTracer::init().unwrap();

    // Many small uploads, so the HTTP stack logs a lot while the application keeps emitting.
    for i in 0..200 {
        tracing::info!(target: "app", i, "application event");
        if i % 20 == 0 {
            log::info!(target: "app::legacy", "through the log crate {i}");
            assert!(guard.flush_within(Duration::from_secs(20)).completed);
        }
    }
    // The runtime of `upload_blocking` logs too (reqwest, hyper): none of it is shipped.
    for i in 0..5 {
        client
            .upload_blocking("dcr-loop", "Custom-Direct_CL", [serde_json::json!({"i": i})])
            .unwrap();
    }
    let report = guard.flush_within(Duration::from_secs(20));
    assert!(report.completed);
    assert_eq!(emu.rows("Custom-Direct_CL").len(), 5);
    assert!(emu.stats().accepted_requests >= 10, "{:?}", emu.stats());

    let rows = emu.rows("Custom-Loop_CL");
    let targets: std::collections::BTreeSet<String> =
        rows.iter().map(|r| r["Target"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        targets.into_iter().collect::<Vec<_>>(),
        ["app", "app::legacy"],
        "only the application's targets arrive"
    );
    assert_eq!(rows.len(), 200 + 10, "exactly what the application emitted");
    assert_eq!(report.stats.sent, 210);
    assert_eq!(
        entra.entra.requests.lock().unwrap().len(),
        2,
        "the tokens came from the fake Entra endpoint (one per credential)"
    );
}
