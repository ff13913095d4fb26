//! Continuous export: ships rows with the layer, runs two export rounds into JSON files, and
//! prints the files written and the checkpoints.
//!
//! Against the built-in emulator by default. With `AZURE_LOG_ANALYTICS_WORKSPACE_ID` set (and a
//! credential in the environment, see `credential_from_env`), it exports the table named by the
//! first argument from that workspace instead.
//!
//! ```text
//! cargo run --example export
//! ```

use std::sync::Arc;
use std::time::Duration;

use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::export::{CheckpointStore, ContinuousExport, ExportQuery, FileCheckpoints, JsonFileSink};
use tracing_azure_logs::query::LogsQueryClient;
use tracing_subscriber::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::temp_dir().join(format!("tracing-azure-logs-export-{}", std::process::id()));
    let mut emulator = None;
    let (client, workspace, table, settle) = match std::env::var("AZURE_LOG_ANALYTICS_WORKSPACE_ID") {
        Ok(workspace) => {
            let table = std::env::args()
                .nth(1)
                .ok_or("give the table to export as the first argument")?;
            let credential = tracing_azure_logs::client::credential_from_env()?;
            (
                LogsQueryClient::builder(credential).build()?,
                workspace,
                table,
                Duration::from_secs(300),
            )
        }
        Err(_) => {
            let emu = Emulator::start()?;
            println!(
                "no AZURE_LOG_ANALYTICS_WORKSPACE_ID: using the emulator at {}",
                emu.endpoint()
            );
            let client = LogsQueryClient::builder(emu.credential())
                .endpoint(emu.endpoint())
                .build()?;
            emulator = Some(emu);
            (
                client,
                "emulator".to_owned(),
                "Example_CL".to_owned(),
                Duration::from_millis(200),
            )
        }
    };
    let checkpoints = Arc::new(FileCheckpoints::new(out.join("checkpoints")));
    let exporter = ContinuousExport::new(
        client,
        workspace,
        vec![
            ExportQuery::new("all", table.clone()),
            ExportQuery::new("warnings", table).then("| where Level == 'WARN'"),
        ],
        checkpoints.clone(),
        Arc::new(JsonFileSink::new(out.join("files"))),
    )?
    .settle(settle);

    for round in 1..=2 {
        if let Some(emu) = &emulator {
            let (layer, guard) = emu.logs_builder("dcr-example", "Custom-Example_CL").build()?;
            let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
            tracing::dispatcher::with_default(&dispatch, || {
                for order in 0..5u32 {
                    tracing::info!(round, order, "order placed");
                }
                tracing::warn!(round, "payment declined");
            });
            guard.flush();
            tokio::time::sleep(settle + Duration::from_millis(100)).await;
        }
        println!("\nround {round}");
        for query in exporter.run_round().await {
            match &query.error {
                Some(error) => println!("  {}: stopped: {error}", query.query),
                None => println!(
                    "  {}: {} row(s) in {} window(s)",
                    query.query,
                    query.rows(),
                    query.windows.len()
                ),
            }
        }
    }
    println!("\nfiles:");
    for query in ["all", "warnings"] {
        let dir = out.join("files").join(query);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            println!("  {}", file.display());
        }
        println!("  checkpoint of {query}: {:?}", checkpoints.load(query)?);
    }
    Ok(())
}
