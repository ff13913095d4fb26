//! A real azure_identity `ClientSecretCredential` gets its token from a fake Entra ID token
//! endpoint on loopback HTTPS (a throwaway CA made with rcgen), and that token reaches the emulator.
#![cfg(feature = "emulator")]

mod common;

use std::time::Duration;

use serde_json::json;
use tracing_azure_logs::emulator::Emulator;

use common::{TENANT, fake_entra};

const SECRET: &str = "client-secret-do-not-print";

#[tokio::test]
async fn client_secret_credential_token_from_fake_entra_reaches_the_emulator() {
    let _limit = common::time_limit();
    tokio::time::timeout(Duration::from_secs(60), async {
        let entra = fake_entra("token-from-fake-entra").await;
        let emu = Emulator::builder().token("token-from-fake-entra").start().unwrap();

        let http = entra.http_client();
        let credential = entra.client_secret_credential(&http, SECRET);

        let client = tracing_azure_logs::LogsIngestionClient::builder(emu.endpoint(), credential.clone())
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

/// After the service stops taking a token, an azure_identity credential keeps answering from its
/// own cache, so the retry after the 401 carries the same token and the batch fails with a hint
/// that names the way out; wrapped in `RenewingCredential`, the retry gets a new token at once.
#[tokio::test]
async fn after_a_401_a_renewing_credential_gets_a_new_token_and_a_plain_one_cannot() {
    let _limit = common::time_limit();
    tokio::time::timeout(Duration::from_secs(60), async {
        for renewing in [false, true] {
            let entra = common::fake_entra_tokens(vec!["token-one", "token-two"]).await;
            let emu = Emulator::builder().token("token-one").start().unwrap();
            let http = entra.http_client();
            let credential: std::sync::Arc<dyn azure_core::credentials::TokenCredential> = if renewing {
                // Each credential it builds starts with an empty cache.
                let (authority, ca_pem) = (entra.authority.clone(), entra.ca_pem.clone());
                tracing_azure_logs::client::RenewingCredential::new(move || {
                    Ok(common::client_secret_credential_at(&authority, &ca_pem, SECRET))
                })
                .unwrap()
            } else {
                entra.client_secret_credential(&http, SECRET)
            };
            let client = tracing_azure_logs::LogsIngestionClient::builder(emu.endpoint(), credential)
                .http_client(http)
                .build()
                .unwrap();
            let row = [json!({"n": 1})];
            client.upload("dcr-1", "Custom-Renew_CL", &row).await.unwrap();
            // The service now refuses the first token (say, it was revoked).
            emu.set_token(Some("token-two".into()));
            let second = client.upload("dcr-1", "Custom-Renew_CL", &row).await;
            let token_requests = entra.requests.lock().unwrap().len();
            if renewing {
                let report = second.unwrap();
                assert_eq!(report.sent_rows, 1);
                assert_eq!(token_requests, 2, "a new credential asked Entra again");
                assert_eq!(emu.rows("Custom-Renew_CL").len(), 2);
            } else {
                let error = second.unwrap_err();
                let reason = error.batches[0].reason().to_string();
                assert!(reason.contains("HTTP 401"), "{reason}");
                assert!(
                    reason.contains("RenewingCredential"),
                    "the hint names the way out: {reason}"
                );
                assert_eq!(token_requests, 1, "the credential answered from its cache");
                assert_eq!(emu.rows("Custom-Renew_CL").len(), 1);
            }
            let statuses: Vec<_> = emu.requests().iter().map(|r| r.status).collect();
            let expected = if renewing {
                vec![Some(204), Some(401), Some(204)]
            } else {
                vec![Some(204), Some(401), Some(401)]
            };
            assert_eq!(statuses, expected, "renewing: {renewing}");
        }
    })
    .await
    .expect("test took too long");
}
