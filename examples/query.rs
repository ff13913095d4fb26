//! Runs one KQL query and prints the table.
//!
//! Against the built-in emulator by default: it ships a few events with the layer first, then
//! queries them back. With `AZURE_LOG_ANALYTICS_WORKSPACE_ID` set (and a credential in the
//! environment, see `credential_from_env`), it queries that workspace in Azure instead.
//!
//! ```text
//! cargo run --example query
//! cargo run --example query -- "MyService_CL | summarize count() by Level"
//! ```

use std::time::Duration;

use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::query::{LogsQueryClient, Timespan};
use tracing_subscriber::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kql = std::env::args().nth(1);
    let timespan = Timespan::Last(Duration::from_secs(24 * 3600));
    let (client, workspace, kql, _emulator) = match std::env::var("AZURE_LOG_ANALYTICS_WORKSPACE_ID") {
        Ok(workspace) => {
            let credential = tracing_azure_logs::client::credential_from_env()?;
            let kql = kql.ok_or("give the query as the first argument")?;
            (LogsQueryClient::builder(credential).build()?, workspace, kql, None)
        }
        Err(_) => {
            let emulator = Emulator::start()?;
            println!(
                "no AZURE_LOG_ANALYTICS_WORKSPACE_ID: using the emulator at {}",
                emulator.endpoint()
            );
            let (layer, guard) = emulator.logs_builder("dcr-example", "Custom-Example_CL").build()?;
            let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
            tracing::dispatcher::with_default(&dispatch, || {
                for order in 0..5u32 {
                    tracing::info!(order, amount = 10.5 * f64::from(order), "order placed");
                }
                tracing::warn!(order = 5u32, "payment declined");
            });
            guard.flush();
            let client = LogsQueryClient::builder(emulator.credential())
                .endpoint(emulator.endpoint())
                .build()?;
            let kql = kql.unwrap_or_else(|| {
                "Example_CL | where Properties.order >= 2 | project TimeGenerated, Level, Message, Properties \
                 | order by TimeGenerated asc"
                    .into()
            });
            (client, "emulator".into(), kql, Some(emulator))
        }
    };
    println!("{kql}\n");
    let table = client.query_workspace(&workspace, &kql, timespan).await?.primary();
    let header: Vec<String> = table
        .columns
        .iter()
        .map(|c| format!("{} ({:?})", c.name, c.column_type))
        .collect();
    println!("{}", header.join(" | "));
    for row in &table.rows {
        let cells: Vec<String> = row
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        println!("{}", cells.join(" | "));
    }
    println!("\n{} row(s)", table.rows.len());
    Ok(())
}
