//! A real azure_identity `ClientSecretCredential` gets its token from a fake Entra ID token
//! endpoint on loopback HTTPS (a throwaway CA made with rcgen), and that token reaches the emulator.
#![cfg(feature = "emulator")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;
use tracing_azure_logs::client::{LogsIngestionClient, credential_client_options};
use tracing_azure_logs::emulator::Emulator;

const SECRET: &str = "client-secret-do-not-print";
const TENANT: &str = "00000000-0000-0000-0000-00000000aaaa";

struct FakeEntra {
    authority: String,
    ca_pem: String,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEntra {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `POST /{tenant}/oauth2/v2.0/token` over TLS on 127.0.0.1, answering `token`.
async fn fake_entra(token: &'static str) -> FakeEntra {
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
                seen.lock().unwrap().push(String::from_utf8_lossy(&buf).to_string());
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

#[tokio::test]
async fn client_secret_credential_token_from_fake_entra_reaches_the_emulator() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let entra = fake_entra("token-from-fake-entra").await;
        let emu = Emulator::builder().token("token-from-fake-entra").start().unwrap();

        let http = reqwest::Client::builder()
            .tls_certs_merge([reqwest::Certificate::from_pem(entra.ca_pem.as_bytes()).unwrap()])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = entra.authority.clone();
        let mut client_options = credential_client_options(&http);
        client_options.cloud = Some(Arc::new(CloudConfiguration::Custom(cloud)));
        let credential = ClientSecretCredential::new(
            TENANT,
            "my-client-id".into(),
            Secret::new(SECRET),
            Some(ClientSecretCredentialOptions { client_options }),
        )
        .unwrap();
        let credential: Arc<dyn TokenCredential> = credential;

        let client = LogsIngestionClient::builder(emu.endpoint(), credential.clone())
            .http_client(http)
            .build()
            .unwrap();
        let report = client
            .upload("dcr-1", "Custom-Entra_CL", [json!({"hello": "entra"})])
            .await
            .unwrap();
        assert_eq!(report.sent_rows, 1);
        assert_eq!(emu.rows("Custom-Entra_CL"), vec![json!({"hello": "entra"})]);
        assert!(emu.requests()[0].authorized);

        let seen = entra.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "one token request");
        let request = &seen[0];
        assert!(
            request.starts_with(&format!("POST /{TENANT}/oauth2/v2.0/token")),
            "{request}"
        );
        assert!(request.contains("client_id=my-client-id"), "{request}");
        assert!(request.contains("grant_type=client_credentials"), "{request}");
        assert!(
            request.contains("scope=https%3A%2F%2Fmonitor.azure.com%2F%2F.default"),
            "{request}"
        );

        // Neither the secret nor the token shows in Debug output.
        for text in [format!("{client:?}"), format!("{credential:?}"), format!("{report:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(!text.contains("token-from-fake-entra"), "{text}");
        }
    })
    .await
    .expect("test took too long");
}
