//! Integration tests of the Logs Ingestion API emulator, driven over HTTP with reqwest and raw
//! sockets. Every request has a timeout; every wait is on a condition with a deadline.
#![cfg(feature = "emulator")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing_azure_logs::emulator::{
    Column, ColumnType, Emulator, Fault, FaultRates, MAX_CONTENT_LENGTH, MAX_FIELD_BYTES,
};

const RULE: &str = "dcr-00000000000000000000000000000001";
const STREAM: &str = "Custom-AppLogs_CL";
const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn url(emu: &Emulator, rule: &str, stream: &str) -> String {
    format!(
        "{}/dataCollectionRules/{rule}/streams/{stream}?api-version=2023-01-01",
        emu.endpoint()
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// POSTs `body` to the default rule/stream with the emulator's token.
async fn post(emu: &Emulator, body: impl Into<reqwest::Body>, gzipped: bool) -> reqwest::Response {
    post_to(&client(), emu, &url(emu, RULE, STREAM), body, gzipped)
        .await
        .expect("request failed")
}

async fn post_to(
    client: &reqwest::Client,
    emu: &Emulator,
    url: &str,
    body: impl Into<reqwest::Body>,
    gzipped: bool,
) -> reqwest::Result<reqwest::Response> {
    let mut req = client.post(url).header("content-type", "application/json").body(body);
    if let Some(token) = emu.token() {
        req = req.bearer_auth(token);
    }
    if gzipped {
        req = req.header("content-encoding", "gzip");
    }
    req.send().await
}

/// Asserts an error answer: status, `x-ms-error-code`, body shape; returns (code, message).
async fn expect_error(resp: reqwest::Response, status: u16) -> (String, String) {
    assert_eq!(resp.status().as_u16(), status);
    let header = resp
        .headers()
        .get("x-ms-error-code")
        .expect("x-ms-error-code header")
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).expect("JSON error body");
    let code = body["error"]["code"].as_str().expect("error.code").to_owned();
    let message = body["error"]["message"].as_str().expect("error.message").to_owned();
    assert_eq!(code, header);
    assert!(!message.is_empty());
    (code, message)
}

fn sample_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "TimeGenerated": "2024-05-01T12:00:00.000001Z",
                "Level": "INFO",
                "Message": format!("row {i} — ünïcödé"),
                "Properties": {"i": i, "nested": [1, 2.5, null, true]},
            })
        })
        .collect()
}

/// Sends a raw HTTP/1.1 request (with `Connection: close`) and reads the answer:
/// (status, lower-cased head, body).
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn chunked_request(emu: &Emulator, chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut req = format!(
        "POST /dataCollectionRules/{RULE}/streams/{STREAM}?api-version=2023-01-01 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        emu.token().unwrap()
    )
    .into_bytes();
    for c in chunks {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[tokio::test]
async fn accepts_plain_and_gzipped_rows_and_reads_them_back() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let rows = sample_rows(3);
    let plain = serde_json::to_vec(&rows).unwrap();
    let resp = post(&emu, plain.clone(), false).await;
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.bytes().await.unwrap().len(), 0, "204 has an empty body");

    let more = sample_rows(5);
    let raw = serde_json::to_vec_pretty(&more).unwrap();
    let gz = gzip(&raw);
    let resp = client()
        .post(url(&emu, RULE, STREAM))
        .bearer_auth(emu.token().unwrap())
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("user-agent", "emulator-test/1.0")
        .header("x-ms-client-request-id", "req-42")
        .body(gz.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    assert!(emu.wait_for_rows(STREAM, 8, WAIT));
    let mut expected = rows.clone();
    expected.extend(more);
    assert_eq!(emu.rows(STREAM), expected);
    assert_eq!(emu.row_count(STREAM), 8);
    assert_eq!(emu.streams(), vec![STREAM.to_owned()]);

    let log = emu.requests();
    assert_eq!(log.len(), 2);
    let (first, second) = (&log[0], &log[1]);
    assert_eq!(first.status, Some(204));
    assert_eq!(first.rows, 3);
    assert_eq!(first.wire_bytes, plain.len() as u64);
    assert_eq!(first.uncompressed_bytes, Some(plain.len() as u64));
    assert_eq!(first.content_length, Some(plain.len() as u64));
    assert_eq!(first.content_encoding, None);
    assert_eq!(second.method, "POST");
    assert_eq!(second.rule_id.as_deref(), Some(RULE));
    assert_eq!(second.stream.as_deref(), Some(STREAM));
    assert_eq!(second.api_version.as_deref(), Some("2023-01-01"));
    assert_eq!(second.http_version, "HTTP/1.1");
    assert_eq!(second.wire_bytes, gz.len() as u64);
    assert_eq!(second.uncompressed_bytes, Some(raw.len() as u64));
    assert_eq!(second.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(second.content_type.as_deref(), Some("application/json"));
    assert_eq!(second.user_agent.as_deref(), Some("emulator-test/1.0"));
    assert_eq!(second.client_request_id.as_deref(), Some("req-42"));
    assert!(second.authorized);
    assert_eq!(second.rows, 5);
    assert_eq!(second.fault, None);
    assert_eq!(second.error_code, None);
    assert!(second.started >= first.started);

    let stats = emu.stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.accepted_requests, 2);
    assert_eq!(stats.rejected_requests, 0);
    assert_eq!(stats.rows_accepted, 8);
    assert_eq!(stats.wire_bytes, (plain.len() + gz.len()) as u64);
    assert_eq!(stats.uncompressed_bytes, (plain.len() + raw.len()) as u64);
    assert_eq!(stats.in_flight, 0);
    assert!(stats.max_in_flight >= 1);
}

#[tokio::test]
async fn empty_array_is_accepted_and_path_segments_are_percent_decoded() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let resp = post(&emu, "[]", false).await;
    assert_eq!(resp.status().as_u16(), 204);
    let encoded = url(&emu, "dcr%2Dabc", "Custom-My%5FTable_CL").replace("2023-01-01", "2021-11-01-preview");
    let resp = post_to(&client(), &emu, &encoded, r#"[{"a":1}]"#, false).await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(emu.rows("Custom-My_Table_CL"), vec![json!({"a": 1})]);
    let log = emu.requests();
    assert_eq!(log[1].rule_id.as_deref(), Some("dcr-abc"));
    assert_eq!(log[1].api_version.as_deref(), Some("2021-11-01-preview"));
    assert_eq!(log[0].rows, 0);
    assert_eq!(emu.row_count(STREAM), 0);
}

#[tokio::test]
async fn api_version_missing_or_unknown_is_400() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let base = format!("{}/dataCollectionRules/{RULE}/streams/{STREAM}", emu.endpoint());
    for (query, code) in [
        ("", "MissingApiVersionParameter"),
        ("?api-version=2099-01-01", "InvalidApiVersionParameter"),
        ("?other=1", "MissingApiVersionParameter"),
    ] {
        let resp = post_to(&client(), &emu, &format!("{base}{query}"), "[]", false)
            .await
            .unwrap();
        assert_eq!(expect_error(resp, 400).await.0, code, "{query}");
    }
    assert_eq!(emu.stats().rejected_requests, 3);
    assert_eq!(emu.stats().accepted_requests, 0);
}

#[tokio::test]
async fn bearer_token_is_required_and_can_rotate() {
    let _limit = common::time_limit();
    let builder = Emulator::builder().token("secret-1");
    assert!(!format!("{builder:?}").contains("secret-1"), "Debug hides the token");
    let emu = builder.start().unwrap();
    assert!(!format!("{emu:?}").contains("secret-1"));
    assert!(!format!("{:?}", emu.credential()).contains("secret-1"));
    assert_eq!(emu.token().as_deref(), Some("secret-1"));
    let u = url(&emu, RULE, STREAM);
    let c = client();

    let missing = c.post(&u).body("[]").send().await.unwrap();
    let (code, message) = expect_error(missing, 401).await;
    assert_eq!(code, "InvalidAuthenticationToken");
    assert!(message.contains("missing"), "{message}");
    let wrong = c.post(&u).bearer_auth("secret-2").body("[]").send().await.unwrap();
    expect_error(wrong, 401).await;
    let not_bearer = c
        .post(&u)
        .header("authorization", "Basic secret-1")
        .body("[]")
        .send()
        .await
        .unwrap();
    expect_error(not_bearer, 401).await;
    let ok = c.post(&u).bearer_auth("secret-1").body("[]").send().await.unwrap();
    assert_eq!(ok.status().as_u16(), 204);
    let log = emu.requests();
    assert_eq!(
        log.iter().map(|r| r.authorized).collect::<Vec<_>>(),
        [false, false, false, true]
    );

    // Rotation: the old token stops working, the credential follows.
    emu.set_token(Some("secret-2".into()));
    let old = c.post(&u).bearer_auth("secret-1").body("[]").send().await.unwrap();
    expect_error(old, 401).await;
    let cred = emu.credential();
    let token = cred
        .get_token(&["https://monitor.azure.com//.default"], None)
        .await
        .unwrap();
    assert_eq!(token.token.secret(), "secret-2");
    assert!(token.expires_on > azure_core::time::OffsetDateTime::now_utc());
    assert_eq!(emu.token_requests(), 1);
    let new = c
        .post(&u)
        .bearer_auth(token.token.secret())
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(new.status().as_u16(), 204);

    // Auth off: anything goes.
    emu.set_token(None);
    let none = c.post(&u).body("[]").send().await.unwrap();
    assert_eq!(none.status().as_u16(), 204);

    let open = Emulator::builder().no_auth().start().unwrap();
    assert_eq!(open.token(), None);
    let resp = client().post(url(&open, RULE, STREAM)).body("[]").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

#[tokio::test]
async fn malformed_bodies_are_400_with_the_error_shape() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let cases: Vec<(&str, Vec<u8>, bool, &str)> = vec![
        (
            "bad gzip",
            b"definitely not gzip".to_vec(),
            true,
            "InvalidContentEncoding",
        ),
        (
            "truncated gzip",
            gzip(b"[{\"a\":1}]")[..10].to_vec(),
            true,
            "InvalidContentEncoding",
        ),
        ("object", br#"{"a":1}"#.to_vec(), false, "InvalidPayload"),
        ("string", br#""[]""#.to_vec(), false, "InvalidPayload"),
        (
            "element not object",
            br#"[{"a":1}, 5]"#.to_vec(),
            false,
            "InvalidPayload",
        ),
        ("array element", br#"[[1]]"#.to_vec(), false, "InvalidPayload"),
        ("gzipped non-array", gzip(b"42"), true, "InvalidPayload"),
        ("invalid json", b"[{\"a\":}]".to_vec(), false, "InvalidJson"),
        ("trailing garbage", b"[] x".to_vec(), false, "InvalidJson"),
        ("empty", Vec::new(), false, "InvalidJson"),
        ("not utf-8", b"[{\"a\":\"\xff\"}]".to_vec(), false, "InvalidJson"),
        ("deep nesting", "[".repeat(100_000).into_bytes(), false, "InvalidJson"),
        (
            "deep nesting in a row",
            format!("[{{\"a\":{}", "[".repeat(100_000)).into_bytes(),
            false,
            "InvalidJson",
        ),
    ];
    for (name, body, gz, want) in cases {
        let resp = post(&emu, body, gz).await;
        let (code, _) = expect_error(resp, 400).await;
        assert_eq!(code, want, "{name}");
    }
    let resp = client()
        .post(url(&emu, RULE, STREAM))
        .bearer_auth(emu.token().unwrap())
        .header("content-encoding", "br")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(resp, 400).await.0, "UnsupportedContentEncoding");
    assert_eq!(emu.row_count(STREAM), 0, "no row of a rejected body is kept");
    // Still serving.
    assert_eq!(post(&emu, "[{}]", false).await.status().as_u16(), 204);
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_405() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let resp = post_to(
        &client(),
        &emu,
        &format!("{}/streams/{STREAM}?api-version=2023-01-01", emu.endpoint()),
        "[]",
        false,
    )
    .await
    .unwrap();
    expect_error(resp, 404).await;
    let resp = client()
        .get(url(&emu, RULE, STREAM))
        .bearer_auth(emu.token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    expect_error(resp, 405).await;
}

/// A JSON array of exactly `len` bytes: `[{"p":"xxx…"}]`.
fn array_of_len(len: usize) -> Vec<u8> {
    let overhead = r#"[{"p":""}]"#.len();
    format!(r#"[{{"p":"{}"}}]"#, "x".repeat(len - overhead)).into_bytes()
}

#[tokio::test]
async fn content_length_over_1_mib_gets_the_service_413() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let at_limit = array_of_len(MAX_CONTENT_LENGTH);
    assert_eq!(at_limit.len(), 1_048_576);
    assert_eq!(post(&emu, at_limit, false).await.status().as_u16(), 204);

    let over = array_of_len(MAX_CONTENT_LENGTH + 1);
    let resp = post(&emu, over, false).await;
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(resp.headers()["x-ms-error-code"], "ContentLengthLimitExceeded");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":{"code":"ContentLengthLimitExceeded","message":"Maximum allowed content length: 1048576 bytes (1 MB). Provided content length: 1048577 bytes."}}"#
    );
    // The gzipped size is what counts: a gzip over 1 MiB is refused whatever it decodes to.
    let mut noise = Vec::with_capacity(1_100_000);
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    while noise.len() < 1_100_000 {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        noise.extend_from_slice(&rng_state.to_le_bytes());
    }
    let gz = gzip(&noise);
    assert!(gz.len() > MAX_CONTENT_LENGTH);
    let resp = post(&emu, gz.clone(), true).await;
    let (code, message) = expect_error(resp, 413).await;
    assert_eq!(code, "ContentLengthLimitExceeded");
    assert!(message.ends_with(&format!("Provided content length: {} bytes.", gz.len())));
    assert_eq!(emu.row_count(STREAM), 1);
    let log = emu.requests();
    assert_eq!(log[1].error_code.as_deref(), Some("ContentLengthLimitExceeded"));
    assert_eq!(log[1].content_length, Some(1_048_577));
}

#[tokio::test]
async fn chunked_bodies_are_capped_too() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let addr = emu.addr();
    let small = chunked_request(&emu, &[b"[{\"a\":".to_vec(), b"1}]".to_vec()]);
    let big_body = array_of_len(1_100_000);
    let big = chunked_request(&emu, &big_body.chunks(100_000).map(<[u8]>::to_vec).collect::<Vec<_>>());
    let (small_res, big_res) =
        tokio::task::spawn_blocking(move || (raw_exchange(addr, &small), raw_exchange(addr, &big)))
            .await
            .unwrap();
    assert_eq!(small_res.0, 204);
    assert_eq!(big_res.0, 413);
    assert!(big_res.1.contains("x-ms-error-code: contentlengthlimitexceeded"));
    assert_eq!(
        big_res.2,
        r#"{"error":{"code":"ContentLengthLimitExceeded","message":"Maximum allowed content length: 1048576 bytes (1 MB). Provided content length: 1100000 bytes."}}"#
    );
    assert_eq!(emu.rows(STREAM), vec![json!({"a": 1})]);
    assert_eq!(emu.requests()[1].content_length, None);
}

#[tokio::test]
async fn uncompressed_size_cap_is_opt_in_and_decompressed_cap_applies() {
    let _limit = common::time_limit();
    let big = array_of_len(1_500_000);
    let gz = gzip(&big);
    assert!(gz.len() < MAX_CONTENT_LENGTH);

    let lenient = Emulator::start().unwrap();
    assert_eq!(post(&lenient, gz.clone(), true).await.status().as_u16(), 204);

    let strict = Emulator::builder().strict_size(true).start().unwrap();
    let resp = post(&strict, gz.clone(), true).await;
    let (code, message) = expect_error(resp, 413).await;
    assert_eq!(code, "ContentLengthLimitExceeded");
    assert!(message.contains("1500000 bytes"), "{message}");
    // Within both limits is fine in strict mode.
    assert_eq!(
        post(&strict, gzip(&array_of_len(1000)), true).await.status().as_u16(),
        204
    );

    let capped = Emulator::builder().max_decompressed_bytes(1_000_000).start().unwrap();
    let resp = post(&capped, gz, true).await;
    assert_eq!(expect_error(resp, 413).await.0, "PayloadSizeLimitExceeded");
    // The cap holds the decoded text plus 16 bytes per row: one row of 999,984 bytes is exactly
    // at it, one byte more is over.
    let exact = array_of_len(1_000_000 - 16);
    assert_eq!(post(&capped, gzip(&exact), true).await.status().as_u16(), 204);
    let over = array_of_len(1_000_000 - 15);
    let resp = post(&capped, gzip(&over), true).await;
    assert_eq!(expect_error(resp, 413).await.0, "PayloadSizeLimitExceeded");
}

#[tokio::test]
async fn many_tiny_rows_count_against_the_decoding_cap() {
    let _limit = common::time_limit();
    let emu = Emulator::builder().max_decompressed_bytes(1_000_000).start().unwrap();
    // 300,000 rows in 900 KB of text: under the cap as text, but 4.8 MB of rows to hold.
    let bomb = format!("[{}{{}}]", "{},".repeat(299_999));
    assert!(bomb.len() < 1_000_000);
    let resp = post(&emu, gzip(bomb.as_bytes()), true).await;
    let (code, message) = expect_error(resp, 413).await;
    assert_eq!(code, "PayloadSizeLimitExceeded");
    assert!(message.contains("16 bytes each"), "{message}");
    assert_eq!(emu.row_count(STREAM), 0, "nothing of it was stored");
    // 10,000 such rows fit: 30 KB of text and 160 KB of rows.
    let fits = format!("[{}{{}}]", "{},".repeat(9_999));
    assert_eq!(post(&emu, gzip(fits.as_bytes()), true).await.status().as_u16(), 204);
    assert_eq!(emu.row_count(STREAM), 10_000);
}

#[tokio::test]
async fn a_hung_request_is_never_answered_nor_stored() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Hang(Duration::from_millis(400)), 1);
    let t = Instant::now();
    let err = post_to(&client(), &emu, &url(&emu, RULE, STREAM), "[{\"a\":1}]", false).await;
    assert!(err.is_err(), "the connection closes without an answer: {err:?}");
    assert!(t.elapsed() >= Duration::from_millis(400));
    assert!(emu.wait_for_requests(1, WAIT));
    let rec = &emu.requests()[0];
    assert_eq!(rec.status, None);
    assert_eq!(rec.fault, Some(Fault::Hang(Duration::from_millis(400))));
    assert_eq!(emu.row_count(STREAM), 0);
    // A client that gives up first sees a timeout; the next request is served.
    emu.inject(Fault::Hang(Duration::from_secs(30)), 1);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = post_to(&impatient, &emu, &url(&emu, RULE, STREAM), "[{\"a\":2}]", false)
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(post(&emu, "[{\"a\":3}]", false).await.status().as_u16(), 204);
    assert_eq!(emu.rows(STREAM), vec![json!({"a": 3})]);
}

fn declared() -> tracing_azure_logs::emulator::EmulatorBuilder {
    Emulator::builder()
        .declare_stream(
            RULE,
            STREAM,
            vec![
                Column::new("TimeGenerated", ColumnType::DateTime),
                Column::new("Message", ColumnType::String),
                Column::new("Count", ColumnType::Int),
                Column::new("Big", ColumnType::Long),
                Column::new("Ratio", ColumnType::Real),
                Column::new("Ok", ColumnType::Boolean),
                Column::new("Props", ColumnType::Dynamic),
            ],
        )
        .declare_stream(RULE, "Custom-Other_CL", vec![])
}

#[tokio::test]
async fn declared_streams_404_on_unknown_rule_or_stream() {
    let _limit = common::time_limit();
    let emu = declared().start().unwrap();
    let c = client();
    let resp = post_to(&c, &emu, &url(&emu, "dcr-unknown", STREAM), "[]", false)
        .await
        .unwrap();
    let (code, message) = expect_error(resp, 404).await;
    assert_eq!(code, "NotFound");
    assert!(message.contains("dcr-unknown"), "{message}");
    let resp = post_to(&c, &emu, &url(&emu, RULE, "Custom-Nope_CL"), "[]", false)
        .await
        .unwrap();
    let (_, message) = expect_error(resp, 404).await;
    assert!(message.contains("Custom-Nope_CL"), "{message}");
    let resp = post_to(&c, &emu, &url(&emu, RULE, STREAM), "[]", false).await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
}

#[tokio::test]
async fn lenient_schema_nulls_mismatches_and_drops_undeclared_columns() {
    let _limit = common::time_limit();
    let emu = declared().start().unwrap();
    let rows = json!([
        {
            "TimeGenerated": "2024-05-01 12:00:00",
            "Message": "fine",
            "Count": 2147483647,
            "Big": 9007199254740993i64,
            "Ratio": 1,
            "Ok": false,
            "Props": {"any": ["thing"]},
        },
        {
            "TimeGenerated": "last tuesday",
            "Message": 5,
            "Count": 2147483648i64,
            "Big": 1.5,
            "Ratio": "1.0",
            "Ok": "true",
            "Props": "a string is dynamic too",
            "Extra": "dropped",
        },
        {"TimeGenerated": "2024-05-01T12:00:00.123456+02:00", "Count": null},
    ]);
    let resp = post(&emu, serde_json::to_vec(&rows).unwrap(), false).await;
    assert_eq!(resp.status().as_u16(), 204);
    let stored = emu.rows(STREAM);
    assert_eq!(stored[0], rows[0]);
    assert_eq!(
        stored[1],
        json!({
            "TimeGenerated": null,
            "Message": null,
            "Count": null,
            "Big": null,
            "Ratio": null,
            "Ok": null,
            "Props": "a string is dynamic too",
        })
    );
    assert_eq!(stored[2], rows[2]);
}

#[tokio::test]
async fn strict_schema_rejects_naming_row_and_column() {
    let _limit = common::time_limit();
    let emu = declared().strict_schema(true).start().unwrap();
    let good = json!({"TimeGenerated": "2024-05-01T12:00:00Z", "Count": -5});
    for (bad, column) in [
        (json!({"Count": 1.5}), "Count"),
        (json!({"TimeGenerated": "2024-02-30T00:00:00Z"}), "TimeGenerated"),
        (json!({"Unknown": 1}), "Unknown"),
    ] {
        let body = serde_json::to_vec(&json!([good, good, bad])).unwrap();
        let resp = post(&emu, body, false).await;
        let (code, message) = expect_error(resp, 400).await;
        assert_eq!(code, "SchemaMismatch");
        assert!(message.contains("Row 2"), "{message}");
        assert!(message.contains(&format!("'{column}'")), "{message}");
    }
    assert_eq!(emu.row_count(STREAM), 0, "a rejected request keeps no row");
    let resp = post(&emu, serde_json::to_vec(&json!([good])).unwrap(), false).await;
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(emu.rows(STREAM), vec![good]);
}

#[tokio::test]
async fn long_strings_are_truncated_at_64_kib_on_a_char_boundary() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let ascii = "a".repeat(100_000);
    let euro = "€".repeat(30_000); // 3 bytes each: 65,536 is not a boundary
    let exact = "b".repeat(MAX_FIELD_BYTES);
    let nested = "c".repeat(70_000);
    let rows = json!([
        {"A": ascii, "E": euro, "X": exact, "Short": "s", "N": 1},
        {"Dyn": {"inner": nested}},
        {"Small": "unchanged"},
    ]);
    let gz = gzip(&serde_json::to_vec(&rows).unwrap());
    assert_eq!(post(&emu, gz, true).await.status().as_u16(), 204);
    let stored = emu.rows(STREAM);
    let a = stored[0]["A"].as_str().unwrap();
    assert_eq!(a.len(), 65_536);
    let e = stored[0]["E"].as_str().unwrap();
    assert_eq!(e.len(), 65_535);
    assert_eq!(e.chars().count(), 21_845);
    assert!(e.chars().all(|c| c == '€'));
    assert_eq!(stored[0]["X"].as_str().unwrap().len(), MAX_FIELD_BYTES);
    assert_eq!(stored[0]["Short"], "s");
    assert_eq!(stored[0]["N"], 1);
    // Documented: only top-level string values are truncated.
    assert_eq!(stored[1], rows[1]);
    assert_eq!(stored[2], rows[2]);

    // Also with a declared schema (lenient).
    let schema_emu = declared().start().unwrap();
    let body = json!([{"Message": "€".repeat(30_000)}]);
    assert_eq!(
        post(&schema_emu, serde_json::to_vec(&body).unwrap(), false)
            .await
            .status()
            .as_u16(),
        204
    );
    assert_eq!(schema_emu.rows(STREAM)[0]["Message"].as_str().unwrap().len(), 65_535);
}

#[tokio::test]
async fn scripted_faults_are_answered_in_order_and_logged() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Throttle { retry_after_secs: 7 }, 1);
    emu.inject(Fault::ThrottleMs { retry_after_ms: 250 }, 1);
    emu.inject(Fault::Status(500), 2);
    emu.inject(Fault::Status(503), 1);
    emu.inject(Fault::Status(403), 1);
    emu.inject(Fault::Status(404), 1);
    emu.inject(Fault::Status(400), 1);
    let body = r#"[{"a":1}]"#;

    let resp = post(&emu, body, false).await;
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_eq!(expect_error(resp, 429).await.0, "TooManyRequests");
    let resp = post(&emu, body, false).await;
    assert_eq!(resp.headers()["retry-after-ms"], "250");
    assert!(resp.headers().get("retry-after").is_none());
    expect_error(resp, 429).await;
    for (status, code) in [
        (500, "InternalServerError"),
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
        (403, "OperationFailed"),
        (404, "NotFound"),
        (400, "BadRequest"),
    ] {
        let resp = post(&emu, body, false).await;
        assert_eq!(expect_error(resp, status).await.0, code);
    }
    assert_eq!(emu.row_count(STREAM), 0);
    assert_eq!(post(&emu, body, false).await.status().as_u16(), 204);
    assert_eq!(emu.row_count(STREAM), 1);

    let log = emu.requests();
    assert_eq!(log.len(), 9);
    assert_eq!(log[0].fault, Some(Fault::Throttle { retry_after_secs: 7 }));
    assert_eq!(log[0].status, Some(429));
    assert_eq!(log[6].fault, Some(Fault::Status(404)));
    assert_eq!(log[8].fault, None);
    let stats = emu.stats();
    assert_eq!(stats.faults_injected, 8);
    assert_eq!(stats.rejected_requests, 8);
    assert_eq!(stats.accepted_requests, 1);

    // A non-204 success and a "lost upload" 204.
    emu.inject(Fault::Status(200), 1);
    emu.inject(Fault::Status(204), 1);
    assert_eq!(post(&emu, body, false).await.status().as_u16(), 200);
    assert_eq!(post(&emu, body, false).await.status().as_u16(), 204);
    assert_eq!(emu.row_count(STREAM), 1, "injected statuses store no rows");

    // clear_faults drops what is left.
    emu.inject(Fault::Status(500), 10);
    emu.clear_faults();
    assert_eq!(post(&emu, body, false).await.status().as_u16(), 204);
}

#[tokio::test]
async fn dropped_connection_gives_the_client_an_error() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::DropConnection, 1);
    let c = client();
    let err = post_to(&c, &emu, &url(&emu, RULE, STREAM), "[{\"a\":1}]", false).await;
    assert!(err.is_err(), "expected a connection error, got {err:?}");
    assert!(emu.wait_for_requests(1, WAIT));
    let log = emu.requests();
    assert_eq!(log[0].status, None);
    assert_eq!(log[0].fault, Some(Fault::DropConnection));
    assert_eq!(emu.stats().dropped_connections, 1);
    assert_eq!(emu.row_count(STREAM), 0);
    // The same client carries on.
    let ok = post_to(&c, &emu, &url(&emu, RULE, STREAM), "[{\"a\":1}]", false)
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 204);
}

#[tokio::test]
async fn latency_delays_then_handles_normally() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Latency(Duration::from_millis(300)), 1);
    let t = Instant::now();
    let resp = post(&emu, "[{\"a\":1}]", false).await;
    assert_eq!(resp.status().as_u16(), 204);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let rec = &emu.requests()[0];
    assert_eq!(rec.fault, Some(Fault::Latency(Duration::from_millis(300))));
    assert!(rec.duration >= Duration::from_millis(300));
    assert_eq!(rec.rows, 1);
    assert_eq!(emu.row_count(STREAM), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_injected_latency_short() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    emu.inject(Fault::Latency(Duration::from_secs(60)), 1);
    let u = url(&emu, RULE, STREAM);
    let token = emu.token().unwrap();
    let pending = tokio::spawn(async move { client().post(u).bearer_auth(token).body("[{\"a\":1}]").send().await });
    assert!(emu.wait_for_stats(WAIT, |s| s.in_flight == 1));
    let t = Instant::now();
    emu.shutdown();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let res = pending.await.unwrap();
    assert!(res.is_err(), "the stalled request ends without an answer");
}

async fn statuses_with_rates(rates: FaultRates, n: usize) -> (Vec<Option<u16>>, Emulator) {
    let emu = Emulator::builder().fault_rates(rates).start().unwrap();
    let c = client();
    let u = url(&emu, RULE, STREAM);
    let mut out = Vec::new();
    for _ in 0..n {
        let r = post_to(&c, &emu, &u, "[{\"a\":1}]", false).await;
        out.push(r.ok().map(|r| r.status().as_u16()));
    }
    (out, emu)
}

#[tokio::test]
async fn seeded_random_faults_are_reproducible() {
    let _limit = common::time_limit();
    let rates = FaultRates {
        seed: 7,
        throttle: 0.2,
        server_error: 0.15,
        unavailable: 0.15,
        drop_connection: 0.1,
        latency: 0.1,
        latency_duration: Duration::from_millis(1),
        throttle_retry_after_secs: 3,
        ..FaultRates::default()
    };
    let (a, emu_a) = statuses_with_rates(rates.clone(), 40).await;
    let (b, emu_b) = statuses_with_rates(rates.clone(), 40).await;
    assert_eq!(a, b);
    for want in [Some(204), Some(429), Some(500), Some(503), None] {
        assert!(a.contains(&want), "{want:?} missing from {a:?}");
    }
    // The log agrees with what the client saw, and the same faults were drawn.
    let log_a = emu_a.requests();
    assert_eq!(log_a.iter().map(|r| r.status).collect::<Vec<_>>(), a);
    let faults_a: Vec<_> = log_a.iter().map(|r| r.fault.clone()).collect();
    let faults_b: Vec<_> = emu_b.requests().iter().map(|r| r.fault.clone()).collect();
    assert_eq!(faults_a, faults_b);
    assert!(faults_a.contains(&Some(Fault::Latency(Duration::from_millis(1)))));
    assert!(faults_a.contains(&Some(Fault::Throttle { retry_after_secs: 3 })));
    let faulted = faults_a.iter().filter(|f| f.is_some()).count() as u64;
    assert_eq!(emu_a.stats().faults_injected, faulted);

    // Another seed gives another sequence; no rates, no faults.
    let (c, _) = statuses_with_rates(
        FaultRates {
            seed: 8,
            ..rates.clone()
        },
        40,
    )
    .await;
    assert_ne!(a, c);
    emu_a.set_fault_rates(None);
    let ok = post(&emu_a, "[]", false).await;
    assert_eq!(ok.status().as_u16(), 204);
}

#[tokio::test]
async fn http2_prior_knowledge_and_concurrent_requests() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let resp = post_to(&h2, &emu, &url(&emu, RULE, STREAM), "[{\"v\":2}]", false)
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(emu.requests()[0].http_version, "HTTP/2.0");

    // 20 slow requests at once over HTTP/2 streams and HTTP/1.1 connections: they overlap.
    emu.inject(Fault::Latency(Duration::from_millis(300)), 20);
    let h1 = client();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = if i % 2 == 0 { h2.clone() } else { h1.clone() };
        let u = url(&emu, RULE, STREAM);
        let token = emu.token().unwrap();
        tasks.push(tokio::spawn(async move {
            c.post(u)
                .bearer_auth(token)
                .body(format!("[{{\"i\":{i}}}]"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 204);
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(emu.stats().max_in_flight >= 10, "{:?}", emu.stats());
    assert_eq!(emu.row_count(STREAM), 21);
}

#[tokio::test]
async fn cut_off_requests_and_disconnects_leave_the_server_serving() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let addr = emu.addr();
    let token = emu.token().unwrap();
    let head = format!(
        "POST /dataCollectionRules/{RULE}/streams/{STREAM}?api-version=2023-01-01 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n"
    );
    let held = tokio::task::spawn_blocking(move || {
        // Half a head, then gone.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&head.as_bytes()[..40]).unwrap();
        drop(s);
        // A head and half the body, then gone.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&[b' '; 500]).unwrap();
        drop(s);
        // A client that stays connected mid-body while others are served.
        let mut held = TcpStream::connect(addr).unwrap();
        held.write_all(head.as_bytes()).unwrap();
        held.write_all(b"[{\"a\":").unwrap();
        held
    })
    .await
    .unwrap();
    assert!(emu.wait_for_requests(1, WAIT));
    let log = emu.requests();
    assert_eq!(log[0].status, None, "the cut-off body is logged as dropped");
    assert_eq!(log[0].wire_bytes, 500);
    assert_eq!(emu.stats().dropped_connections, 1);
    assert!(emu.wait_for_stats(WAIT, |s| s.in_flight == 1));

    for _ in 0..3 {
        assert_eq!(post(&emu, "[{\"ok\":true}]", false).await.status().as_u16(), 204);
    }
    assert_eq!(emu.row_count(STREAM), 3);
    drop(held);
    assert!(emu.wait_for_requests(5, WAIT));
    assert_eq!(emu.stats().dropped_connections, 2);
    assert_eq!(emu.stats().in_flight, 0);
}

#[tokio::test]
async fn persist_dir_appends_json_lines_per_stream() {
    let _limit = common::time_limit();
    let dir = std::env::temp_dir().join(format!(
        "tracing-azure-logs-emulator-test-{}-{}",
        std::process::id(),
        unique_suffix()
    ));
    let emu = Emulator::builder().persist_dir(&dir).start().unwrap();
    let first = sample_rows(2);
    // Pretty-printed rows contain newlines: each must still land on one line.
    let pretty = serde_json::to_vec_pretty(&first).unwrap();
    assert_eq!(post(&emu, pretty, false).await.status().as_u16(), 204);
    let second = vec![json!({"Message": "x".repeat(70_000)})];
    let gz = gzip(&serde_json::to_vec(&second).unwrap());
    assert_eq!(post(&emu, gz, true).await.status().as_u16(), 204);
    let other = url(&emu, RULE, "Custom-Other_CL");
    let resp = post_to(&client(), &emu, &other, "[{\"o\":1}]", false).await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);

    let text = std::fs::read_to_string(dir.join(format!("{STREAM}.jsonl"))).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[..2], first[..]);
    assert_eq!(lines[2]["Message"].as_str().unwrap().len(), MAX_FIELD_BYTES);
    let other_text = std::fs::read_to_string(dir.join("Custom-Other_CL.jsonl")).unwrap();
    assert_eq!(other_text, "{\"o\":1}\n");
    drop(emu);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn rows_can_go_unretained_and_the_log_is_bounded() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .retain_rows(false)
        .request_log_capacity(3)
        .start()
        .unwrap();
    let c = client();
    for i in 0..5 {
        let resp = c
            .post(url(&emu, RULE, STREAM))
            .bearer_auth(emu.token().unwrap())
            .header("x-ms-client-request-id", i.to_string())
            .body(serde_json::to_vec(&sample_rows(10)).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 204);
    }
    assert!(emu.wait_for_rows(STREAM, 50, WAIT));
    assert!(!emu.wait_for_rows(STREAM, 51, Duration::from_millis(50)));
    assert_eq!(emu.row_count(STREAM), 50);
    assert!(emu.rows(STREAM).is_empty());
    assert_eq!(emu.stats().rows_accepted, 50);
    let log = emu.requests();
    assert_eq!(log.len(), 3);
    assert_eq!(log.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(
        log.iter()
            .map(|r| r.client_request_id.clone().unwrap())
            .collect::<Vec<_>>(),
        ["2", "3", "4"]
    );
    assert_eq!(emu.stats().requests, 5);
    assert!(emu.wait_for_requests(5, WAIT));
    assert!(!emu.wait_for_requests(6, Duration::from_millis(50)));
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let addr = emu.addr();
    assert_eq!(emu.endpoint(), format!("http://{addr}"));
    assert!(addr.ip().is_loopback());
    // A keep-alive connection is open when the handle goes.
    let c = client();
    let resp = post_to(&c, &emu, &url(&emu, RULE, STREAM), "[]", false).await.unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let t = Instant::now();
    drop(emu);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    let err = c
        .post(format!(
            "http://{addr}/dataCollectionRules/{RULE}/streams/{STREAM}?api-version=2023-01-01"
        ))
        .body("[]")
        .send()
        .await;
    assert!(err.is_err(), "{err:?}");
}
