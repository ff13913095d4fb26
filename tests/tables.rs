//! Custom tables and routed events through the pipeline, checked at the emulator.
#![cfg(feature = "emulator")]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};
use tracing::Dispatch;
use tracing_azure_logs::client::FailedBatch;
use tracing_azure_logs::emulator::{Emulator, Fault};
use tracing_azure_logs::{AzureLogsBuilder, FullPolicy, SendError};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-tables";
const LOGS: &str = "Custom-AppLogs_CL";
const ORDERS: &str = "Custom-Orders_CL";
const AUDIT: &str = "Custom-Audit_CL";
const WAIT: Duration = Duration::from_secs(30);

fn pipeline(emu: &Emulator) -> AzureLogsBuilder {
    emu.logs_builder(RULE, LOGS).max_delay(Duration::from_millis(50))
}

#[derive(Serialize)]
struct Order {
    thread: u64,
    id: u64,
    total_eur: f64,
}

#[derive(Serialize)]
struct Audit {
    thread: u64,
    id: u64,
    action: &'static str,
}

#[test]
fn two_tables_and_the_log_stream_from_several_threads() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu)
        .full_policy(FullPolicy::Block(Duration::from_secs(10)))
        .build()
        .unwrap();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    let orders = guard.table::<Order>(ORDERS);
    let audit = guard.table::<Audit>(AUDIT);
    const N: u64 = 2_000;
    let threads: Vec<_> = (0..3u64)
        .map(|t| {
            let (orders, audit, dispatch) = (orders.clone(), audit.clone(), dispatch.clone());
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || {
                    for id in 0..N {
                        orders
                            .send(&Order {
                                thread: t,
                                id,
                                total_eur: id as f64 / 4.0,
                            })
                            .unwrap();
                        tracing::info!(thread = t, id, "log line");
                        audit
                            .send(&Audit {
                                thread: t,
                                id,
                                action: "login",
                            })
                            .unwrap();
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // One flush covers every stream.
    let report = guard.flush_within(WAIT);
    assert!(report.completed);
    assert_eq!(
        (report.stats.sent, report.stats.dropped, report.stats.failed),
        (9 * N, 0, 0)
    );

    let unique = |stream: &str, id_of: &dyn Fn(&Value) -> (u64, u64)| {
        let rows = emu.rows(stream);
        let ids: HashSet<(u64, u64)> = rows.iter().map(id_of).collect();
        (rows.len(), ids.len())
    };
    let top = |r: &Value| (r["thread"].as_u64().unwrap(), r["id"].as_u64().unwrap());
    let props = |r: &Value| {
        (
            r["Properties"]["thread"].as_u64().unwrap(),
            r["Properties"]["id"].as_u64().unwrap(),
        )
    };
    assert_eq!(unique(ORDERS, &top), (3 * N as usize, 3 * N as usize));
    assert_eq!(unique(AUDIT, &top), (3 * N as usize, 3 * N as usize));
    assert_eq!(unique(LOGS, &props), (3 * N as usize, 3 * N as usize));
    // Table rows are what was sent, plus TimeGenerated.
    let order = emu.rows(ORDERS).into_iter().find(|r| r["id"] == 8).unwrap();
    assert_eq!(order["total_eur"], 2.0);
    assert!(order["TimeGenerated"].as_str().unwrap().ends_with('Z'));
    assert!(
        emu.rows(AUDIT).iter().all(|r| r.get("Level").is_none()),
        "no log columns in table rows"
    );

    let per_stream: HashMap<String, (u64, u64)> = guard
        .stream_stats()
        .into_iter()
        .map(|s| (s.stream, (s.sent, s.failed)))
        .collect();
    assert_eq!(per_stream[LOGS], (3 * N, 0));
    assert_eq!(per_stream[ORDERS], (3 * N, 0));
    assert_eq!(per_stream[AUDIT], (3 * N, 0));
}

#[test]
fn flush_covers_tables_and_time_generated_is_added_only_when_missing() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (_layer, guard) = pipeline(&emu).max_delay(Duration::from_secs(3600)).build().unwrap();
    let table = guard.table::<Value>(ORDERS);
    let before = SystemTime::now();
    table.send(&json!({"id": 1})).unwrap();
    let after = SystemTime::now();
    table
        .send(&json!({"id": 2, "TimeGenerated": "2026-01-02T03:04:05Z"}))
        .unwrap();
    table
        .send(&json!({"id": 3, "nested": {"TimeGenerated": "not top level"}}))
        .unwrap();
    table.send(&json!({})).unwrap();
    table.clone().without_time_generated().send(&json!({"id": 5})).unwrap();
    assert!(guard.flush().completed);
    let rows = emu.rows(ORDERS);
    assert_eq!(rows.len(), 5, "flush returned after the table rows arrived");
    // The time of the send, to the microsecond (truncation may take it just below `before`).
    let added = rows[0]["TimeGenerated"].as_str().unwrap();
    let at = SystemTime::from(azure_core::time::parse_rfc3339(added).unwrap());
    assert!(
        before - Duration::from_micros(1) <= at && at <= after,
        "{added} not between {before:?} and {after:?}"
    );
    assert_eq!(rows[1]["TimeGenerated"], "2026-01-02T03:04:05Z");
    assert!(rows[2]["TimeGenerated"].is_string() && rows[2]["nested"]["TimeGenerated"] == "not top level");
    assert_eq!(
        rows[3].as_object().unwrap().len(),
        1,
        "an empty object gets just the time"
    );
    assert_eq!(rows[4], json!({"id": 5}));
}

#[test]
fn rows_that_are_not_objects_are_refused_at_send() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (_layer, guard) = pipeline(&emu).build().unwrap();
    assert_eq!(
        guard.table::<i32>(ORDERS).send(&5),
        Err(SendError::NotAnObject("a number"))
    );
    assert_eq!(
        guard.table::<Vec<u8>>(ORDERS).send(&vec![1]),
        Err(SendError::NotAnObject("an array"))
    );
    assert_eq!(
        guard.table::<&str>(ORDERS).send(&"x"),
        Err(SendError::NotAnObject("a string"))
    );
    let bad_keys: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    let err = guard
        .table::<HashMap<(u8, u8), u8>>(ORDERS)
        .send(&bad_keys)
        .unwrap_err();
    assert!(
        matches!(err, SendError::Serialize(ref m) if m.contains("key must be a string")),
        "{err}"
    );
    assert!(guard.flush_within(WAIT).completed);
    assert_eq!(guard.stats().enqueued, 0);
    assert!(emu.requests().is_empty(), "nothing was shipped");
}

#[test]
fn table_in_another_rule_and_on_error_names_the_stream() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let failures: Arc<Mutex<Vec<FailedBatch>>> = Arc::default();
    let sink = failures.clone();
    let (_layer, guard) = pipeline(&emu)
        .on_error(move |f| sink.lock().unwrap().push(f))
        .build()
        .unwrap();
    let other = guard.table_in::<Value>("dcr-other", ORDERS);
    other.send(&json!({"id": 1})).unwrap();
    assert!(guard.flush_within(WAIT).completed);
    let first = &emu.requests()[0];
    assert_eq!(
        (first.rule_id.as_deref(), first.stream.as_deref(), first.status),
        (Some("dcr-other"), Some(ORDERS), Some(204))
    );
    let stored = emu.rows(ORDERS);
    assert_eq!(
        stored,
        vec![json!({"id": 1, "TimeGenerated": stored[0]["TimeGenerated"]})]
    );

    emu.inject(Fault::Status(400), 1);
    other.send(&json!({"id": 2})).unwrap();
    assert!(guard.flush_within(WAIT).completed);
    let failures = failures.lock().unwrap();
    assert_eq!(failures.len(), 1);
    assert_eq!(emu.requests()[1].status, Some(400));
    assert_eq!(emu.row_count(ORDERS), 1, "the refused row was not stored");
    assert_eq!((failures[0].rule_id(), failures[0].stream()), ("dcr-other", ORDERS));
    assert_eq!(
        failures[0].to_values(),
        vec![json!({"id": 2, "TimeGenerated": failures[0].to_values()[0]["TimeGenerated"]})]
    );
    let stats: Vec<_> = guard
        .stream_stats()
        .into_iter()
        .filter(|s| s.rule_id == "dcr-other")
        .collect();
    assert_eq!((stats[0].sent, stats[0].failed), (1, 1));
}

#[test]
fn events_routed_by_field_land_in_their_stream() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (layer, guard) = pipeline(&emu).route_field("table", [AUDIT]).build().unwrap();
    tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
        tracing::info!(table = AUDIT, user = "ada", "signed in");
        tracing::info!(table = "Custom-Undeclared_CL", "stays in the log stream");
        tracing::info!("plain");
    });
    assert!(guard.flush_within(WAIT).completed);
    let audit = emu.rows(AUDIT);
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["Message"], "signed in");
    assert_eq!(audit[0]["Properties"]["user"], "ada");
    let logs: Vec<Value> = emu.rows(LOGS).iter().map(|r| r["Message"].clone()).collect();
    assert_eq!(logs, [json!("stays in the log stream"), json!("plain")]);
    assert!(emu.rows("Custom-Undeclared_CL").is_empty());
}

#[test]
fn a_row_larger_than_the_whole_queue_is_too_large_not_dropped() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let (_layer, guard) = pipeline(&emu)
        .queue_max_bytes(64 * 1024)
        .diagnostic_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let notes = guard.table::<Value>("Custom-Notes_CL");
    let big = json!({"text": "x".repeat(100 * 1024)});
    match notes.send(&big) {
        Err(SendError::RowTooLarge { size, limit }) => {
            assert!(size > 100 * 1024 && limit < size, "{size} {limit}");
            let message = SendError::RowTooLarge { size, limit }.to_string();
            assert!(message.contains("queue_max_bytes"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    notes.send(&json!({"text": "small"})).unwrap();
    let report = guard.flush_within(WAIT);
    assert!(report.completed);
    assert_eq!(report.stats.dropped, 0, "not counted as a drop: {:?}", report.stats);
    assert_eq!(emu.rows("Custom-Notes_CL").len(), 1);
    assert!(
        emu.rows(LOGS).is_empty(),
        "no 'queue full' diagnostic row: {:?}",
        emu.rows(LOGS)
    );
}
