//! Checks a configuration before the first event, and says what to fix.
//!
//! With `AZURE_DCE_ENDPOINT`, `AZURE_DCR_RULE_ID` and `AZURE_DCR_STREAM_NAME` set (and a
//! credential: see `credential_from_env`), it checks those settings against Azure. Without them,
//! it checks the built-in emulator, where the stream is declared from the rows' shape. Exits 1
//! when rows would not be delivered.
//!
//! ```text
//! cargo run --example doctor
//! cargo run --example doctor -- --deny    # the emulator refuses the rule: the role hint
//! cargo run --example doctor -- --typo    # a stream the rule does not declare
//! ```

use std::process::ExitCode;

use tracing_azure_logs::emulator::{Column, Emulator};
use tracing_azure_logs::{AzureLogsBuilder, ENV_ENDPOINT};

const RULE: &str = "dcr-00000000000000000000000000d0c702";
const STREAM: &str = "Custom-Doctor_CL";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let emulator;
    let builder = if std::env::var_os(ENV_ENDPOINT).is_some() {
        match AzureLogsBuilder::from_env() {
            Ok(builder) => builder,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        let shape = tracing_azure_logs::AzureLogs::builder().columns().stream_declaration();
        let columns = Column::from_stream_declaration(&shape).expect("the crate's own declaration parses");
        emulator = match Emulator::builder().declare_stream(RULE, STREAM, columns).start() {
            Ok(emu) => emu,
            Err(e) => {
                eprintln!("cannot start the emulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "No {ENV_ENDPOINT} set: checking the local emulator at {}\n",
            emulator.endpoint()
        );
        if flag("--deny") {
            emulator.deny_rule(RULE);
        }
        let stream = if flag("--typo") { "Custom-Docter_CL" } else { STREAM };
        emulator.logs_builder(RULE, stream)
    };
    let report = builder.check();
    println!("{report}");
    if report.is_healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
