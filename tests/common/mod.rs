//! Test helpers shared by several test binaries.
#![allow(dead_code)]

use std::io::Write;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tracing_azure_logs::client::credential_client_options;

pub const TENANT: &str = "00000000-0000-0000-0000-00000000aaaa";

/// The hard time limit of a network test: each takes a few seconds at most (the slowest about 5 s
/// on a 2-core machine), and its own waits give up well before this; far below CI's job timeout.
pub const TIME_LIMIT: Duration = Duration::from_secs(120);

/// Aborts the test binary, naming the test, unless dropped within [`TIME_LIMIT`]: a deadlock in
/// the code under test fails loudly instead of hanging `cargo test`. Take it first thing in the
/// test, on the test's own thread (its name is the test's name), and keep it to the end:
/// `let _limit = common::time_limit();` (not `let _ = ...`, which drops it at once). Declared
/// first, it is dropped last, so it also bounds the drops of the test's guards and servers.
pub fn time_limit() -> Watchdog {
    Watchdog::start(TIME_LIMIT)
}

/// See [`time_limit`]. Aborting is the only way to stop a test thread that is stuck.
pub struct Watchdog {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(limit: Duration) -> Watchdog {
        let test = std::thread::current().name().unwrap_or("<unnamed>").to_owned();
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("time limit of {test}"))
            .spawn(move || {
                // Dropping the watchdog disconnects the channel, which ends this wait at once.
                if stopped.recv_timeout(limit) == Err(RecvTimeoutError::Timeout) {
                    // Straight to the process's stderr: the harness captures `eprintln!` of the
                    // test's threads, and that buffer would be lost in the abort.
                    let _ = writeln!(std::io::stderr(), "test {test} exceeded {limit:?}: a deadlock?");
                    std::process::abort();
                }
            })
            .expect("spawn the watchdog thread");
        Watchdog {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A fake Entra ID token endpoint on loopback HTTPS, with its own throwaway CA.
pub struct FakeEntra {
    pub authority: String,
    pub ca_pem: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `POST /{tenant}/oauth2/v2.0/token` over TLS on 127.0.0.1, answering `token`.
pub async fn fake_entra(token: &'static str) -> FakeEntra {
    fake_entra_tokens(vec![token]).await
}

/// Like [`fake_entra`], answering the n-th token request with `tokens[n]` (the last one after).
pub async fn fake_entra_tokens(tokens: Vec<&'static str>) -> FakeEntra {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = requests.clone();

    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let token = {
                    let mut seen = seen.lock().unwrap();
                    seen.push(String::from_utf8_lossy(&buf).to_string());
                    tokens[(seen.len() - 1).min(tokens.len() - 1)]
                };
                let body =
                    json!({"token_type": "Bearer", "expires_in": 3600, "ext_expires_in": 3600, "access_token": token})
                        .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    FakeEntra {
        authority: format!("https://127.0.0.1:{port}"),
        ca_pem: ca_cert.pem(),
        requests,
        task,
    }
}

impl FakeEntra {
    /// A reqwest client that trusts the fake's CA (and follows no redirects).
    pub fn http_client(&self) -> reqwest::Client {
        trusting(&self.ca_pem)
    }

    /// A real `ClientSecretCredential` whose authority is this fake, over `http`.
    pub fn client_secret_credential(&self, http: &reqwest::Client, secret: &str) -> Arc<dyn TokenCredential> {
        secret_credential(&self.authority, http, secret)
    }
}

/// A new `ClientSecretCredential` (its own empty token cache and HTTP client) for the fake Entra
/// at `authority`, trusting `ca_pem`.
pub fn client_secret_credential_at(authority: &str, ca_pem: &str, secret: &str) -> Arc<dyn TokenCredential> {
    secret_credential(authority, &trusting(ca_pem), secret)
}

/// A reqwest client that trusts `ca_pem` (and follows no redirects).
fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn secret_credential(authority: &str, http: &reqwest::Client, secret: &str) -> Arc<dyn TokenCredential> {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = authority.to_owned();
    let mut client_options = credential_client_options(http);
    client_options.cloud = Some(Arc::new(CloudConfiguration::Custom(cloud)));
    ClientSecretCredential::new(
        TENANT,
        "my-client-id".into(),
        Secret::new(secret.to_owned()),
        Some(ClientSecretCredentialOptions { client_options }),
    )
    .unwrap()
}

/// A [`FakeEntra`] served from its own thread and runtime, under a subscriber that records nothing
/// (so its events are not the application's); stopped on drop.
pub struct QuietEntra {
    pub entra: FakeEntra,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuietEntra {
    pub fn start(token: &'static str) -> QuietEntra {
        let (ready, entra) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _quiet = tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let fake = fake_entra(token).await;
                let copy = FakeEntra {
                    authority: fake.authority.clone(),
                    ca_pem: fake.ca_pem.clone(),
                    requests: fake.requests.clone(),
                    task: tokio::spawn(async {}),
                };
                ready.send(copy).unwrap();
                let _ = stopped.await;
                drop(fake);
            });
        });
        QuietEntra {
            entra: entra.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for QuietEntra {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A temporary directory for one test (`tal-{name}-{pid}-{n}` under the system's), emptied when
/// created and removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tal-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
