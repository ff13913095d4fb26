//! The emulator as a local service any Azure client can use: HTTPS with a generated CA, the
//! Entra token route, any-token mode, the health route, and the `azure-logs-emulator` binary.
#![cfg(feature = "emulator")]

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use tracing_azure_logs::emulator::{Emulator, EmulatorTls};

const ROWS: &str = r#"[{"TimeGenerated":"2024-05-01T12:00:00Z","Message":"over tls"}]"#;

fn upload_url(endpoint: &str, stream: &str) -> String {
    format!("{endpoint}/dataCollectionRules/dcr-1/streams/{stream}?api-version=2023-01-01")
}

/// A client that trusts exactly these CAs (no system or built-in roots).
fn trusting_only(ca_pem: &str) -> reqwest::Client {
    trusting_only_builder(ca_pem).build().unwrap()
}

/// [`trusting_only`], before its other settings.
fn trusting_only_builder(ca_pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
}

#[tokio::test]
async fn a_client_trusting_only_the_generated_ca_uploads_over_https_and_queries() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .tls(EmulatorTls::generate().unwrap())
        .start()
        .unwrap();
    let endpoint = emu.endpoint();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let http = trusting_only(emu.ca_pem().expect("a generated CA"));

    let response = http
        .post(upload_url(&endpoint, "Custom-Tls_CL"))
        .bearer_auth(emu.token().unwrap())
        .header("content-type", "application/json")
        .body(ROWS)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(emu.rows("Custom-Tls_CL")[0]["Message"], "over tls");
    // ALPN offered h2 and the server took it.
    assert_eq!(emu.requests()[0].http_version, "HTTP/2.0");

    // The query route is on the same TLS listener.
    let answer: serde_json::Value = http
        .post(format!("{endpoint}/v1/workspaces/ws/query"))
        .bearer_auth(emu.token().unwrap())
        .body(json!({"query": "Tls_CL | count"}).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(answer["tables"][0]["rows"][0][0], 1, "{answer}");

    // The same over HTTP/1.1.
    let http1 = trusting_only_builder(emu.ca_pem().unwrap())
        .http1_only()
        .build()
        .unwrap();
    let response = http1
        .post(upload_url(&endpoint, "Custom-Tls_CL"))
        .bearer_auth(emu.token().unwrap())
        .body(ROWS)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(emu.requests().last().unwrap().http_version, "HTTP/1.1");
    assert_eq!(emu.row_count("Custom-Tls_CL"), 2);
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .tls(EmulatorTls::generate().unwrap())
        .start()
        .unwrap();
    // Trusts another CA only, so the outcome does not depend on the machine's trust store.
    let other = EmulatorTls::generate().unwrap();
    let http = trusting_only(other.ca_pem().unwrap());
    let error = http
        .post(upload_url(&emu.endpoint(), "Custom-Tls_CL"))
        .bearer_auth(emu.token().unwrap())
        .body(ROWS)
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    let chain = format!("{error:?}");
    // rustls refused the server's certificate (signed by a CA of the same name, another key).
    assert!(chain.contains("InvalidCertificate"), "{chain}");
    assert_eq!(emu.stats().requests, 0, "no request got through");

    // Plain HTTP to the TLS port gets no HTTP answer either.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = upload_url(&emu.endpoint().replacen("https", "http", 1), "Custom-Tls_CL");
    assert!(plain.post(url).body(ROWS).send().await.is_err());
    assert_eq!(emu.stats().requests, 0);
}

#[tokio::test]
async fn client_secret_credential_gets_a_token_from_the_entra_route_and_uploads_with_it() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .tls(EmulatorTls::generate().unwrap())
        .entra()
        .start()
        .unwrap();
    let ca_pem = emu.ca_pem().unwrap().to_owned();
    let credential = common::client_secret_credential_at(&emu.endpoint(), &ca_pem, "any-secret");
    let client = tracing_azure_logs::LogsIngestionClient::builder(emu.endpoint(), credential)
        .http_client(trusting_only(&ca_pem))
        .build()
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        client.upload("dcr-1", "Custom-Entra_CL", [json!({"hello": "entra"})]),
    )
    .await
    .expect("upload took too long")
    .unwrap();
    assert_eq!(report.sent_rows, 1);
    assert_eq!(emu.rows("Custom-Entra_CL"), vec![json!({"hello": "entra"})]);

    let log = emu.requests();
    let token_request = &log[0];
    assert_eq!(token_request.method, "POST");
    assert_eq!(token_request.path, format!("/{}/oauth2/v2.0/token", common::TENANT));
    assert_eq!(token_request.status, Some(200));
    let upload = &log[1];
    assert_eq!(upload.stream.as_deref(), Some("Custom-Entra_CL"));
    assert!(upload.authorized, "the issued token is the one uploads accept");
    assert_eq!(upload.status, Some(204));
}

#[tokio::test]
async fn the_entra_route_refuses_other_grants_and_is_off_by_default() {
    let _limit = common::time_limit();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let token_url = |emu: &Emulator| format!("{}/tenant-1/oauth2/v2.0/token", emu.endpoint());
    let form = |grant: &str| format!("grant_type={grant}&client_id=c&client_secret=s&scope=x%2F.default");

    let with = Emulator::builder().entra().start().unwrap();
    let answer = http
        .post(token_url(&with))
        .body(form("client_credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["access_token"], with.token().unwrap());
    let refused = http.post(token_url(&with)).body(form("password")).send().await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: serde_json::Value = serde_json::from_str(&refused.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "unsupported_grant_type", "{body}");

    let without = Emulator::start().unwrap();
    let answer = http
        .post(token_url(&without))
        .body(form("client_credentials"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);

    // The health route answers without a token, and is not in the request log.
    let health = http.get(format!("{}/health", without.endpoint())).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let body: serde_json::Value = serde_json::from_str(&health.text().await.unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(without.stats().requests, 1, "only the token request is counted");
}

#[tokio::test]
async fn any_token_accepts_an_arbitrary_token_but_not_none() {
    let _limit = common::time_limit();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for any in [false, true] {
        let builder = Emulator::builder().token("the-token");
        let emu = if any { builder.any_token() } else { builder }.start().unwrap();
        let url = upload_url(&emu.endpoint(), "Custom-Any_CL");
        let send = |auth: Option<&str>| {
            let mut request = http.post(&url).body(ROWS);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(send(Some("Bearer the-token")).await, 204);
        assert_eq!(send(Some("Bearer some-real-jwt")).await, if any { 204 } else { 401 });
        assert_eq!(send(Some("Bearer ")).await, 401);
        assert_eq!(send(None).await, 401);
    }
}

/// Kills the child process on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value after `prefix` on the first line of `lines` that starts with it, waiting at most
/// until `deadline`; the lines read are kept in `seen`.
fn wait_for_line(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, prefix: &str, deadline: Instant) -> String {
    if let Some(line) = seen.iter().find(|l| l.starts_with(prefix)) {
        return line[prefix.len()..].trim().to_owned();
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if let Some(value) = line.strip_prefix(prefix) {
                    return value.trim().to_owned();
                }
            }
            Err(_) => panic!("no line starting with {prefix:?}; output so far: {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn the_binary_serves_https_with_declared_streams() {
    let _limit = common::time_limit();
    let dir = common::TempDir::new("emulator-bin");
    std::fs::create_dir_all(&dir.0).unwrap();
    let streams = dir.0.join("streams.json");
    std::fs::write(
        &streams,
        json!({"Custom-Bin_CL": {"columns": [
            {"name": "TimeGenerated", "type": "datetime"},
            {"name": "Count", "type": "int"},
        ]}})
        .to_string(),
    )
    .unwrap();
    let tls_dir = dir.0.join("tls");
    let mut child = Command::new(env!("CARGO_BIN_EXE_azure-logs-emulator"))
        .arg("--tls")
        .arg(&tls_dir)
        .arg("--streams")
        .arg(&streams)
        .args(["--strict", "--seconds", "100", "--rule", "dcr-bin"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = Killed(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let endpoint = wait_for_line(&lines, &mut seen, "Logs Ingestion API emulator listening on ", deadline);
    let token = wait_for_line(&lines, &mut seen, "Accepted bearer token: ", deadline);
    let ca_file = wait_for_line(&lines, &mut seen, "CA file: ", deadline);
    let ssl_cert_file = wait_for_line(&lines, &mut seen, "export SSL_CERT_FILE=", deadline);
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    assert_eq!(std::path::Path::new(&ca_file), tls_dir.join("ca.pem"));
    assert!(ssl_cert_file.starts_with(&ca_file), "{ssl_cert_file}");
    for variable in ["REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"] {
        wait_for_line(&lines, &mut seen, &format!("export {variable}={ca_file}"), deadline);
    }

    let http = trusting_only(&std::fs::read_to_string(&ca_file).unwrap());
    let url = format!("{endpoint}/dataCollectionRules/dcr-bin/streams/Custom-Bin_CL?api-version=2023-01-01");
    let send = |rows: serde_json::Value| {
        let request = http.post(&url).bearer_auth(&token).body(rows.to_string());
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        send(json!([{"TimeGenerated": "2024-05-01T12:00:00Z", "Count": 3}])).await,
        204
    );
    assert_eq!(
        send(json!([{"TimeGenerated": "2024-05-01T12:00:00Z", "Count": "three"}])).await,
        400
    );
    let health = http.get(format!("{endpoint}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // The binary prints one line per request.
    let deadline = Instant::now() + Duration::from_secs(10);
    assert!(
        wait_for_text(&lines, &mut seen, " Custom-Bin_CL 204 ", deadline),
        "{seen:#?}"
    );
    assert!(
        wait_for_text(&lines, &mut seen, " Custom-Bin_CL 400 ", deadline),
        "{seen:#?}"
    );
}

/// Whether a line of `lines` (or one already in `seen`) contains `needle` before `deadline`.
fn wait_for_text(lines: &mpsc::Receiver<String>, seen: &mut Vec<String>, needle: &str, deadline: Instant) -> bool {
    loop {
        if seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => seen.push(line),
            Err(_) => return false,
        }
    }
}
