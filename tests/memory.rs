//! Memory bounds against broken or hostile peers, measured as this process's peak RSS (`VmHWM`,
//! reset through `/proc/self/clear_refs`):
//! - error bodies of 256 MiB (503 and 401, with `Content-Length` and chunked) raise it by less
//!   than 16 MiB with 5 uploads in flight: the client reads at most 64 KiB of an error body;
//! - a 58 KB gzip that decodes to 57 MiB of `{}` rows is refused by the emulator within about
//!   twice its 64 MiB decoding cap (it took 600 MiB more when every row was collected first).
//!
//! One test per binary, so that no other test's memory shows in the figures.
#![cfg(all(feature = "emulator", target_os = "linux"))]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_azure_logs::client::{FailureReason, LogsIngestionClient, RetryPolicy, StaticTokenCredential};
use tracing_azure_logs::emulator::Emulator;

const MIB: u64 = 1024 * 1024;
const HUGE: u64 = 256 * MIB;

#[test]
fn huge_error_bodies_and_tiny_row_bombs_stay_within_their_memory_bounds() {
    let _limit = common::time_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (status, chunked) in [(503, false), (503, true), (401, false), (401, true)] {
            let server = huge_error_server(status, chunked).await;
            // Warm up the client's code paths once, then measure.
            upload_against(&server, 1).await;
            let before = status_kib("VmRSS");
            reset_peak();
            server.written.store(0, Ordering::Relaxed);
            let reasons = upload_against(&server, 5).await;
            // The client stopped reading: the server wrote far less than the 5 × 256 MiB bodies.
            let written = server.written.load(Ordering::Relaxed);
            assert!(
                written < 5 * 16 * MIB,
                "the server wrote {written} bytes of error bodies"
            );
            let grew = status_kib("VmHWM").saturating_sub(before);
            eprintln!("{status} chunked={chunked}: peak RSS +{grew} KiB over {before} KiB");
            assert_eq!(reasons.len(), 5, "five batches failed");
            for reason in &reasons {
                match reason {
                    FailureReason::RetriesExhausted { last_error, .. } => {
                        assert!(last_error.starts_with(&format!("HTTP {status}")), "{last_error}")
                    }
                    FailureReason::Rejected { status: s, message, .. } => {
                        assert_eq!(*s, status);
                        assert!(message.len() <= 512, "the message is cut short");
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert!(
                grew < 16 * 1024,
                "a {status} with a 256 MiB body (chunked: {chunked}) raised peak RSS by {grew} KiB"
            );
        }
    });

    let emu = Emulator::start().unwrap();
    let body = tiny_row_bomb(19_900_000);
    assert!(body.len() < 100_000, "{} bytes of gzip", body.len());
    let before = status_kib("VmRSS");
    reset_peak();
    let (status, text) = runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!(
                "{}/dataCollectionRules/dcr-1/streams/Custom-Bomb_CL?api-version=2023-01-01",
                emu.endpoint()
            ))
            .bearer_auth(emu.token().unwrap())
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    });
    let grew = status_kib("VmHWM").saturating_sub(before);
    eprintln!("tiny-row bomb: {status} {text}; peak RSS +{grew} KiB over {before} KiB");
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("PayloadSizeLimitExceeded"), "{text}");
    assert_eq!(emu.row_count("Custom-Bomb_CL"), 0);
    assert!(grew < 128 * 1024, "decoding took {grew} KiB, over twice the 64 MiB cap");
    emu.shutdown();
}

/// Uploads `batches` rows, each in a batch of its own, with one attempt each; the failure reasons.
async fn upload_against(server: &HugeErrorServer, batches: usize) -> Vec<FailureReason> {
    let client = LogsIngestionClient::builder(server.endpoint.clone(), StaticTokenCredential::new("t"))
        .retry_policy(RetryPolicy::none())
        .max_concurrency(5)
        .max_uncompressed_batch(3_000)
        .build()
        .unwrap();
    let rows: Vec<_> = (0..batches)
        .map(|i| json!({"i": i, "pad": "p".repeat(2_000)}))
        .collect();
    let error = tokio::time::timeout(Duration::from_secs(60), client.upload("dcr-1", "Custom-T_CL", &rows))
        .await
        .expect("the upload gave up on the body in time")
        .unwrap_err();
    error.batches.iter().map(|b| b.reason().clone()).collect()
}

struct HugeErrorServer {
    endpoint: String,
    /// Body bytes the server got to write: what the client read, plus what socket buffers hold.
    written: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HugeErrorServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers every request with `status` and a 256 MiB body, written from one 64 KiB buffer.
async fn huge_error_server(status: u16, chunked: bool) -> HugeErrorServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                if read_request(&mut tcp).await.is_none() {
                    return;
                }
                let framing = if chunked {
                    "transfer-encoding: chunked".to_owned()
                } else {
                    format!("content-length: {HUGE}")
                };
                let head = format!("HTTP/1.1 {status} Nope\r\ncontent-type: text/plain\r\n{framing}\r\n\r\n");
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..HUGE / chunk.len() as u64 {
                    let wrote = if chunked {
                        let size = format!("{:x}\r\n", chunk.len());
                        tcp.write_all(size.as_bytes()).await.is_ok()
                            && tcp.write_all(&chunk).await.is_ok()
                            && tcp.write_all(b"\r\n").await.is_ok()
                    } else {
                        tcp.write_all(&chunk).await.is_ok()
                    };
                    if wrote {
                        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    }
                    if !wrote {
                        return; // The client stopped reading and closed: what it should do.
                    }
                }
                if chunked {
                    let _ = tcp.write_all(b"0\r\n\r\n").await;
                }
            });
        }
    });
    HugeErrorServer {
        endpoint,
        written,
        task,
    }
}

/// Reads one request's head and `Content-Length` body; `None` if the peer went away.
async fn read_request(tcp: &mut tokio::net::TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Some(());
        }
    }
}

/// A gzip of `[{},{},...]` with `rows` rows, compressed as it is written.
fn tiny_row_bomb(rows: usize) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b"[{}").unwrap();
    let block = ",{}".repeat(4096);
    let mut left = rows - 1;
    while left > 0 {
        let n = left.min(4096);
        gz.write_all(&block.as_bytes()[..3 * n]).unwrap();
        left -= n;
    }
    gz.write_all(b"]").unwrap();
    gz.finish().unwrap()
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets `VmHWM` to the current RSS.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}
