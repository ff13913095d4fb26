//! Runs the Logs Ingestion API emulator standalone and prints every request it gets: the same
//! program as the `azure-logs-emulator` binary (`tracing_azure_logs::emulator::cli`).
//!
//! ```text
//! cargo run --example emulator --features emulator -- [--seconds N] [--dir PATH] [--port N]
//!     [--token TOKEN | --no-auth] [--any-token] [--entra] [--tls DIR | --cert F --key F]
//!     [--streams FILE [--rule ID] [--strict]] [--fail-rate P [--status S]] [--drop-rate P] ...
//! ```
//!
//! Prints the endpoint, the bearer token and the environment variables a program needs to send
//! to it (and to trust it, with `--tls`), then one line per request until Ctrl-C (or for
//! `--seconds N`). `--help` lists every flag.

fn main() -> std::process::ExitCode {
    tracing_azure_logs::emulator::cli::run(std::env::args().skip(1))
}
