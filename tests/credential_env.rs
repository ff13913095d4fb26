//! `credential_from_env` picks a credential the way DefaultAzureCredential does elsewhere, and its
//! errors say what was tried. One test in its own binary: it changes environment variables.

mod common;

use std::time::Duration;

use tracing_azure_logs::client::credential_from_env;

fn set(name: &str, value: Option<&str>) {
    // SAFETY: this binary has a single test, which runs alone on its thread; nothing else reads
    // the environment concurrently.
    unsafe {
        match value {
            Some(v) => std::env::set_var(name, v),
            None => std::env::remove_var(name),
        }
    }
}

#[test]
fn selection_order_and_errors() {
    let _limit = common::time_limit();
    for name in [
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "MSI_ENDPOINT",
        "AZURE_USE_MANAGED_IDENTITY",
    ] {
        set(name, None);
    }
    // Developer tools are the fallback; `az` is not installed here, so the token error lists
    // every option that was passed over and why.
    set("PATH", Some("/nonexistent"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let credential = credential_from_env().unwrap();
    assert!(format!("{credential:?}").contains("developer tools"));
    let err = runtime
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                credential.get_token(&["https://monitor.azure.com//.default"], None),
            )
            .await
        })
        .expect("bounded")
        .unwrap_err()
        .to_string();
    for expected in [
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "developer tools",
    ] {
        assert!(err.contains(expected), "{expected} missing from: {err}");
    }

    // Client secret variables win, and the secret never shows.
    set("AZURE_TENANT_ID", Some("00000000-0000-0000-0000-000000000001"));
    set("AZURE_CLIENT_ID", Some("my-app"));
    set("AZURE_CLIENT_SECRET", Some("super-secret-value"));
    let credential = credential_from_env().unwrap();
    let text = format!("{credential:?}");
    assert!(
        text.contains("client secret") && text.contains("ClientSecretCredential"),
        "{text}"
    );
    assert!(!text.contains("super-secret-value"), "{text}");

    // Without the secret, a federated token file selects workload identity.
    set("AZURE_CLIENT_SECRET", None);
    let token_file = std::env::temp_dir().join(format!("tal-federated-{}", std::process::id()));
    std::fs::write(&token_file, "header.payload.signature").unwrap();
    set("AZURE_FEDERATED_TOKEN_FILE", token_file.to_str());
    let text = format!("{:?}", credential_from_env().unwrap());
    assert!(text.contains("workload identity"), "{text}");

    // The App Service managed identity environment selects managed identity.
    set("AZURE_FEDERATED_TOKEN_FILE", None);
    std::fs::remove_file(&token_file).unwrap();
    set("IDENTITY_ENDPOINT", Some("http://127.0.0.1:9/msi/token"));
    set("IDENTITY_HEADER", Some("x"));
    let text = format!("{:?}", credential_from_env().unwrap());
    assert!(text.contains("managed identity"), "{text}");

    // The pipeline's settings from the environment: every missing variable is named.
    for name in [
        "AZURE_DCE_ENDPOINT",
        "AZURE_DCR_RULE_ID",
        "AZURE_DCR_STREAM_NAME",
        "AZURE_LOGS_EMULATOR_TOKEN",
    ] {
        set(name, None);
    }
    set("AZURE_DCR_RULE_ID", Some("dcr-1"));
    let err = tracing_azure_logs::AzureLogsBuilder::from_env()
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "missing environment variable(s): AZURE_DCE_ENDPOINT, AZURE_DCR_STREAM_NAME"
    );
    let err = tracing_azure_logs::try_init().unwrap_err().to_string();
    assert!(err.contains("AZURE_DCE_ENDPOINT"), "{err}");

    // With the emulator's token in AZURE_LOGS_EMULATOR_TOKEN, from_env ships to the emulator.
    let emu = tracing_azure_logs::emulator::Emulator::start().unwrap();
    set("AZURE_DCE_ENDPOINT", Some(&emu.endpoint()));
    set("AZURE_DCR_STREAM_NAME", Some("Custom-Env_CL"));
    set("AZURE_LOGS_EMULATOR_TOKEN", emu.token().as_deref());
    let (_layer, guard) = tracing_azure_logs::AzureLogsBuilder::from_env()
        .unwrap()
        .build()
        .unwrap();
    guard
        .table::<serde_json::Value>("Custom-Env_CL")
        .send(&serde_json::json!({"a": 1}))
        .unwrap();
    assert!(guard.flush_within(Duration::from_secs(20)).completed);
    assert_eq!(emu.row_count("Custom-Env_CL"), 1);
    assert!(emu.requests()[0].authorized);
}
