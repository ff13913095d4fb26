//! Throughput of the Logs Ingestion API emulator: rows/s of ~250-byte log rows in gzipped
//! requests, posted by reqwest over keep-alive connections from another thread.
//!
//! Run: `cargo bench --features emulator --bench emulator`
//!
//! Two request shapes: `json_1mib` is what the crate's client sends by default (uncompressed JSON
//! array cut at 1 MiB, then gzipped: ~4,000 rows per request); `gzip_1mib` fills the wire limit
//! instead (gzipped body just under 1 MiB, several MiB of JSON). The emulator keeps no rows
//! (`retain_rows(false)`), so this measures receiving, gunzipping, parsing and checking.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tracing_azure_logs::emulator::{Emulator, MAX_CONTENT_LENGTH};

const STREAM: &str = "Custom-AppLogs_CL";
/// Requests in flight at once from the client (one keep-alive connection each).
const CONCURRENCY: u64 = 4;

/// A deterministic xorshift generator, so every run posts the same bodies.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// One realistic log row, about 250 bytes of JSON.
fn row(rng: &mut Xorshift, i: u64) -> String {
    let level = rng.pick(&["INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"]);
    let target = rng.pick(&[
        "orders::http::handler",
        "orders::db::pool",
        "orders::worker::queue",
        "hyper::proto",
    ]);
    let method = rng.pick(&["GET", "POST", "PUT", "DELETE"]);
    let status = rng.pick(&["200", "201", "204", "404", "500"]);
    let latency = rng.next() % 100_000;
    format!(
        r#"{{"TimeGenerated":"2024-05-01T12:{:02}:{:02}.{:06}Z","Level":"{level}","Target":"{target}","Message":"{method} /api/v1/orders/{} completed","Properties":{{"status":{status},"latency_us":{latency},"request_id":"{:016x}"}},"Thread":"worker-{}","Computer":"web-{:02}"}}"#,
        (i / 60) % 60,
        i % 60,
        rng.next() % 1_000_000,
        rng.next() % 1_000_000,
        rng.next(),
        rng.next() % 8,
        rng.next() % 16,
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(3));
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A gzipped JSON array: rows are added until the JSON would exceed `max_json` bytes or the
/// gzip (estimated from the ratio so far) would exceed the wire limit. Returns (body, rows).
fn batch(rng: &mut Xorshift, max_json: usize) -> (Bytes, u64) {
    let mut json = String::from("[");
    let mut rows = 0u64;
    let mut ratio_checked = 0usize;
    loop {
        let r = row(rng, rows);
        if json.len() + r.len() + 2 > max_json {
            break;
        }
        // Re-check the compressed size now and then; stop with a margin under 1 MiB.
        if json.len() - ratio_checked > 512 * 1024 {
            ratio_checked = json.len();
            if gzip(json.as_bytes()).len() > MAX_CONTENT_LENGTH - 64 * 1024 {
                break;
            }
        }
        if rows > 0 {
            json.push(',');
        }
        json.push_str(&r);
        rows += 1;
    }
    json.push(']');
    let gz = gzip(json.as_bytes());
    assert!(gz.len() <= MAX_CONTENT_LENGTH, "{}", gz.len());
    (Bytes::from(gz), rows)
}

fn bench(c: &mut Criterion) {
    let emulator = Emulator::builder().retain_rows(false).start().unwrap();
    let url = Arc::new(format!(
        "{}/dataCollectionRules/dcr-bench/streams/{STREAM}?api-version=2023-01-01",
        emulator.endpoint()
    ));
    let token = Arc::new(emulator.token().unwrap());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(CONCURRENCY as usize)
        .build()
        .unwrap();
    // The client runs on this thread; the emulator on its own.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let sample = row(&mut rng, 0);
    eprintln!("row size: {} bytes, e.g. {sample}", sample.len());

    let mut group = c.benchmark_group("emulator_ingest");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for (name, max_json) in [("json_1mib", MAX_CONTENT_LENGTH), ("gzip_1mib", 64 << 20)] {
        let (body, rows) = batch(&mut rng, max_json);
        eprintln!("{name}: {rows} rows per request, {} bytes gzipped", body.len());
        group.throughput(Throughput::Elements(rows));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let before = emulator.row_count(STREAM);
                let start = Instant::now();
                rt.block_on(async {
                    let mut tasks = tokio::task::JoinSet::new();
                    for worker in 0..CONCURRENCY {
                        let n = iters / CONCURRENCY + u64::from(worker < iters % CONCURRENCY);
                        let (client, url, token, body) = (client.clone(), url.clone(), token.clone(), body.clone());
                        tasks.spawn(async move {
                            for _ in 0..n {
                                let resp = client
                                    .post(url.as_str())
                                    .bearer_auth(token.as_str())
                                    .header("content-type", "application/json")
                                    .header("content-encoding", "gzip")
                                    .body(body.clone())
                                    .send()
                                    .await
                                    .expect("request");
                                assert_eq!(resp.status().as_u16(), 204);
                            }
                        });
                    }
                    while let Some(r) = tasks.join_next().await {
                        r.unwrap();
                    }
                });
                let elapsed = start.elapsed();
                assert_eq!(
                    emulator.row_count(STREAM),
                    before + (iters * rows) as usize,
                    "every row accepted"
                );
                elapsed
            });
        });
    }
    group.finish();
    let stats = emulator.stats();
    eprintln!(
        "emulator: {} requests, {} rows, {} wire bytes, {} uncompressed bytes, max in flight {}",
        stats.requests, stats.rows_accepted, stats.wire_bytes, stats.uncompressed_bytes, stats.max_in_flight
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
