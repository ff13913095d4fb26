//! Reading rows back with `LogsQueryClient` from the emulator's query route: rows shipped by the
//! layer come back typed and decode into structs; the KQL subset, limits, faults and hints.
#![cfg(feature = "emulator")]

mod common;

use std::time::{Duration, Instant, SystemTime};

use tracing_azure_logs::RetryPolicy;
use tracing_azure_logs::client::StaticTokenCredential;
use tracing_azure_logs::emulator::{Emulator, Fault};
use tracing_azure_logs::query::{LogsColumnType, LogsQueryClient, QueryError, QueryOptions, Timespan};
use tracing_subscriber::prelude::*;

const RULE: &str = "dcr-query";
const STREAM: &str = "Custom-Query_CL";
const TABLE: &str = "Query_CL";
const WORKSPACE: &str = "00000000-0000-0000-0000-00000000abcd";
const HOUR: Timespan = Timespan::Last(Duration::from_secs(3600));

/// Ships `n` events (`seq` 0..n, WARN for odd ones) through the layer and waits until sent.
fn ship(emu: &Emulator, n: u64) {
    let (layer, guard) = emu.logs_builder(RULE, STREAM).build().unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        for seq in 0..n {
            if seq % 2 == 1 {
                tracing::warn!(seq, user = "ada", "odd event");
            } else {
                tracing::info!(seq, user = "bob", "even event");
            }
        }
    });
    assert!(guard.flush().completed);
}

fn client(emu: &Emulator) -> LogsQueryClient {
    LogsQueryClient::builder(emu.credential())
        .endpoint(emu.endpoint())
        .retry_policy(
            RetryPolicy::default()
                .with_base_delay(Duration::from_millis(20))
                .with_deadline(Duration::from_secs(20)),
        )
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[derive(Debug, serde::Deserialize)]
struct Shipped {
    #[serde(rename = "TimeGenerated")]
    time: String,
    #[serde(rename = "Level")]
    level: String,
    #[serde(rename = "Properties")]
    properties: Props,
}

#[derive(Debug, serde::Deserialize)]
struct Props {
    seq: u64,
    user: String,
}

#[test]
fn rows_shipped_by_the_layer_come_back_typed_and_decode_into_a_struct() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    ship(&emu, 10);
    let client = client(&emu);
    let result = runtime()
        .block_on(client.query_workspace(
            WORKSPACE,
            &format!(
                "{TABLE} | where Properties.seq >= 5 and Message has 'odd' | order by TimeGenerated asc \
                 | project TimeGenerated, Level, Properties"
            ),
            HOUR,
        ))
        .unwrap();
    let table = result.primary();
    let types: Vec<_> = table
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.column_type.clone()))
        .collect();
    assert_eq!(
        types,
        [
            ("TimeGenerated", LogsColumnType::DateTime),
            ("Level", LogsColumnType::String),
            ("Properties", LogsColumnType::Dynamic)
        ]
    );
    let rows: Vec<Shipped> = table.rows_as().unwrap();
    assert_eq!(rows.iter().map(|r| r.properties.seq).collect::<Vec<_>>(), [5, 7, 9]);
    assert!(rows.iter().all(|r| r.level == "WARN" && r.properties.user == "ada"));
    assert!(rows.windows(2).all(|w| w[0].time <= w[1].time), "ordered by time");
    assert!(rows[0].time.ends_with('Z'), "{}", rows[0].time);

    let counts = runtime()
        .block_on(client.query_workspace(WORKSPACE, &format!("{TABLE} | summarize n = count() by Level"), HOUR))
        .unwrap();
    #[derive(serde::Deserialize)]
    struct Count {
        #[serde(rename = "Level")]
        level: String,
        n: i64,
    }
    let mut counts: Vec<(String, i64)> = counts
        .primary()
        .rows_as::<Count>()
        .unwrap()
        .into_iter()
        .map(|c| (c.level, c.n))
        .collect();
    counts.sort();
    assert_eq!(counts, [("INFO".to_owned(), 5), ("WARN".to_owned(), 5)]);
    emu.shutdown();
}

#[test]
fn the_timespan_and_the_visibility_delay_decide_what_a_query_sees() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .query_visibility_delay(Duration::from_secs(1))
        .start()
        .unwrap();
    let client = client(&emu);
    let rt = runtime();
    let count = |timespan| -> usize {
        rt.block_on(client.query_workspace(WORKSPACE, TABLE, timespan))
            .unwrap()
            .primary()
            .rows
            .len()
    };
    ship(&emu, 4);
    assert_eq!(count(HOUR), 0, "accepted, not yet visible");
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(HOUR) < 4 {
        assert!(Instant::now() < deadline, "the rows never became visible");
        std::thread::sleep(Duration::from_millis(20));
    }
    let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(3600);
    assert_eq!(count(Timespan::Between(SystemTime::UNIX_EPOCH, long_ago)), 0);
    assert_eq!(count(Timespan::All), 4);
    emu.shutdown();
}

#[test]
fn unsupported_kql_is_refused_with_a_message_naming_it() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    ship(&emu, 1);
    let error = runtime()
        .block_on(client(&emu).query_workspace(WORKSPACE, &format!("{TABLE} | join (Other_CL) on seq"), HOUR))
        .unwrap_err();
    match &error {
        QueryError::Rejected {
            status: 400,
            code: Some(code),
            message,
            ..
        } => {
            assert!(code.starts_with("BadArgumentError"), "{code}");
            assert!(message.contains("'join' is not supported"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        error.to_string().contains("the service could not run the query"),
        "{error}"
    );
    let error = runtime()
        .block_on(client(&emu).query_workspace(WORKSPACE, "Missing_CL | take 1", HOUR))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("'Missing_CL' could not be resolved to a table"),
        "{error}"
    );
    emu.shutdown();
}

#[test]
fn throttling_and_a_server_timeout_are_retried() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    ship(&emu, 3);
    let client = client(&emu);
    emu.inject(Fault::Throttle { retry_after_secs: 1 }, 1);
    let started = Instant::now();
    let result = runtime()
        .block_on(client.query_workspace(WORKSPACE, TABLE, HOUR))
        .unwrap();
    assert_eq!(result.primary().rows.len(), 3);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured");
    // The query takes 1.5 s, past its 1 s server timeout: 504, then a retry that succeeds.
    emu.inject(Fault::Latency(Duration::from_millis(1_500)), 1);
    let options = QueryOptions::default().server_timeout(Duration::from_secs(1));
    let result = runtime()
        .block_on(client.query_workspace_with(WORKSPACE, TABLE, HOUR, &options))
        .unwrap();
    assert_eq!(result.primary().rows.len(), 3);
    let statuses: Vec<_> = emu.requests().iter().map(|r| r.status).collect();
    assert!(
        statuses.ends_with(&[Some(429), Some(200), Some(504), Some(200)]),
        "{statuses:?}"
    );
    emu.shutdown();
}

#[test]
fn a_result_over_the_limit_is_an_error_carrying_the_partial_rows_unless_allowed() {
    let _limit = common::time_limit();
    let emu = Emulator::builder().query_limits(5, 64_000_000).start().unwrap();
    ship(&emu, 12);
    let client = client(&emu);
    let rt = runtime();
    match rt.block_on(client.query_workspace(WORKSPACE, TABLE, HOUR)) {
        Err(QueryError::Partial { result, message, .. }) => {
            assert_eq!(result.primary().rows.len(), 5);
            assert!(message.contains("record count limit 5"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let options = QueryOptions::default().allow_partial(true).include_statistics(true);
    let result = rt
        .block_on(client.query_workspace_with(WORKSPACE, TABLE, HOUR, &options))
        .unwrap();
    assert_eq!(result.primary().rows.len(), 5);
    assert!(result.partial_error.is_some());
    assert!(result.statistics.is_some());
    emu.shutdown();
}

#[test]
fn refusals_carry_a_hint_that_says_what_to_fix() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let client = client(&emu);
    let rt = runtime();
    for (status, hint) in [(403, "'Log Analytics Reader'"), (404, "check the workspace id")] {
        emu.inject(Fault::Status(status), 1);
        let error = rt.block_on(client.query_workspace(WORKSPACE, TABLE, HOUR)).unwrap_err();
        assert!(
            matches!(error, QueryError::Rejected { status: s, .. } if s == status),
            "{error:?}"
        );
        assert!(error.to_string().contains(hint), "{error}");
    }
    // A wrong token: refused after one fresh token (which is wrong too).
    let wrong = LogsQueryClient::builder(StaticTokenCredential::new("not-the-emulator-token"))
        .endpoint(emu.endpoint())
        .build()
        .unwrap();
    let error = rt.block_on(wrong.query_workspace(WORKSPACE, TABLE, HOUR)).unwrap_err();
    assert!(matches!(error, QueryError::Rejected { status: 401, .. }), "{error:?}");
    assert!(error.to_string().contains("api.loganalytics.io"), "{error}");
    let unauthorized = emu.requests().iter().filter(|r| r.status == Some(401)).count();
    assert_eq!(unauthorized, 2, "one retry with a fresh token, then refused");
    emu.shutdown();
}

#[test]
fn the_query_route_answers_get_as_the_service_does() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    ship(&emu, 3);
    let url = format!(
        "{}/v1/workspaces/{WORKSPACE}/query?query={TABLE}%20%7C%20count&timespan=PT1H",
        emu.endpoint()
    );
    let text = runtime()
        .block_on(async {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(emu.token().unwrap())
                .timeout(Duration::from_secs(10))
                .send()
                .await?
                .text()
                .await
        })
        .unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"tables": [{"name": "PrimaryResult", "columns": [{"name": "Count", "type": "long"}], "rows": [[3]]}]})
    );
    emu.shutdown();
}
