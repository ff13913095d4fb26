//! Continuous export against the emulator: windows on `ingestion_time()` export every row
//! exactly once through late arrivals, where windows on `TimeGenerated` miss some; a failed sink
//! leaves the checkpoint; a window over the result limit is split. The files the sink wrote
//! decide.
#![cfg(feature = "emulator")]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tracing_azure_logs::client::LogsIngestionClient;
use tracing_azure_logs::emulator::Emulator;
use tracing_azure_logs::export::{
    CheckpointStore, ContinuousExport, ExportError, ExportQuery, ExportSink, ExportWindow, FileCheckpoints,
    JsonLinesSink, SinkError,
};
use tracing_azure_logs::query::{LogsQueryClient, Timespan};

const RULE: &str = "dcr-export";
const STREAM: &str = "Custom-Export_CL";
const TABLE: &str = "Export_CL";
const WORKSPACE: &str = "00000000-0000-0000-0000-00000000e4e4";

use common::TempDir;

fn query_client(emu: &Emulator) -> LogsQueryClient {
    LogsQueryClient::builder(emu.credential())
        .endpoint(emu.endpoint())
        .build()
        .unwrap()
}

fn rfc3339(t: SystemTime) -> String {
    azure_core::time::to_rfc3339(&azure_core::time::OffsetDateTime::from(t))
}

/// Uploads rows `ids` with `TimeGenerated` = `generated`.
async fn upload(client: &LogsIngestionClient, ids: std::ops::Range<u64>, generated: SystemTime) {
    let rows: Vec<Value> = ids
        .map(|id| json!({"TimeGenerated": rfc3339(generated), "RowId": id, "Message": "exported"}))
        .collect();
    client.upload(RULE, STREAM, rows).await.unwrap();
}

/// How many times each RowId is in the JSON-lines files under `dir`.
fn exported_ids(dir: &Path) -> BTreeMap<u64, usize> {
    let mut ids = BTreeMap::new();
    let Ok(queries) = std::fs::read_dir(dir) else {
        return ids;
    };
    for query in queries {
        for file in std::fs::read_dir(query.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                for line in std::fs::read_to_string(&path).unwrap().lines() {
                    let row: Value = serde_json::from_str(line).unwrap();
                    *ids.entry(row["RowId"].as_u64().unwrap()).or_insert(0) += 1;
                }
            }
        }
    }
    ids
}

fn exporter(emu: &Emulator, dir: &TempDir, settle: Duration, sink: Arc<dyn ExportSink>) -> ContinuousExport {
    ContinuousExport::new(
        query_client(emu),
        WORKSPACE,
        vec![ExportQuery::new("rows", TABLE)],
        Arc::new(FileCheckpoints::new(dir.0.join("checkpoints"))),
        sink,
    )
    .unwrap()
    .settle(settle)
}

#[test]
fn ingestion_time_windows_export_late_rows_exactly_once_where_time_generated_windows_miss_them() {
    let _limit = common::time_limit();
    let emu = Emulator::builder()
        .query_visibility_delay(Duration::from_millis(100))
        .start()
        .unwrap();
    let dir = TempDir::new("late");
    let settle = Duration::from_millis(700);
    let exporter = exporter(&emu, &dir, settle, Arc::new(JsonLinesSink::new(dir.0.join("out"))));
    let uploader = emu.client().build().unwrap();
    let query = query_client(&emu);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut next, mut late) = (0u64, Vec::new());
        // The naive exporter: windows on TimeGenerated, checkpoint on TimeGenerated.
        let mut naive_checkpoint = SystemTime::now() - Duration::from_secs(3 * 3600);
        let mut naive: BTreeMap<u64, usize> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for round in 0.. {
            if round < 4 {
                let now = SystemTime::now();
                upload(&uploader, next..next + 20, now).await;
                // Generated ten minutes ago, arriving only now.
                upload(&uploader, next + 20..next + 25, now - Duration::from_secs(600)).await;
                late.extend(next + 20..next + 25);
                // Ingested now, seen by queries 400 ms later than the others.
                emu.delay_visibility(Duration::from_millis(400), 1);
                upload(&uploader, next + 25..next + 30, now).await;
                next += 30;
            }
            let report = exporter.run_round().await;
            assert!(report[0].error.is_none(), "{:?}", report[0].error);

            let end = SystemTime::now() - settle;
            let kql = format!(
                "{TABLE} | where TimeGenerated >= datetime({}) and TimeGenerated < datetime({})",
                rfc3339(naive_checkpoint),
                rfc3339(end)
            );
            let rows = query
                .query_workspace(WORKSPACE, &kql, Timespan::All)
                .await
                .unwrap()
                .primary();
            // An empty result has no columns.
            if let Some(id) = rows.column("RowId") {
                for row in &rows.rows {
                    *naive.entry(row[id].as_u64().unwrap()).or_insert(0) += 1;
                }
            }
            naive_checkpoint = end;

            if round >= 4 && exported_ids(&dir.0.join("out")).len() as u64 == next {
                break;
            }
            assert!(Instant::now() < deadline, "the export did not catch up");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let exported = exported_ids(&dir.0.join("out"));
        assert_eq!(exported.len() as u64, next, "every row exported");
        assert!(exported.values().all(|&n| n == 1), "each exactly once: {exported:?}");

        let missed: Vec<u64> = (0..next).filter(|id| !naive.contains_key(id)).collect();
        assert!(!missed.is_empty(), "the TimeGenerated windows missed the late rows");
        assert!(
            missed.iter().all(|id| late.contains(id)),
            "what they missed is late rows: {missed:?}"
        );
        eprintln!(
            "{} rows: exported once each on ingestion_time(); TimeGenerated windows missed {} of the {} late rows",
            next,
            missed.len(),
            late.len()
        );
    });
    emu.shutdown();
}

/// A sink that fails its first `failures` writes, then writes JSON lines.
struct Flaky {
    failures: AtomicUsize,
    inner: JsonLinesSink,
}

#[async_trait::async_trait]
impl ExportSink for Flaky {
    async fn write(&self, window: &ExportWindow<'_>) -> Result<(), SinkError> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            return Err("the storage account is unreachable".into());
        }
        self.inner.write(window).await
    }
}

#[test]
fn a_failed_sink_leaves_the_checkpoint_and_the_next_round_exports_the_window_again() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let dir = TempDir::new("sink");
    let sink = Arc::new(Flaky {
        failures: AtomicUsize::new(1),
        inner: JsonLinesSink::new(dir.0.join("out")),
    });
    let exporter = exporter(&emu, &dir, Duration::from_millis(100), sink);
    let checkpoints = FileCheckpoints::new(dir.0.join("checkpoints"));
    let start = SystemTime::now() - Duration::from_secs(60);
    checkpoints.save("rows", start).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        upload(&emu.client().build().unwrap(), 0..10, SystemTime::now()).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let first = exporter.run_round().await;
        assert!(
            matches!(first[0].error, Some(ExportError::Sink { .. })),
            "{:?}",
            first[0].error
        );
        assert!(
            first[0]
                .error
                .as_ref()
                .unwrap()
                .to_string()
                .contains("the checkpoint did not move")
        );
        assert_eq!(checkpoints.load("rows").unwrap(), Some(start), "the checkpoint stayed");
        assert!(exported_ids(&dir.0.join("out")).is_empty());

        let second = exporter.run_round().await;
        assert!(second[0].error.is_none(), "{:?}", second[0].error);
        assert_eq!(
            second[0].windows[0].0, start,
            "the same window, from the same checkpoint"
        );
        assert_eq!(exported_ids(&dir.0.join("out")).len(), 10);
        assert!(
            checkpoints.load("rows").unwrap() > Some(start),
            "then the checkpoint moved"
        );
    });
    emu.shutdown();
}

#[test]
fn a_window_over_the_result_limit_is_split_until_each_part_fits() {
    let _limit = common::time_limit();
    let emu = Emulator::builder().query_limits(5_000, 64_000_000).start().unwrap();
    let dir = TempDir::new("split");
    let exporter = exporter(
        &emu,
        &dir,
        Duration::from_millis(100),
        Arc::new(JsonLinesSink::new(dir.0.join("out"))),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let uploader = emu.client().build().unwrap();
        // 24 requests of 500 rows: rows of one request share an ingestion time.
        for part in 0..24u64 {
            upload(&uploader, part * 500..(part + 1) * 500, SystemTime::now()).await;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let round = exporter.run_round().await;
        assert!(round[0].error.is_none(), "{:?}", round[0].error);
        assert_eq!(round[0].rows(), 12_000);
        assert!(round[0].windows.len() >= 3, "split: {:?}", round[0].windows);
        assert!(round[0].windows.iter().all(|w| w.2 <= 5_000), "{:?}", round[0].windows);
        let exported = exported_ids(&dir.0.join("out"));
        assert_eq!(exported.len(), 12_000);
        assert!(exported.values().all(|&n| n == 1), "no partial result was written");
    });
    let queries = emu.requests().iter().filter(|r| r.path.ends_with("/query")).count();
    assert!(queries > 3, "the whole window, then its halves: {queries} queries");
    emu.shutdown();
}

#[test]
fn reingest_copies_the_exported_rows_into_another_stream() {
    let _limit = common::time_limit();
    let emu = Emulator::start().unwrap();
    let dir = TempDir::new("reingest");
    let sink =
        tracing_azure_logs::export::ReingestSink::new(emu.client().build().unwrap(), "dcr-copy", "Custom-Copy_CL");
    let exporter = exporter(&emu, &dir, Duration::from_millis(100), Arc::new(sink));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        upload(&emu.client().build().unwrap(), 0..25, SystemTime::now()).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let round = exporter.run_round().await;
        assert!(round[0].error.is_none(), "{:?}", round[0].error);
    });
    let mut copied: Vec<u64> = emu
        .rows("Custom-Copy_CL")
        .iter()
        .map(|r| r["RowId"].as_u64().unwrap())
        .collect();
    copied.sort_unstable();
    assert_eq!(copied, (0..25).collect::<Vec<_>>());
    assert_eq!(emu.rows("Custom-Copy_CL")[0]["Message"], "exported");
    emu.shutdown();
}
