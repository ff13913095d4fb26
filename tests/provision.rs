//! Provisioning bodies, sent to the emulator's management routes, make a rule whose declared
//! stream takes the pipeline's rows in strict schema mode.
#![cfg(feature = "emulator")]

mod common;

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tracing::Dispatch;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::provision::{ColumnKind, Provisioning};
use tracing_azure_logs::{AzureLogsBuilder, Column};
use tracing_subscriber::prelude::*;

const WORKSPACE: &str =
    "/subscriptions/sub-1/resourceGroups/rg-logs/providers/Microsoft.OperationalInsights/workspaces/ws-1";
const RULES: &str = "/subscriptions/sub-1/resourceGroups/rg-logs/providers/Microsoft.Insights/dataCollectionRules";

/// `PUT` (or `GET` with no body) to a management path of the emulator: (status, body).
fn management(emu: &Emulator, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    let url = format!("{}{path}?api-version=2023-03-11", emu.endpoint());
    let token = emu.token().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
}

/// Creates the plan's table and rule; returns the rule's immutable id and ingestion endpoint.
fn provision(emu: &Emulator, plan: &Provisioning, rule_name: &str) -> (String, String) {
    let table_path = format!("{WORKSPACE}/tables/{}", plan.table());
    let (status, body) = management(emu, reqwest::Method::PUT, &table_path, Some(&plan.table_body()));
    assert_eq!(status, 200, "table: {body}");
    let rule = plan.rule_body("westeurope", WORKSPACE);
    let (status, body) = management(emu, reqwest::Method::PUT, &format!("{RULES}/{rule_name}"), Some(&rule));
    assert_eq!(status, 200, "rule: {body}");
    let immutable_id = body["properties"]["immutableId"].as_str().unwrap().to_owned();
    assert!(
        immutable_id.starts_with("dcr-") && immutable_id.len() == 36,
        "{immutable_id}"
    );
    let endpoint = body["properties"]["endpoints"]["logsIngestion"]
        .as_str()
        .unwrap()
        .to_owned();
    (immutable_id, endpoint)
}

fn strict_emulator() -> Emulator {
    Emulator::builder().strict_schema(true).start().unwrap()
}

/// Ships a few events through `builder` (nested spans, typed fields, an error) and flushes;
/// returns the stats after the flush.
fn ship_events(builder: AzureLogsBuilder) -> tracing_azure_logs::Stats {
    let (layer, guard) = builder.max_delay(Duration::from_millis(20)).build().unwrap();
    let dispatch = Dispatch::new(tracing_subscriber::registry().with(layer));
    tracing::dispatcher::with_default(&dispatch, || {
        let outer = tracing::info_span!("request", method = "GET", id = 7);
        let _outer = outer.enter();
        tracing::info!(user = "ada", attempt = 2, ratio = 0.5, ok = true, "signed in");
        let inner = tracing::warn_span!("db");
        let _inner = inner.enter();
        tracing::warn!(rows = 12_u64, "slow query");
        tracing::error!(error = %std::io::Error::other("disk"), "failed");
    });
    let report = guard.flush();
    assert!(report.completed, "{report:?}");
    report.stats
}

#[test]
fn default_shape_provisioned_takes_the_layers_rows() {
    let _limit = common::time_limit();
    let emu = strict_emulator();
    let builder = emu.logs_builder("not-yet", "Custom-AppLogs_CL");
    let plan = builder.provisioning().unwrap();
    let (rule_id, endpoint) = provision(&emu, &plan, "dcr-app");
    assert_eq!(endpoint, emu.endpoint());
    let stats = ship_events(builder.rule_id(&rule_id).endpoint(endpoint));
    assert_eq!((stats.sent, stats.failed), (3, 0), "{stats:?}");
    let rows = emu.rows("Custom-AppLogs_CL");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["Message"], "slow query");
    assert_eq!(rows[0]["Properties"]["attempt"], 2);
    // The rows passed the strict schema check of the rule the bodies declared.
    let uploads: Vec<_> = emu.requests().into_iter().filter(|r| r.stream.is_some()).collect();
    assert!(
        !uploads.is_empty() && uploads.iter().all(|r| r.status == Some(204)),
        "{uploads:?}"
    );
}

#[test]
fn renamed_dropped_and_static_columns_are_provisioned_as_configured() {
    let _limit = common::time_limit();
    let emu = strict_emulator();
    let builder = emu
        .logs_builder("not-yet", "Custom-Service_CL")
        .rename_column(Column::Level, "Severity")
        .rename_column(Column::Message, "Body")
        .drop_column(Column::Thread)
        .drop_column(Column::Spans)
        .row_id_column("RowId")
        .static_column("Region", "westeurope")
        .static_column("Replica", 3)
        .static_column("Canary", true);
    let plan = builder.provisioning().unwrap();
    let names: Vec<&str> = plan.columns().iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"Severity") && names.contains(&"RowId") && !names.contains(&"Thread"),
        "{names:?}"
    );
    let (rule_id, endpoint) = provision(&emu, &plan, "dcr-service");
    let stats = ship_events(builder.rule_id(&rule_id).endpoint(endpoint));
    assert_eq!((stats.sent, stats.failed), (3, 0), "{stats:?}");
    let rows = emu.rows("Custom-Service_CL");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[2]["Severity"], "ERROR");
    assert_eq!(rows[2]["Replica"], 3);
    assert!(rows[2].get("Thread").is_none());
}

#[test]
fn a_shape_that_differs_from_the_provisioned_one_is_refused() {
    // Shows the test above can fail: a column the rule does not declare fails the strict check.
    let _limit = common::time_limit();
    let emu = strict_emulator();
    let builder = emu.logs_builder("not-yet", "Custom-Drift_CL");
    let plan = builder.provisioning().unwrap();
    let (rule_id, endpoint) = provision(&emu, &plan, "dcr-drift");
    let drifted = builder
        .rule_id(&rule_id)
        .endpoint(endpoint)
        .static_column("Added", "later")
        .retry_policy(tracing_azure_logs::RetryPolicy::none());
    let stats = ship_events(drifted);
    assert_eq!((stats.sent, stats.failed), (0, 3), "{stats:?}");
    assert!(emu.requests().iter().any(|r| r.status == Some(400)));
}

#[derive(Serialize)]
struct Order {
    order_id: u64,
    customer: String,
    total_eur: f64,
    paid: bool,
    placed_at: String,
    lines: Vec<u32>,
}

#[test]
fn custom_table_from_a_sample_takes_the_tables_rows() {
    let _limit = common::time_limit();
    let emu = strict_emulator();
    let sample = Order {
        order_id: 1,
        customer: "ada".into(),
        total_eur: 1.5,
        paid: true,
        placed_at: "2026-12-04T10:00:00Z".into(),
        lines: vec![1],
    };
    let plan = Provisioning::from_sample("Custom-Orders_CL", &sample).unwrap();
    let (rule_id, endpoint) = provision(&emu, &plan, "dcr-orders");
    // The same rule also takes a log stream declared from an explicit column list.
    let (layer, guard) = emu
        .logs_builder(&rule_id, "Custom-Orders_CL")
        .endpoint(endpoint)
        .max_delay(Duration::from_millis(20))
        .build()
        .unwrap();
    drop(layer);
    let orders = guard.table::<Order>("Custom-Orders_CL");
    for id in 0..50 {
        orders
            .send(&Order {
                order_id: id,
                customer: format!("c{id}"),
                total_eur: id as f64 * 1.25,
                paid: id % 2 == 0,
                placed_at: "2026-12-04T11:00:00.5Z".into(),
                lines: vec![1, 2],
            })
            .unwrap();
    }
    let report = guard.flush();
    assert!(report.completed, "{report:?}");
    assert_eq!((report.stats.sent, report.stats.failed), (50, 0), "{:?}", report.stats);
    let rows = emu.rows("Custom-Orders_CL");
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[49]["order_id"], 49);
    assert!(rows[0]["TimeGenerated"].is_string());
}

#[test]
fn explicit_columns_and_rule_checks() {
    let _limit = common::time_limit();
    let emu = strict_emulator();
    let plan = Provisioning::with_columns(
        "Custom-Audit_CL",
        [
            ("TimeGenerated", ColumnKind::DateTime),
            ("Actor", ColumnKind::String),
            ("SessionId", ColumnKind::Guid),
            ("Count", ColumnKind::Int),
        ],
    )
    .unwrap();
    // A rule before its table: the service's InvalidOutputTable.
    let rule = plan.rule_body("westeurope", WORKSPACE);
    let (status, body) = management(&emu, reqwest::Method::PUT, &format!("{RULES}/dcr-audit"), Some(&rule));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("InvalidOutputTable"),
        "{body}"
    );
    // A stream column the table lacks: refused, naming the column.
    let table_path = format!("{WORKSPACE}/tables/Audit_CL");
    let (status, _) = management(&emu, reqwest::Method::PUT, &table_path, Some(&plan.table_body()));
    assert_eq!(status, 200);
    let mut wider = rule.clone();
    wider["properties"]["streamDeclarations"]["Custom-Audit_CL"]["columns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "Extra", "type": "string"}));
    let (status, body) = management(&emu, reqwest::Method::PUT, &format!("{RULES}/dcr-audit"), Some(&wider));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("'Extra'"), "{body}");
    // The plan's own rule is accepted; the guid column is a string in the stream.
    let (rule_id, _) = provision(&emu, &plan, "dcr-audit");
    let (status, got) = management(&emu, reqwest::Method::GET, &format!("{RULES}/dcr-audit"), None);
    assert_eq!(status, 200);
    assert_eq!(got["properties"]["immutableId"], rule_id.as_str());
    let client = emu.client().build().unwrap();
    let row = json!({"TimeGenerated": "2026-12-04T10:00:00Z", "Actor": "ada",
        "SessionId": "0f8fad5b-d9cb-469f-a165-70867728950e", "Count": 2});
    let report = client.upload_blocking(&rule_id, "Custom-Audit_CL", [row]).unwrap();
    assert_eq!(report.sent_rows, 1);
}
