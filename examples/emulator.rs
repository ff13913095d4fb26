//! Runs the Logs Ingestion API emulator standalone and prints every request it gets.
//!
//! ```text
//! cargo run --example emulator --features emulator -- [--seconds N] [--dir PATH] [--port N]
//!                                                     [--token TOKEN | --no-auth]
//! ```
//!
//! Prints the endpoint, the bearer token and the environment variables a program needs to send
//! to it, then one line per request until Ctrl-C (or for `--seconds N`). `--dir PATH` appends
//! accepted rows as JSON lines to `PATH/<stream>.jsonl`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tracing_azure_logs::emulator::{Emulator, RequestRecord};

struct Args {
    seconds: Option<u64>,
    dir: Option<PathBuf>,
    port: u16,
    token: Option<String>,
    no_auth: bool,
}

const USAGE: &str = "usage: emulator [--seconds N] [--dir PATH] [--port N] [--token TOKEN | --no-auth]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: None,
        dir: None,
        port: 0,
        token: None,
        no_auth: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => {
                let v = value("--seconds")?;
                args.seconds = Some(v.parse().map_err(|_| format!("bad --seconds: {v}"))?);
            }
            "--dir" => args.dir = Some(PathBuf::from(value("--dir")?)),
            "--port" => {
                let v = value("--port")?;
                args.port = v.parse().map_err(|_| format!("bad --port: {v}"))?;
            }
            "--token" => args.token = Some(value("--token")?),
            "--no-auth" => args.no_auth = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(args)
}

/// `HH:MM:SS.mmm` (UTC) of a record's arrival.
fn clock(record: &RequestRecord) -> String {
    let since = record.received_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        since.subsec_millis()
    )
}

fn summary(r: &RequestRecord) -> String {
    let status = r.status.map_or_else(|| "dropped".to_owned(), |s| s.to_string());
    let mut line = format!(
        "{} {} {} {} {} rows={} wire={}B json={} {}ms",
        clock(r),
        r.http_version,
        r.method,
        r.stream.as_deref().unwrap_or(&r.path),
        status,
        r.rows,
        r.wire_bytes,
        r.uncompressed_bytes.map_or_else(|| "-".to_owned(), |n| format!("{n}B")),
        r.duration.as_millis(),
    );
    if let Some(code) = &r.error_code {
        line.push_str(&format!(" error={code}"));
    }
    if let Some(fault) = &r.fault {
        line.push_str(&format!(" fault={fault:?}"));
    }
    if !r.authorized {
        line.push_str(" unauthorized");
    }
    if let Some(ua) = &r.user_agent {
        line.push_str(&format!(" ua={ua:?}"));
    }
    line
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = Emulator::builder().port(args.port);
    if args.no_auth {
        builder = builder.no_auth();
    } else if let Some(token) = args.token {
        builder = builder.token(token);
    }
    if let Some(dir) = &args.dir {
        builder = builder.persist_dir(dir);
    }
    let emulator = match builder.start() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the emulator: {e}");
            return ExitCode::FAILURE;
        }
    };

    println!("Logs Ingestion API emulator listening on {}", emulator.endpoint());
    match emulator.token() {
        Some(token) => println!("Accepted bearer token: {token}"),
        None => println!("Auth is off: any token (or none) is accepted"),
    }
    if let Some(dir) = &args.dir {
        println!("Accepted rows are appended to {}/<stream>.jsonl", dir.display());
    }
    println!();
    println!("Point a program at it with:");
    println!("export AZURE_DCE_ENDPOINT={}", emulator.endpoint());
    println!("export AZURE_DCR_RULE_ID=dcr-emulator");
    println!("export AZURE_DCR_STREAM_NAME=Custom-AppLogs_CL");
    if let Some(token) = emulator.token() {
        println!("export AZURE_LOGS_EMULATOR_TOKEN={token}");
    }
    println!();
    match args.seconds {
        Some(s) => println!("Running for {s} s."),
        None => println!("Running until Ctrl-C."),
    }

    let deadline = args.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    loop {
        let wait = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => break,
            },
            None => Duration::from_secs(3600),
        };
        if !emulator.wait_for_requests(seen as usize + 1, wait) {
            continue;
        }
        for r in emulator.requests() {
            if r.seq <= seen {
                continue;
            }
            if r.seq > seen + 1 {
                println!("({} requests not shown: the request log wrapped)", r.seq - seen - 1);
            }
            println!("{}", summary(&r));
            seen = r.seq;
        }
    }
    let stats = emulator.stats();
    println!(
        "Done: {} requests ({} accepted, {} rejected, {} dropped), {} rows, {} bytes on the wire",
        stats.requests,
        stats.accepted_requests,
        stats.rejected_requests,
        stats.dropped_connections,
        stats.rows_accepted,
        stats.wire_bytes
    );
    emulator.shutdown();
    ExitCode::SUCCESS
}
