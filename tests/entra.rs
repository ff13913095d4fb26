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
