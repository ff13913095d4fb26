//! The health check against the emulator: every verdict, with its hint.
#![cfg(feature = "emulator")]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use tracing_azure_logs::client::{Finding, HealthReport, LogsIngestionClient, StaticTokenCredential, Step, Verdict};
use tracing_azure_logs::emulator::{Column, ColumnType, Emulator, Fault};
use tracing_azure_logs::{AzureLogs, Column as RowColumn};

const RULE: &str = "dcr-00000000000000000000000000000001";
const STREAM: &str = "Custom-App_CL";

fn declared() -> Emulator {
    Emulator::builder()
        .declare_stream(
            RULE,
            STREAM,
            vec![
                Column::new("TimeGenerated", ColumnType::DateTime),
                Column::new("Message", ColumnType::String),
            ],
        )
        .start()
        .unwrap()
}

fn client_for(emu: &Emulator) -> LogsIngestionClient {
    emu.client().request_timeout(Duration::from_secs(5)).build().unwrap()
}

/// The upload step of a one-stream report.
fn upload(report: &HealthReport) -> &tracing_azure_logs::client::CheckStep {
    report
        .steps_of(&Step::Upload {
            rule_id: String::new(),
            stream: String::new(),
        })
        .next()
        .expect("an upload step")
}

fn hint(step: &tracing_azure_logs::client::CheckStep) -> &str {
    step.hint.as_deref().unwrap_or_default()
}

#[test]
fn healthy_configuration_passes_every_step_and_stores_nothing() {
    let _limit = common::time_limit();
    let emu = declared();
    let report = client_for(&emu).check_blocking(RULE, STREAM);
    assert!(report.is_healthy(), "{report}");
    let verdicts: Vec<Verdict> = report.steps.iter().map(|s| s.verdict).collect();
    assert_eq!(verdicts, [Verdict::Pass; 3]);
    assert!(upload(&report).detail.contains("HTTP 204"), "{report}");
    assert_eq!(emu.row_count(STREAM), 0);
    let text = report.to_string();
    assert!(text.contains("healthy: rows will be accepted"), "{text}");
    assert!(text.lines().count() <= 6, "one screen: {text}");
}

#[test]
fn a_refused_token_is_an_audience_or_cloud_problem() {
    let _limit = common::time_limit();
    let emu = declared();
    let client = LogsIngestionClient::builder(emu.endpoint(), StaticTokenCredential::new("not-the-token"))
        .build()
        .unwrap();
    let report = client.check_blocking(RULE, STREAM);
    let step = upload(&report);
    assert_eq!(
        (step.verdict, step.finding),
        (Verdict::Fail, Finding::Unauthorized),
        "{report}"
    );
    assert!(
        hint(step).contains("audience must match the endpoint's cloud"),
        "{report}"
    );
    // One retry with a fresh token, as uploads do.
    assert_eq!(emu.stats().requests, 3, "GET of the endpoint, then two POSTs");
    assert!(!report.is_healthy());
    assert!(report.to_string().contains("NOT healthy"));
}

#[test]
fn a_denied_rule_gets_the_role_hint_with_the_30_minutes() {
    let _limit = common::time_limit();
    let emu = declared();
    emu.deny_rule(RULE);
    let report = client_for(&emu).check_blocking(RULE, STREAM);
    let step = upload(&report);
    assert_eq!(
        (step.verdict, step.finding),
        (Verdict::Fail, Finding::RoleMissing),
        "{report}"
    );
    assert!(step.detail.contains("IsRbacPresent: False"), "{report}");
    assert!(hint(step).contains("Monitoring Metrics Publisher"), "{report}");
    assert!(hint(step).contains("up to 30 minutes"), "{report}");
    assert!(hint(step).contains("3913510d-42f4-4e42-8a64-420c390055eb"), "{report}");

    emu.allow_rule(RULE);
    assert!(client_for(&emu).check_blocking(RULE, STREAM).is_healthy());
}

#[test]
fn a_403_without_the_rbac_text_is_another_access_problem() {
    let _limit = common::time_limit();
    let emu = declared();
    // The GET of the endpoint goes first; the fault answers the upload.
    emu.inject(Fault::Latency(Duration::ZERO), 1);
    emu.inject(Fault::Status(403), 1);
    let report = client_for(&emu).check_blocking(RULE, STREAM);
    let step = upload(&report);
    assert_eq!(
        (step.verdict, step.finding),
        (Verdict::Fail, Finding::Forbidden),
        "{report}"
    );
    assert!(hint(step).contains("IsDcrDceBindingValid"), "{report}");
}

#[test]
fn unknown_rule_and_unknown_stream_are_told_apart() {
    let _limit = common::time_limit();
    let emu = declared();
    let client = client_for(&emu);
    let report = client.check_blocking("dcr-ffffffffffffffffffffffffffffffff", STREAM);
    let step = upload(&report);
    assert_eq!(
        (step.verdict, step.finding),
        (Verdict::Fail, Finding::RuleNotFound),
        "{report}"
    );
    assert!(hint(step).contains("immutableId"), "{report}");
    assert!(hint(step).contains("region"), "{report}");

    let report = client.check_blocking(RULE, "Custom-Typo_CL");
    let step = upload(&report);
    assert_eq!(
        (step.verdict, step.finding),
        (Verdict::Fail, Finding::StreamNotFound),
        "{report}"
    );
    assert!(hint(step).contains("streamDeclarations"), "{report}");
    assert!(hint(step).contains("Custom-Typo_CL"), "{report}");
}

#[test]
fn service_errors_are_explained() {
    let _limit = common::time_limit();
    let emu = declared();
    let client = client_for(&emu);
    let cases = [
        (503, Verdict::Fail, Finding::Unavailable, "up to 30 minutes"),
        (413, Verdict::Fail, Finding::TooLarge, "proxy or gateway"),
        (400, Verdict::Fail, Finding::BadRequest, "could not read the request"),
        (429, Verdict::Warn, Finding::Throttled, "throttled"),
    ];
    for (status, verdict, finding, text) in cases {
        emu.inject(Fault::Latency(Duration::ZERO), 1);
        emu.inject(Fault::Status(status), 1);
        let report = client.check_blocking(RULE, STREAM);
        let step = upload(&report);
        assert_eq!((step.verdict, step.finding), (verdict, finding), "{report}");
        assert!(hint(step).contains(text), "{status}: {report}");
        assert!(step.detail.starts_with(&format!("HTTP {status}")), "{report}");
    }
}

#[test]
fn role_propagation_is_a_403_until_it_applies() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .role_propagation(Duration::from_secs(3))
        .start()
        .unwrap();
    let plan = emu.logs_builder("x", STREAM).provisioning().unwrap();
    let ws = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.OperationalInsights/workspaces/ws";
    let put = |path: String, body: serde_json::Value| {
        let url = format!("{}{path}?api-version=2023-03-11", emu.endpoint());
        let token = emu.token().unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let response = reqwest::Client::new()
                    .put(url)
                    .bearer_auth(token)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200);
                serde_json::from_str::<serde_json::Value>(&response.text().await.unwrap()).unwrap()
            })
    };
    put(format!("{ws}/tables/{}", plan.table()), plan.table_body());
    let rule = put(
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Insights/dataCollectionRules/dcr-app".into(),
        plan.rule_body("westeurope", ws),
    );
    let created = Instant::now();
    let rule_id = rule["properties"]["immutableId"].as_str().unwrap().to_owned();
    let client = client_for(&emu);
    let report = client.check_blocking(&rule_id, STREAM);
    if created.elapsed() < Duration::from_secs(3) {
        let step = upload(&report);
        assert_eq!(step.finding, Finding::RoleMissing, "{report}");
        assert!(hint(step).contains("up to 30 minutes"));
    }
    // Once the assignment applies, the same check passes.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = client.check_blocking(&rule_id, STREAM);
        if report.is_healthy() {
            assert!(created.elapsed() >= Duration::from_secs(3));
            break;
        }
        assert_eq!(upload(&report).finding, Finding::RoleMissing, "{report}");
        assert!(Instant::now() < deadline, "still refused: {report}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_unreachable_endpoint_is_refused_and_uploads_are_skipped() {
    let _limit = common::time_limit();
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = LogsIngestionClient::builder(format!("http://127.0.0.1:{port}"), StaticTokenCredential::new("t"))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let report = client.check_blocking(RULE, STREAM);
    let endpoint = &report.steps[1];
    assert_eq!(endpoint.step, Step::Endpoint);
    assert_eq!(
        (endpoint.verdict, endpoint.finding),
        (Verdict::Fail, Finding::ConnectionRefused),
        "{report}"
    );
    assert!(hint(endpoint).contains("nothing listens at"), "{report}");
    assert_eq!(upload(&report).verdict, Verdict::Skipped);
}

#[test]
fn an_untrusted_certificate_is_a_tls_problem() {
    let _limit = common::time_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // A TLS server whose CA the client does not trust.
    let server = runtime.block_on(common::fake_entra("unused"));
    let client = LogsIngestionClient::builder(server.authority.clone(), StaticTokenCredential::new("t"))
        .request_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let report = client.check_blocking(RULE, STREAM);
    let endpoint = &report.steps[1];
    assert_eq!(
        (endpoint.verdict, endpoint.finding),
        (Verdict::Fail, Finding::Tls),
        "{report}"
    );
    assert!(hint(endpoint).contains("TLS handshake failed"), "{report}");
    drop(server);
}

#[test]
fn an_unresolvable_host_is_a_dns_problem() {
    let _limit = common::time_limit();
    struct NoDns;
    impl reqwest::dns::Resolve for NoDns {
        fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            let message = format!("failed to lookup address information: {} not known", name.as_str());
            Box::pin(async move { Err(message.into()) })
        }
    }
    let http = reqwest::Client::builder()
        .dns_resolver(Arc::new(NoDns))
        .build()
        .unwrap();
    let client = LogsIngestionClient::builder(
        "https://my-dce.westeurope-1.ingest.monitor.azure.com",
        StaticTokenCredential::new("t"),
    )
    .http_client(http)
    .request_timeout(Duration::from_secs(5))
    .build()
    .unwrap();
    let report = client.check_blocking(RULE, STREAM);
    let endpoint = &report.steps[1];
    assert_eq!(
        (endpoint.verdict, endpoint.finding),
        (Verdict::Fail, Finding::Dns),
        "{report}"
    );
    assert!(hint(endpoint).contains("does not resolve"), "{report}");
}

/// A credential that fails as Entra does for a wrong client secret.
#[derive(Debug)]
struct WrongSecret;

#[async_trait::async_trait]
impl TokenCredential for WrongSecret {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "ClientSecretCredential authentication failed. AADSTS7000215: Invalid client secret provided. \
             Ensure the secret being sent in the request is the client secret value, not the client secret ID",
        ))
    }
}

#[test]
fn a_credential_failure_skips_the_uploads_and_names_the_secret() {
    let _limit = common::time_limit();
    let emu = declared();
    let client = LogsIngestionClient::builder(emu.endpoint(), Arc::new(WrongSecret))
        .build()
        .unwrap();
    let report = client.check_blocking(RULE, STREAM);
    let credential = &report.steps[0];
    assert_eq!(
        (credential.verdict, credential.finding),
        (Verdict::Fail, Finding::Credential),
        "{report}"
    );
    assert!(hint(credential).contains("AZURE_CLIENT_SECRET"), "{report}");
    assert!(credential.detail.contains("AADSTS7000215"), "{report}");
    assert_eq!(report.steps[1].verdict, Verdict::Pass, "the endpoint is still checked");
    assert_eq!(upload(&report).verdict, Verdict::Skipped);
    assert_eq!(emu.row_count(STREAM), 0);
}

#[test]
fn an_audience_for_another_cloud_is_a_warning() {
    let _limit = common::time_limit();
    struct Local;
    impl reqwest::dns::Resolve for Local {
        fn resolve(&self, _: reqwest::dns::Name) -> reqwest::dns::Resolving {
            Box::pin(async { Ok(Box::new(std::iter::empty()) as reqwest::dns::Addrs) })
        }
    }
    let http = reqwest::Client::builder()
        .dns_resolver(Arc::new(Local))
        .build()
        .unwrap();
    let client = LogsIngestionClient::builder(
        "https://my-dce.usgovvirginia-1.ingest.monitor.azure.us",
        StaticTokenCredential::new("t"),
    )
    .http_client(http)
    .request_timeout(Duration::from_secs(5))
    .build()
    .unwrap();
    let report = client.check_blocking(RULE, STREAM);
    let credential = &report.steps[0];
    assert_eq!(
        (credential.verdict, credential.finding),
        (Verdict::Warn, Finding::AudienceMismatch),
        "{report}"
    );
    assert!(
        hint(credential).contains("https://monitor.azure.us//.default"),
        "{report}"
    );
}

#[test]
fn the_builder_and_the_guard_check_every_stream() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .declare_stream(RULE, STREAM, vec![Column::new("TimeGenerated", ColumnType::DateTime)])
        .declare_stream(
            RULE,
            "Custom-Audit_CL",
            vec![Column::new("TimeGenerated", ColumnType::DateTime)],
        )
        .start()
        .unwrap();
    let missing = AzureLogs::builder().stream(STREAM).check();
    assert_eq!(missing.steps[0].finding, Finding::Settings, "{missing}");
    assert!(missing.steps[0].detail.contains("endpoint, rule_id"), "{missing}");

    let builder = emu
        .logs_builder(RULE, STREAM)
        .route_target("audit", "Custom-Audit_CL")
        .route_target("billing", "Custom-Billing_CL")
        .drop_column(RowColumn::Thread);
    let report = builder.check();
    let uploads: Vec<_> = report
        .steps_of(&Step::Upload {
            rule_id: String::new(),
            stream: String::new(),
        })
        .collect();
    assert_eq!(uploads.len(), 3, "{report}");
    assert_eq!(uploads[2].finding, Finding::StreamNotFound, "{report}");
    assert!(!report.is_healthy());
    assert_eq!(report.first_failure().unwrap().finding, Finding::StreamNotFound);

    let (_layer, guard) = emu.logs_builder(RULE, STREAM).build().unwrap();
    let _audit = guard.table::<serde_json::Value>("Custom-Audit_CL");
    let report = guard.check();
    assert!(report.is_healthy(), "{report}");
    assert_eq!(report.steps.len(), 4, "credential, endpoint, two streams: {report}");
}
