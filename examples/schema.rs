//! Writes what Azure needs for this crate's rows: the table body, the data collection rule body
//! and the `az` commands that create both and grant the role.
//!
//! ```text
//! cargo run --example schema -- [--out DIR] [--stream Custom-MyService_CL]
//!     [--subscription ID] [--resource-group RG] [--workspace WS] [--location REGION]
//!     [--rule-name NAME] [--assignee OBJECT_ID] [--orders]
//! ```
//!
//! Writes `DIR/table.json`, `DIR/rule.json` and `DIR/setup.sh` (default DIR: `azure-setup`), for
//! the default columns plus a `Computer` column, or with `--orders` for the custom table of the
//! `custom_table` example (typed from a sample row). Then run `cd DIR && bash setup.sh` after
//! `az login`. Unset Azure names are left as `<placeholders>` to fill in.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use tracing_azure_logs::AzureLogs;
use tracing_azure_logs::provision::{AzureTarget, Provisioning};

/// The row type of the `custom_table` example.
#[derive(Serialize)]
struct Order {
    order_id: u64,
    customer: String,
    total_eur: f64,
    paid: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = PathBuf::from("azure-setup");
    let mut stream = "Custom-MyService_CL".to_owned();
    let mut orders = false;
    let placeholder = |name: &str| format!("<{name}>");
    let mut target = AzureTarget::new(
        std::env::var("AZURE_SUBSCRIPTION_ID").unwrap_or_else(|_| placeholder("subscription-id")),
        placeholder("resource-group"),
        placeholder("workspace"),
        placeholder("location"),
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--out" => out = PathBuf::from(value()?),
            "--stream" => stream = value()?,
            "--subscription" => target.subscription = value()?,
            "--resource-group" => target.resource_group = value()?,
            "--workspace" => target.workspace = value()?,
            "--location" => target.location = value()?,
            "--rule-name" => target.rule_name = Some(value()?),
            "--assignee" => target.assignee = Some(value()?),
            "--orders" => orders = true,
            other => return Err(format!("unknown argument {other}; see the file's header").into()),
        }
    }
    let plan = if orders {
        let sample = Order {
            order_id: 1,
            customer: "ada".into(),
            total_eur: 12.5,
            paid: true,
        };
        Provisioning::from_sample("Custom-Orders_CL", &sample)?
    } else {
        AzureLogs::builder().stream(stream).provisioning()?
    };
    std::fs::create_dir_all(&out)?;
    let rule = plan.rule_body(&target.location, &target.workspace_resource_id());
    std::fs::write(
        out.join("table.json"),
        serde_json::to_string_pretty(&plan.table_body())?,
    )?;
    std::fs::write(out.join("rule.json"), serde_json::to_string_pretty(&rule)?)?;
    std::fs::write(out.join("setup.sh"), plan.az_commands(&target))?;
    println!("stream {} -> table {} with columns:", plan.stream(), plan.table());
    for (name, kind) in plan.columns() {
        println!("  {name:<16} {kind}");
    }
    println!("\nwrote {0}/table.json, {0}/rule.json and {0}/setup.sh", out.display());
    println!("next: az login, then: cd {} && bash setup.sh", out.display());
    println!("the role takes up to 30 minutes to apply; `cargo run --example doctor` tells when it has");
    Ok(())
}
