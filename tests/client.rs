//! LogsIngestionClient against the emulator: what arrived, on the wire, decides.
#![cfg(feature = "emulator")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use serde_json::{Value, json};
use tracing_azure_logs::client::{
    ConfigError, ContentEncoding, FailedBatch, FailureReason, LogsIngestionClient, LogsIngestionClientBuilder,
    MAX_BODY_BYTES, RetryPolicy, StaticTokenCredential,
};
use tracing_azure_logs::emulator::{Emulator, Fault};

const RULE: &str = "dcr-00000000000000000000000000000001";
const STREAM: &str = "Custom-Test_CL";
const LIMIT: Duration = Duration::from_secs(60);

fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_base_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(200))
        .with_deadline(Duration::from_secs(30))
}

fn client(emu: &Emulator) -> LogsIngestionClientBuilder {
    emu.client().retry_policy(fast_retries())
}

/// Runs an async test body with a time limit; the watchdog also ends a body that blocks the
/// runtime's thread, where the timer cannot fire.
async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    let _limit = common::time_limit();
    tokio::time::timeout(LIMIT, f).await.expect("test took too long");
}

/// `n` distinct rows whose JSON array `[r0,...]` is exactly `array_len` bytes.
fn rows_with_array_len(array_len: usize, n: usize) -> Vec<Value> {
    let row_bytes = array_len - 2 - (n - 1);
    let each = row_bytes / n;
    (0..n)
        .map(|i| {
            let target = if i == n - 1 { row_bytes - each * (n - 1) } else { each };
            let bare = serde_json::to_vec(&json!({"i": i, "p": ""})).unwrap().len();
            json!({"i": i, "p": "x".repeat(target - bare)})
        })
        .collect()
}

fn array_len(rows: &[Value]) -> usize {
    serde_json::to_vec(rows).unwrap().len()
}

/// Pseudo-random text over a 64-character alphabet: gzip gains little on it.
fn noise(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ALPHABET[(s % 64) as usize] as char
        })
        .collect()
}

fn assert_no_413(emu: &Emulator) {
    for r in emu.requests() {
        assert_ne!(r.status, Some(413), "the emulator answered 413: {r:?}");
        assert!(r.wire_bytes <= MAX_BODY_BYTES as u64);
    }
}

#[tokio::test]
async fn batch_boundaries_are_exact() {
    bounded(async {
        for (len, requests) in [(MAX_BODY_BYTES - 1, 1), (MAX_BODY_BYTES, 1), (MAX_BODY_BYTES + 1, 2)] {
            // strict_size: the emulator also refuses an uncompressed array over 1 MiB.
            let emu = Emulator::builder().strict_size(true).start().unwrap();
            let rows = rows_with_array_len(len, 16);
            assert_eq!(array_len(&rows), len);
            let report = client(&emu).build().unwrap().upload(RULE, STREAM, &rows).await.unwrap();
            assert_eq!(
                (report.sent_rows, report.batches),
                (16, requests),
                "array of {len} bytes"
            );
            let log = emu.requests();
            assert_eq!(log.len(), requests, "array of {len} bytes");
            if requests == 1 {
                assert_eq!(log[0].uncompressed_bytes, Some(len as u64));
            } else {
                assert!(
                    log.iter()
                        .all(|r| r.uncompressed_bytes.unwrap() <= MAX_BODY_BYTES as u64)
                );
            }
            assert_eq!(emu.rows(STREAM), rows, "rows arrive once, in order");
            assert_no_413(&emu);
        }
    })
    .await;
}

#[tokio::test]
async fn lone_oversize_row_is_reported_and_never_sent() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let rows = vec![
            json!({"n": 0}),
            json!({"n": 1, "big": "x".repeat(MAX_BODY_BYTES)}),
            json!({"n": 2}),
        ];
        let err = client(&emu)
            .build()
            .unwrap()
            .upload(RULE, STREAM, &rows)
            .await
            .unwrap_err();
        assert_eq!((err.failed, err.total), (1, 3));
        assert_eq!(err.batches.len(), 1);
        assert_eq!(err.batches[0].indices(), &[1]);
        assert!(matches!(
            err.batches[0].reason(),
            FailureReason::RowTooLarge {
                what: "uncompressed JSON",
                ..
            }
        ));
        assert_eq!(err.batches[0].to_values(), vec![rows[1].clone()]);
        assert!(err.to_string().starts_with("1 of 3 rows failed"), "{err}");
        assert_eq!(emu.rows(STREAM), vec![rows[0].clone(), rows[2].clone()]);
        assert_no_413(&emu);

        // With the uncompressed cap raised, a row whose gzip alone is over 1 MiB is refused too.
        let emu = Emulator::start().unwrap();
        let rows = vec![json!({"n": 0, "noise": noise(2 * MAX_BODY_BYTES, 7)}), json!({"n": 1})];
        let c = client(&emu).max_uncompressed_batch(8 * MAX_BODY_BYTES).build().unwrap();
        let err = c.upload(RULE, STREAM, &rows).await.unwrap_err();
        assert!(
            matches!(
                err.batches[0].reason(),
                FailureReason::RowTooLarge { what: "gzipped", .. }
            ),
            "{err}"
        );
        assert_eq!(emu.rows(STREAM), vec![rows[1].clone()]);
        assert_no_413(&emu);
    })
    .await;
}

#[tokio::test]
async fn raised_uncompressed_cap_still_keeps_gzip_under_the_limit() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        // Fields stay under the service's 64 KiB value limit, which the emulator enforces.
        let rows: Vec<Value> = (0..60)
            .map(|i| json!({"i": i, "noise": noise(60_000, i + 1)}))
            .collect();
        let c = client(&emu).max_uncompressed_batch(8 * MAX_BODY_BYTES).build().unwrap();
        let report = c.upload(RULE, STREAM, &rows).await.unwrap();
        assert_eq!(report.sent_rows, 60);
        let log = emu.requests();
        assert!(log.len() >= 3, "{} requests", log.len());
        assert!(
            log.iter()
                .any(|r| r.uncompressed_bytes.unwrap() > MAX_BODY_BYTES as u64)
        );
        let got = emu.rows(STREAM);
        let ids = |rows: &[Value]| rows.iter().map(|r| r["i"].as_u64().unwrap()).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&rows), "every row, once, in order");
        let differing: Vec<u64> = got
            .iter()
            .zip(&rows)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a["i"].as_u64().unwrap())
            .collect();
        assert!(differing.is_empty(), "rows {differing:?} arrived changed");
        assert_no_413(&emu);
    })
    .await;
}

#[tokio::test]
async fn wire_format_gzip_headers_and_request_id() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        emu.inject(Fault::Status(500), 1);
        let rows: Vec<Value> = (0..100).map(|i| json!({"i": i, "msg": "hello hello hello"})).collect();
        let c = client(&emu).user_agent_suffix("my-app/2").build().unwrap();
        c.upload(RULE, STREAM, &rows).await.unwrap();
        let log = emu.requests();
        assert_eq!(log.len(), 2);
        for r in &log {
            assert_eq!(r.content_encoding.as_deref(), Some("gzip"));
            assert_eq!(r.content_type.as_deref(), Some("application/json"));
            assert_eq!(r.api_version.as_deref(), Some("2023-01-01"));
            assert!(r.authorized);
            if r.status == Some(204) {
                assert!(r.wire_bytes < r.uncompressed_bytes.unwrap() / 3, "gzipped: {r:?}");
            }
            let agent = r.user_agent.as_deref().unwrap();
            assert!(
                agent.starts_with(&format!("tracing-azure-logs/{}", env!("CARGO_PKG_VERSION"))),
                "{agent}"
            );
            assert!(agent.ends_with(" my-app/2"), "{agent}");
        }
        let id = log[0].client_request_id.clone().unwrap();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert_eq!(
            log[1].client_request_id.as_deref(),
            Some(id.as_str()),
            "the id is kept across retries"
        );
        assert_eq!(emu.rows(STREAM), rows);

        // A second upload gets a new id.
        c.upload(RULE, STREAM, &rows[..1]).await.unwrap();
        assert_ne!(emu.requests()[2].client_request_id.as_deref(), Some(id.as_str()));
    })
    .await;
}

#[tokio::test]
async fn in_flight_requests_reach_but_never_pass_max_concurrency() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        emu.inject(Fault::Latency(Duration::from_millis(300)), 12);
        let rows: Vec<Value> = (0..48).map(|i| json!({"i": i, "p": "y".repeat(1000)})).collect();
        let c = client(&emu)
            .max_concurrency(3)
            .max_uncompressed_batch(4 * 1024)
            .build()
            .unwrap();
        let report = c.upload(RULE, STREAM, &rows).await.unwrap();
        assert_eq!(report.batches, 12);
        assert_eq!(emu.stats().max_in_flight, 3);
        let mut got = emu.rows(STREAM);
        got.sort_by_key(|r| r["i"].as_u64());
        assert_eq!(got, rows);
    })
    .await;
}

#[tokio::test]
async fn throttling_honours_retry_after() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        emu.inject(Fault::Throttle { retry_after_secs: 1 }, 1);
        let rows = vec![json!({"a": 1})];
        // Base delay far below a second: only Retry-After explains a one-second gap.
        let report = client(&emu).build().unwrap().upload(RULE, STREAM, &rows).await.unwrap();
        assert_eq!((report.requests, report.retries), (2, 1));
        let log = emu.requests();
        assert_eq!(log[0].status, Some(429));
        let gap = log[1].started.duration_since(log[0].started);
        assert!(
            gap >= Duration::from_secs(1) && gap < Duration::from_secs(3),
            "gap {gap:?}"
        );
        assert_eq!(emu.rows(STREAM), rows);

        emu.inject(Fault::ThrottleMs { retry_after_ms: 400 }, 1);
        client(&emu).build().unwrap().upload(RULE, STREAM, &rows).await.unwrap();
        let log = emu.requests();
        let gap = log[3].started.duration_since(log[2].started);
        assert!(
            gap >= Duration::from_millis(400) && gap < Duration::from_millis(2000),
            "gap {gap:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn transient_faults_end_with_every_row_accepted() {
    bounded(async {
        let faults = [
            Fault::Status(500),
            Fault::Status(502),
            Fault::Status(503),
            Fault::Status(504),
            Fault::Status(408),
            Fault::DropConnection,
            Fault::Latency(Duration::from_secs(3)),
        ];
        for fault in faults {
            let emu = Emulator::start().unwrap();
            emu.inject(fault.clone(), 2);
            let rows: Vec<Value> = (0..50).map(|i| json!({"i": i})).collect();
            let c = client(&emu)
                .request_timeout(Duration::from_millis(300))
                .build()
                .unwrap();
            let report = c.upload(RULE, STREAM, &rows).await.unwrap();
            assert_eq!(report.sent_rows, 50, "{fault:?}");
            assert_eq!(report.retries, 2, "{fault:?}");
            // At-least-once: a timed-out request may have been stored; every row is there.
            let mut got = emu.rows(STREAM);
            got.sort_by_key(|r| r["i"].as_u64());
            got.dedup();
            assert_eq!(got, rows, "{fault:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn by_default_retries_go_on_until_the_deadline_not_a_count() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        // More failures in a row than the old default of 5 attempts allowed.
        emu.inject(Fault::Status(503), 12);
        let policy = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(20));
        let c = emu.client().retry_policy(policy).build().unwrap();
        let report = c.upload(RULE, STREAM, [json!({"a": 1})]).await.unwrap();
        assert_eq!((report.requests, report.retries), (13, 12));
        assert_eq!(emu.rows(STREAM), vec![json!({"a": 1})]);
    })
    .await;
}

#[tokio::test]
async fn a_zero_retry_after_does_not_shorten_the_backoff() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        emu.inject(Fault::Throttle { retry_after_secs: 0 }, 4);
        let policy = RetryPolicy::default()
            .with_base_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(1));
        let c = emu.client().retry_policy(policy).build().unwrap();
        c.upload(RULE, STREAM, [json!({"a": 1})]).await.unwrap();
        let log = emu.requests();
        assert_eq!(log.len(), 5);
        // Waits of at least 80, 160, 320 and 640 ms (the backoff less its jitter), not zero.
        for (retry, pair) in log.windows(2).enumerate() {
            let gap = pair[1].started.duration_since(pair[0].started);
            let least = Duration::from_millis(80 << retry);
            assert!(gap >= least, "retry {}: {gap:?} < {least:?}", retry + 1);
        }
    })
    .await;
}

#[tokio::test]
async fn retries_stop_at_max_attempts() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        emu.inject(Fault::Status(503), 10);
        let c = client(&emu)
            .retry_policy(fast_retries().with_max_attempts(3))
            .build()
            .unwrap();
        let err = c.upload(RULE, STREAM, [json!({"a": 1})]).await.unwrap_err();
        assert_eq!(emu.requests().len(), 3);
        match err.batches[0].reason() {
            FailureReason::RetriesExhausted { attempts, last_error } => {
                assert_eq!(*attempts, 3);
                assert!(last_error.contains("503"), "{last_error}");
            }
            other => panic!("{other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_rows_come_back() {
    bounded(async {
        for (status, hint) in [
            (400, "stream declaration"),
            (403, "Monitoring Metrics Publisher"),
            (404, "stream name"),
            (413, "size limit"),
        ] {
            let emu = Emulator::start().unwrap();
            emu.inject(Fault::Status(status), 1);
            let rows: Vec<Value> = (0..3).map(|i| json!({"i": i})).collect();
            let c = client(&emu).build().unwrap();

            let err = c.upload(RULE, STREAM, &rows).await.unwrap_err();
            assert_eq!(emu.requests().len(), 1, "HTTP {status} is not retried");
            assert_eq!((err.failed, err.total), (3, 3));
            let batch = &err.batches[0];
            assert!(matches!(batch.reason(), FailureReason::Rejected { status: s, .. } if *s == status));
            assert!(err.to_string().contains(hint), "{err}");
            assert_eq!(batch.to_values(), rows);
            assert_eq!(batch.indices(), &[0, 1, 2]);
            assert_eq!((batch.rule_id(), batch.stream()), (RULE, STREAM));

            // The same through on_error: the callback gets the rows, the call returns a report.
            emu.inject(Fault::Status(status), 1);
            let seen: Arc<Mutex<Vec<FailedBatch>>> = Arc::default();
            let sink = seen.clone();
            let report = c
                .upload_with(RULE, STREAM, &rows, Arc::new(move |f| sink.lock().unwrap().push(f)))
                .await;
            assert_eq!((report.sent_rows, report.failed_rows), (0, 3));
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].to_values(), rows);
            assert_eq!(emu.requests().len(), 2);
            assert_eq!(emu.row_count(STREAM), 0);
        }
    })
    .await;
}

#[tokio::test]
async fn unknown_stream_404_names_what_to_check() {
    bounded(async {
        let emu = Emulator::builder()
            .declare_stream(
                RULE,
                STREAM,
                vec![tracing_azure_logs::emulator::Column::new(
                    "i",
                    tracing_azure_logs::emulator::ColumnType::Long,
                )],
            )
            .start()
            .unwrap();
        let c = client(&emu).build().unwrap();
        let err = c.upload(RULE, "Custom-Typo_CL", [json!({"i": 1})]).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("HTTP 404") && text.contains("DCR immutable id"), "{text}");
        assert_eq!(emu.requests().len(), 1);
        c.upload(RULE, STREAM, [json!({"i": 1})]).await.unwrap();
        assert_eq!(emu.row_count(STREAM), 1);
    })
    .await;
}

/// A credential that counts calls and takes a while to answer.
#[derive(Debug)]
struct SlowCounting {
    inner: Arc<dyn TokenCredential>,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl TokenCredential for SlowCounting {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.inner.get_token(scopes, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_uploads_make_one_token_request() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let credential = Arc::new(SlowCounting {
            inner: emu.credential(),
            calls: AtomicU64::new(0),
        });
        let c = LogsIngestionClient::builder(emu.endpoint(), credential.clone())
            .build()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let c = c.clone();
            tasks.spawn(async move { c.upload(RULE, STREAM, [json!({"i": i})]).await.unwrap() });
        }
        while let Some(done) = tasks.join_next().await {
            assert_eq!(done.unwrap().sent_rows, 1);
        }
        assert_eq!(credential.calls.load(Ordering::SeqCst), 1);
        assert_eq!(c.token_requests(), 1);
        assert_eq!(emu.row_count(STREAM), 100);
    })
    .await;
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let c = client(&emu).build().unwrap();
        c.upload(RULE, STREAM, [json!({"n": 1})]).await.unwrap();
        assert_eq!(emu.token_requests(), 1);

        emu.set_token(Some("rotated-token".into()));
        c.upload(RULE, STREAM, [json!({"n": 2})]).await.unwrap();
        assert_eq!(emu.token_requests(), 2, "one refresh after the 401");
        let statuses: Vec<_> = emu.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![Some(204), Some(401), Some(204)]);
        assert_eq!(emu.row_count(STREAM), 2);
    })
    .await;
}

#[tokio::test]
async fn a_token_refused_twice_fails_with_the_audience_hint_and_no_token_in_it() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let c = LogsIngestionClient::builder(emu.endpoint(), StaticTokenCredential::new("wrong-token-value"))
            .build()
            .unwrap();
        let err = c.upload(RULE, STREAM, [json!({"n": 1})]).await.unwrap_err();
        assert_eq!(emu.requests().len(), 2, "one retry after a refresh, then stop");
        let text = format!("{err} {err:?}");
        assert!(text.contains("HTTP 401") && text.contains("audience"), "{text}");
        assert!(!text.contains("wrong-token-value"), "{text}");
        assert!(!format!("{c:?}").contains("wrong-token-value"));
    })
    .await;
}

#[test]
fn plain_http_to_a_remote_host_is_refused_at_build() {
    let cred: Arc<dyn TokenCredential> = StaticTokenCredential::new("t");
    let err = LogsIngestionClient::new("http://my-dce.eastus-1.ingest.monitor.azure.com", cred.clone()).unwrap_err();
    assert!(matches!(err, ConfigError::InsecureEndpoint { .. }));
    assert!(err.to_string().contains("use https://"), "{err}");
    assert!(LogsIngestionClient::new("http://127.0.0.1:9", cred.clone()).is_ok());
    assert!(LogsIngestionClient::new("https://my-dce.eastus-1.ingest.monitor.azure.com", cred.clone()).is_ok());
}

#[test]
fn an_endpoint_with_a_password_is_refused_without_echoing_it() {
    let cred: Arc<dyn TokenCredential> = StaticTokenCredential::new("t");
    let err =
        LogsIngestionClient::new("https://user:hunter2@my-dce.eastus-1.ingest.monitor.azure.com", cred).unwrap_err();
    assert!(matches!(err, ConfigError::InvalidEndpoint { .. }), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("user name or password") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn upload_blocking_without_a_runtime() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let c = client(&emu).build().unwrap();
    let rows: Vec<Value> = (0..10).map(|i| json!({"i": i})).collect();
    let report = c.upload_blocking(RULE, STREAM, &rows).unwrap();
    assert_eq!(report.sent_rows, 10);
    assert_eq!(emu.rows(STREAM), rows);
}

#[tokio::test(flavor = "current_thread")]
async fn upload_blocking_inside_a_current_thread_runtime_does_not_panic() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let c = client(&emu).build().unwrap();
    let report = c
        .upload_blocking(RULE, STREAM, [json!({"x": 1}), json!({"x": 2})])
        .unwrap();
    assert_eq!(report.sent_rows, 2);
    assert_eq!(emu.row_count(STREAM), 2);
}

#[tokio::test]
async fn non_object_rows_are_refused_without_sending() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let c = client(&emu).build().unwrap();
        let err = c
            .upload(RULE, STREAM, [json!({"ok": 1}), json!([1, 2]), json!("text")])
            .await
            .unwrap_err();
        assert_eq!((err.failed, err.total), (2, 3));
        assert!(
            err.batches
                .iter()
                .all(|b| matches!(b.reason(), FailureReason::InvalidRow(_)))
        );
        assert_eq!(emu.rows(STREAM), vec![json!({"ok": 1})]);
    })
    .await;
}

#[tokio::test]
async fn upload_raw_checks_size_before_sending() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let c = client(&emu).build().unwrap();
        let err = c
            .upload_raw(RULE, STREAM, vec![b' '; MAX_BODY_BYTES + 1], ContentEncoding::Identity)
            .await
            .unwrap_err();
        assert!(matches!(err, FailureReason::BodyTooLarge { size, .. } if size == MAX_BODY_BYTES + 1));
        assert!(emu.requests().is_empty(), "nothing was sent");

        c.upload_raw(RULE, STREAM, br#"[{"a":1}]"#.to_vec(), ContentEncoding::Identity)
            .await
            .unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, br#"[{"a":2}]"#).unwrap();
        c.upload_raw(RULE, STREAM, gz.finish().unwrap(), ContentEncoding::Gzip)
            .await
            .unwrap();
        assert_eq!(emu.rows(STREAM), vec![json!({"a": 1}), json!({"a": 2})]);
        let log = emu.requests();
        assert_eq!(log[0].content_encoding, None);
        assert_eq!(log[1].content_encoding.as_deref(), Some("gzip"));
    })
    .await;
}

/// Never answers.
#[derive(Debug)]
struct Silent;

#[async_trait::async_trait]
impl TokenCredential for Silent {
    async fn get_token(&self, _: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        std::future::pending().await
    }
}

/// Fails its call number `fails` (from 0), and hands out the emulator's token otherwise.
#[derive(Debug)]
struct FlakyOnce {
    inner: Arc<dyn TokenCredential>,
    calls: AtomicU64,
    fails: u64,
}

/// A client whose credential fails its call number `fails` (from 0).
fn flaky_client(emu: &Emulator, fails: u64) -> (Arc<FlakyOnce>, LogsIngestionClient) {
    let credential = Arc::new(FlakyOnce {
        inner: emu.credential(),
        calls: AtomicU64::new(0),
        fails,
    });
    let client = LogsIngestionClient::builder(emu.endpoint(), credential.clone())
        .retry_policy(fast_retries())
        .build()
        .unwrap();
    (credential, client)
}

#[async_trait::async_trait]
impl TokenCredential for FlakyOnce {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.fails {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "identity endpoint briefly unavailable",
            ));
        }
        self.inner.get_token(scopes, options).await
    }
}

#[tokio::test]
async fn a_credential_that_never_answers_fails_within_the_retry_deadline() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let deadline = Duration::from_millis(500);
        let c = LogsIngestionClient::builder(emu.endpoint(), Arc::new(Silent))
            .retry_policy(fast_retries().with_deadline(deadline))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = c.upload(RULE, STREAM, [json!({"a": 1})]).await.unwrap_err();
        assert!(
            started.elapsed() < deadline + Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(err.batches[0].reason(), FailureReason::Authentication { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("no token within"), "{err}");
        assert!(emu.requests().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_token_error_is_retried_like_any_transient_failure() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let (credential, c) = flaky_client(&emu, 0);
        let report = c.upload(RULE, STREAM, [json!({"a": 1})]).await.unwrap();
        assert_eq!(report.sent_rows, 1);
        assert_eq!(credential.calls.load(Ordering::SeqCst), 2);
        assert_eq!(emu.row_count(STREAM), 1);
    })
    .await;
}

/// The refresh after a 401 fails once: the retry sends the old token, is refused again, and
/// refreshes again (a failed refresh is no refresh).
#[tokio::test]
async fn a_failed_refresh_after_a_401_is_tried_again() {
    bounded(async {
        let emu = Emulator::start().unwrap();
        let (credential, c) = flaky_client(&emu, 1);
        c.upload(RULE, STREAM, [json!({"n": 1})]).await.unwrap();
        emu.set_token(Some("rotated-token".into()));
        let report = c.upload(RULE, STREAM, [json!({"n": 2})]).await.unwrap();
        assert_eq!(report.sent_rows, 1);
        let statuses: Vec<_> = emu.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![Some(204), Some(401), Some(401), Some(204)]);
        assert_eq!(credential.calls.load(Ordering::SeqCst), 3);
        let rows = emu.rows(STREAM);
        assert_eq!(
            rows.iter().map(|r| r["n"].as_i64()).collect::<Vec<_>>(),
            [Some(1), Some(2)]
        );
    })
    .await;
}
