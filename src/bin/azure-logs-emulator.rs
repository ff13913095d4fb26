//! `azure-logs-emulator`: the crate's Logs Ingestion API emulator as a local service any Azure
//! client can use (HTTPS with a generated CA, an Entra token route, faults, declared streams).
//!
//! ```text
//! cargo install tracing-azure-logs --features emulator
//! azure-logs-emulator --tls /tmp/emulator-tls --entra
//! ```
//!
//! `--help` lists the flags; see [`tracing_azure_logs::emulator::cli`].

fn main() -> std::process::ExitCode {
    tracing_azure_logs::emulator::cli::run(std::env::args().skip(1))
}
