//! The main job: ship tracing events to Azure Monitor Logs.
//!
//! With `AZURE_DCE_ENDPOINT`, `AZURE_DCR_RULE_ID` and `AZURE_DCR_STREAM_NAME` set (and an Azure
//! credential available: see `credential_from_env`), events go to Azure. Without them, the
//! built-in emulator is started on 127.0.0.1 and the rows it received are printed.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::{AzureLogsBuilder, ENV_ENDPOINT};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = if std::env::var_os(ENV_ENDPOINT).is_some() {
        None
    } else {
        Some(Emulator::start()?)
    };
    let builder = match &emulator {
        Some(emu) => {
            println!(
                "No {ENV_ENDPOINT} set: shipping to the local emulator at {}",
                emu.endpoint()
            );
            emu.logs_builder("dcr-quickstart", "Custom-Quickstart_CL")
        }
        None => AzureLogsBuilder::from_env()?,
    };
    let guard = tracing_azure_logs::install(builder.static_column("Service", "quickstart"))?;

    let workers: Vec<_> = (0..2)
        .map(|worker| {
            std::thread::Builder::new()
                .name(format!("worker-{worker}"))
                .spawn(move || {
                    for order in 0..3u64 {
                        let span = tracing::info_span!("order", worker, order_id = 1000 * worker + order);
                        let _entered = span.enter();
                        tracing::info!(items = order + 1, total_eur = 9.5 * (order + 1) as f64, "order placed");
                        if order == 2 {
                            tracing::warn!(retry_in_ms = 250u64, "payment provider slow");
                        }
                    }
                })
        })
        .collect::<Result<_, _>>()?;
    for w in workers {
        w.join().expect("worker thread panicked");
    }
    log::info!(target: "quickstart::legacy", "a record through the `log` crate");

    // Dropping the guard flushes (up to 5 s by default); shutdown() does the same and reports.
    let report = guard.shutdown();
    let stats = report.stats;
    println!(
        "\nflushed: {}  sent {}  failed {}  dropped {}  uploads {}  bytes on the wire {}",
        report.completed, stats.sent, stats.failed, stats.dropped, stats.uploads, stats.wire_bytes
    );

    if let Some(emu) = emulator {
        let rows = emu.rows("Custom-Quickstart_CL");
        println!("\nThe emulator received {} rows:\n", rows.len());
        println!(
            "{:<27} {:<5} {:<19} {:<9} {:<27} Properties / Spans",
            "TimeGenerated", "Level", "Target", "Thread", "Message"
        );
        for row in &rows {
            println!(
                "{:<27} {:<5} {:<19} {:<9} {:<27} {} {}",
                row["TimeGenerated"].as_str().unwrap_or(""),
                row["Level"].as_str().unwrap_or(""),
                row["Target"].as_str().unwrap_or(""),
                row["Thread"].as_str().unwrap_or(""),
                row["Message"].as_str().unwrap_or(""),
                row["Properties"],
                row["Spans"]
            );
        }
        emu.shutdown();
    }
    Ok(())
}
