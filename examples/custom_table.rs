//! Application rows for custom tables (orders, audit records) next to ordinary log events,
//! through the same non-blocking pipeline.
//!
//! With `AZURE_DCE_ENDPOINT`, `AZURE_DCR_RULE_ID` and `AZURE_DCR_STREAM_NAME` set, rows go to
//! Azure (the DCR must declare `Custom-Orders_CL` and `Custom-Audit_CL` too); without them, to
//! the built-in emulator, and what arrived is printed per stream.
//!
//! ```text
//! cargo run --example custom_table
//! ```

use serde::Serialize;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::{AzureLogsBuilder, ENV_ENDPOINT};

#[derive(Serialize)]
struct Order {
    #[serde(rename = "OrderId")]
    id: u64,
    #[serde(rename = "Customer")]
    customer: String,
    #[serde(rename = "TotalEur")]
    total_eur: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = match std::env::var_os(ENV_ENDPOINT) {
        Some(_) => None,
        None => Some(Emulator::start()?),
    };
    let builder = match &emulator {
        Some(emu) => emu.logs_builder("dcr-custom-table", "Custom-AppLogs_CL"),
        None => AzureLogsBuilder::from_env()?,
    };
    // Events with a `table` field naming the audit stream go there instead of the log stream.
    let guard = tracing_azure_logs::install(builder.route_field("table", ["Custom-Audit_CL"]))?;

    let orders = guard.table::<Order>("Custom-Orders_CL");
    let senders: Vec<_> = (0..2u64)
        .map(|t| {
            let orders = orders.clone();
            std::thread::spawn(move || {
                for i in 0..3 {
                    let id = 100 * t + i;
                    let order = Order {
                        id,
                        customer: format!("customer-{t}"),
                        total_eur: 10.0 * (i + 1) as f64,
                    };
                    if let Err(e) = orders.send(&order) {
                        eprintln!("order {id} not queued: {e}");
                    }
                    tracing::info!(order_id = id, "order stored");
                }
            })
        })
        .collect();
    for s in senders {
        s.join().expect("sender panicked");
    }
    tracing::info!(
        table = "Custom-Audit_CL",
        actor = "admin",
        action = "refund",
        "refund approved"
    );

    let report = guard.flush();
    println!(
        "flushed: {}  sent {}  failed {}",
        report.completed, report.stats.sent, report.stats.failed
    );
    for s in guard.stream_stats() {
        println!("  {:<20} sent {:>3}  failed {}", s.stream, s.sent, s.failed);
    }
    if let Some(emu) = &emulator {
        for stream in ["Custom-Orders_CL", "Custom-Audit_CL", "Custom-AppLogs_CL"] {
            println!("\n{stream}:");
            for row in emu.rows(stream) {
                println!("  {row}");
            }
        }
    }
    drop(guard);
    Ok(())
}
