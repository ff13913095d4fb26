//! The command line of the `azure-logs-emulator` binary (`examples/emulator.rs` runs the same):
//! parses the flags, starts the [`Emulator`], prints how to reach and trust it, then one line per
//! request until Ctrl-C or `--seconds`.
//!
//! ```text
//! azure-logs-emulator [--port N] [--seconds N] [--dir PATH]
//!                     [--token T | --no-auth] [--any-token] [--entra]
//!                     [--tls DIR | --cert FILE --key FILE]
//!                     [--streams FILE [--rule ID] [--strict]]
//!                     [--fail-rate P [--status 429|500|503]] [--drop-rate P]
//!                     [--latency-rate P --latency-ms MS] [--seed N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::{Column, Emulator, EmulatorBuilder, EmulatorTls, FaultRates, RequestRecord};

/// The usage text `--help` prints.
pub const USAGE: &str = "\
usage: azure-logs-emulator [options]

  --port N            listen on 127.0.0.1:N (default: a free port)
  --seconds N         stop after N seconds (default: run until Ctrl-C)
  --dir PATH          append accepted rows to PATH/<stream>.jsonl
  --token T           accept bearer token T (default: a random one)
  --no-auth           accept requests with any token or none
  --any-token         also accept any non-empty bearer token
  --entra             serve the Entra token route POST /{tenant}/oauth2/v2.0/token (and the
                      discovery documents), so ClientSecretCredential with the authority host
                      set to the endpoint gets a token the uploads accept
  --tls DIR           serve HTTPS: write a new CA (DIR/ca.pem) and a certificate for 127.0.0.1
                      and localhost (DIR/cert.pem, DIR/key.pem)
  --cert FILE --key FILE
                      serve HTTPS with this certificate chain and key (PEM)
  --streams FILE      declare the streams of a DCR streamDeclarations JSON object
                      {\"Custom-X\": {\"columns\": [{\"name\": .., \"type\": ..}]}} for rule --rule
  --rule ID           the rule id of --streams (default dcr-emulator)
  --strict            answer 400 to rows that do not match the declared columns
  --fail-rate P       answer this fraction (0..1) of requests with --status (default 503)
  --status CODE       the status of --fail-rate: 429 (with Retry-After: 1), 500 or 503
  --drop-rate P       close this fraction of connections without an answer
  --latency-rate P    delay this fraction of requests by --latency-ms (default 100)
  --seed N            seed of the random faults (default 0)
";

/// Rule id used when `--rule` is not given.
pub const DEFAULT_RULE: &str = "dcr-emulator";

/// Tenant id the printed variables suggest (any tenant works against `--entra`).
const TENANT: &str = "00000000-0000-0000-0000-000000000000";

/// What the flags ask for.
#[derive(Debug, Default)]
struct Options {
    seconds: Option<u64>,
    dir: Option<PathBuf>,
    port: u16,
    token: Option<String>,
    no_auth: bool,
    any_token: bool,
    entra: bool,
    tls_dir: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    streams: Option<PathBuf>,
    rule: Option<String>,
    strict: bool,
    fail_rate: f64,
    status: Option<u16>,
    drop_rate: f64,
    latency_rate: f64,
    latency_ms: Option<u64>,
    seed: u64,
}

/// Runs the emulator with these arguments (without the program name), as the binary does:
/// `run(std::env::args().skip(1))`. Exit code 2 on a bad argument, 1 when it cannot start.
pub fn run(args: impl IntoIterator<Item = String>) -> ExitCode {
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let emulator = match options.builder().and_then(|b| b.start().map_err(|e| e.to_string())) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    print_banner(&emulator, &options);
    print_requests(&emulator, options.seconds);
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

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        fn number<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("bad {name}: {v}"))
        }
        fn rate(name: &str, v: String) -> Result<f64, String> {
            number::<f64>(name, v)
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{name} needs a fraction between 0 and 1"))
        }
        match arg.as_str() {
            "--seconds" => o.seconds = Some(number("--seconds", value("--seconds")?)?),
            "--dir" => o.dir = Some(value("--dir")?.into()),
            "--port" => o.port = number("--port", value("--port")?)?,
            "--token" => o.token = Some(value("--token")?),
            "--no-auth" => o.no_auth = true,
            "--any-token" => o.any_token = true,
            "--entra" => o.entra = true,
            "--tls" => o.tls_dir = Some(value("--tls")?.into()),
            "--cert" => o.cert = Some(value("--cert")?.into()),
            "--key" => o.key = Some(value("--key")?.into()),
            "--streams" => o.streams = Some(value("--streams")?.into()),
            "--rule" => o.rule = Some(value("--rule")?),
            "--strict" => o.strict = true,
            "--fail-rate" => o.fail_rate = rate("--fail-rate", value("--fail-rate")?)?,
            "--status" => o.status = Some(number("--status", value("--status")?)?),
            "--drop-rate" => o.drop_rate = rate("--drop-rate", value("--drop-rate")?)?,
            "--latency-rate" => o.latency_rate = rate("--latency-rate", value("--latency-rate")?)?,
            "--latency-ms" => o.latency_ms = Some(number("--latency-ms", value("--latency-ms")?)?),
            "--seed" => o.seed = number("--seed", value("--seed")?)?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if o.no_auth && o.token.is_some() {
        return Err("--token and --no-auth exclude each other".into());
    }
    if o.tls_dir.is_some() && (o.cert.is_some() || o.key.is_some()) {
        return Err("--tls generates a certificate; --cert/--key give one: use either".into());
    }
    if o.cert.is_some() != o.key.is_some() {
        return Err("--cert and --key go together".into());
    }
    if o.streams.is_none() && (o.rule.is_some() || o.strict) {
        return Err("--rule and --strict apply to --streams FILE".into());
    }
    if !matches!(o.status, None | Some(429 | 500 | 503)) {
        return Err("--status is 429, 500 or 503".into());
    }
    Ok(o)
}

impl Options {
    /// The builder these options describe (TLS files are written and streams read here).
    fn builder(&self) -> Result<EmulatorBuilder, String> {
        let mut builder = Emulator::builder().port(self.port);
        if self.no_auth {
            builder = builder.no_auth();
        } else if let Some(token) = &self.token {
            builder = builder.token(token);
        }
        if self.any_token {
            builder = builder.any_token();
        }
        if self.entra {
            builder = builder.entra();
        }
        if let Some(dir) = &self.dir {
            builder = builder.persist_dir(dir);
        }
        let tls = match (&self.tls_dir, &self.cert, &self.key) {
            (Some(dir), _, _) => Some(EmulatorTls::generate_into(dir)),
            (None, Some(cert), Some(key)) => Some(EmulatorTls::from_pem_files(cert, key)),
            _ => None,
        };
        if let Some(tls) = tls {
            builder = builder.tls(tls.map_err(|e| e.to_string())?);
        }
        if let Some(file) = &self.streams {
            let rule = self.rule.as_deref().unwrap_or(DEFAULT_RULE);
            for (stream, columns) in read_streams(file)? {
                builder = builder.declare_stream(rule, stream, columns);
            }
            builder = builder.strict_schema(self.strict);
        }
        if self.fail_rate > 0.0 || self.drop_rate > 0.0 || self.latency_rate > 0.0 {
            let mut rates = FaultRates {
                seed: self.seed,
                drop_connection: self.drop_rate,
                latency: self.latency_rate,
                ..FaultRates::default()
            };
            if let Some(ms) = self.latency_ms {
                rates.latency_duration = Duration::from_millis(ms);
            }
            match self.status.unwrap_or(503) {
                429 => rates.throttle = self.fail_rate,
                500 => rates.server_error = self.fail_rate,
                _ => rates.unavailable = self.fail_rate,
            }
            builder = builder.fault_rates(rates);
        }
        Ok(builder)
    }
}

/// The streams of a `streamDeclarations` file: the object itself, or a rule body holding it
/// (`properties.streamDeclarations` or `streamDeclarations`).
fn read_streams(file: &std::path::Path) -> Result<Vec<(String, Vec<Column>)>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    let declarations = [&json["properties"]["streamDeclarations"], &json["streamDeclarations"]]
        .into_iter()
        .find(|v| v.is_object())
        .unwrap_or(&json);
    Column::from_stream_declarations(declarations).map_err(|e| format!("{}: {e}", file.display()))
}

fn print_banner(emulator: &Emulator, o: &Options) {
    let endpoint = emulator.endpoint();
    println!("Logs Ingestion API emulator listening on {endpoint}");
    println!("Health: GET {endpoint}/health");
    match (emulator.token(), o.any_token) {
        (Some(token), false) => println!("Accepted bearer token: {token}"),
        (Some(token), true) => println!("Accepted bearer token: any non-empty token (this one too: {token})"),
        (None, _) => println!("Auth is off: any token (or none) is accepted"),
    }
    if o.entra {
        println!("Entra token route: POST {endpoint}/{{tenant}}/oauth2/v2.0/token (client_credentials, any client)");
    }
    if let Some(dir) = &o.dir {
        println!("Accepted rows are appended to {}/<stream>.jsonl", dir.display());
    }
    if o.streams.is_some() {
        let mode = if o.strict { "strict" } else { "lenient" };
        println!(
            "Declared streams of rule {} ({mode} schema):",
            o.rule.as_deref().unwrap_or(DEFAULT_RULE)
        );
    }
    let streams = declared_streams(o);
    for stream in &streams {
        println!("  {stream}");
    }
    println!();
    println!("Point a program at it with:");
    println!("export AZURE_DCE_ENDPOINT={endpoint}");
    println!("export AZURE_DCR_RULE_ID={}", o.rule.as_deref().unwrap_or(DEFAULT_RULE));
    let stream = streams.first().map_or("Custom-AppLogs_CL", String::as_str);
    println!("export AZURE_DCR_STREAM_NAME={stream}");
    if let Some(token) = emulator.token() {
        println!("export AZURE_LOGS_EMULATOR_TOKEN={token}");
    }
    if o.entra {
        println!("# ClientSecretCredential of any SDK (any tenant, id and secret), instance discovery off:");
        println!("# Python disable_instance_discovery=True, JS disableInstanceDiscovery: true");
        println!("export AZURE_AUTHORITY_HOST={endpoint}");
        println!("export AZURE_TENANT_ID={TENANT}");
        println!("export AZURE_CLIENT_ID=emulator-client");
        println!("export AZURE_CLIENT_SECRET=emulator-secret");
    }
    if emulator.tls().is_some() {
        println!();
        match emulator.ca_file() {
            Some(ca) => {
                let ca = ca.display();
                println!("CA file: {ca}");
                println!("Trust it (these replace the default trust store of that program: use them");
                println!("only in processes that talk to the emulator):");
                println!("export SSL_CERT_FILE={ca}        # OpenSSL, Python's ssl, Go and .NET on Linux");
                println!("export REQUESTS_CA_BUNDLE={ca}   # Python (requests, azure-core)");
                println!("export NODE_EXTRA_CA_CERTS={ca}  # Node.js (adds to the default store)");
                println!("# .NET on Windows/macOS, Go on macOS: install {ca} into the trust store.");
            }
            None => println!("TLS with the given certificate: clients must trust the CA that issued it."),
        }
    }
    println!();
    match o.seconds {
        Some(s) => println!("Running for {s} s."),
        None => println!("Running until Ctrl-C."),
    }
}

/// The streams `--streams` declares, sorted (empty without it or when the file is unreadable).
fn declared_streams(o: &Options) -> Vec<String> {
    let mut names: Vec<String> = o
        .streams
        .as_deref()
        .and_then(|f| read_streams(f).ok())
        .into_iter()
        .flatten()
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names
}

/// One line per finished request, until `seconds` pass (or forever).
fn print_requests(emulator: &Emulator, seconds: Option<u64>) {
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_parse_and_conflicts_are_refused() {
        let o = parse(args(
            "--port 7 --tls /tmp/x --entra --any-token --fail-rate 0.5 --status 429",
        ))
        .unwrap();
        assert_eq!(o.port, 7);
        assert!(o.entra && o.any_token);
        assert_eq!(o.status, Some(429));
        assert!(parse(args("--tls a --cert b --key c")).is_err());
        assert!(parse(args("--cert b")).is_err());
        assert!(parse(args("--strict")).is_err());
        assert!(parse(args("--fail-rate 2")).is_err());
        assert!(parse(args("--status 418")).is_err());
        assert!(parse(args("--token a --no-auth")).is_err());
        assert!(parse(args("--bogus")).is_err());
    }
}
