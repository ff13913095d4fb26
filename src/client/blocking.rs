//! `upload_blocking`: uploads from code without an async runtime, on a shared background runtime
//! whose thread is marked as the crate's own.

use super::*;

impl LogsIngestionClient {
    /// [`upload`](Self::upload) for code without an async runtime. The requests run on a shared
    /// background runtime thread, so this also works (and does not panic) when called inside a
    /// tokio runtime, where it blocks the calling thread until done.
    pub fn upload_blocking<I>(&self, rule_id: &str, stream: &str, rows: I) -> Result<UploadReport, UploadError>
    where
        I: IntoIterator,
        I::Item: Serialize,
    {
        let rows: Vec<_> = rows.into_iter().map(|r| serialize_row(&r)).collect();
        let (client, rule_id, stream) = (self.clone(), rule_id.to_owned(), stream.to_owned());
        run_blocking(async move {
            let mut failures = Vec::new();
            let report = client
                .upload_rows(&rule_id, &stream, rows.into_iter(), &mut |f| failures.push(f))
                .await;
            into_result(report, failures)
        })
    }
}

/// Runs `future` on a shared background runtime and waits for it on this thread.
pub(crate) fn run_blocking<F, T>(future: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tracing-azure-logs-blocking")
            // Its HTTP stack's events are not rows to ship: see `thread_role`.
            .on_thread_start(crate::thread_role::mark_worker_thread)
            .enable_all()
            .build()
            .expect("building a tokio runtime only fails when the OS refuses a thread")
    });
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        use futures_util::FutureExt;
        let _ = tx.send(std::panic::AssertUnwindSafe(future).catch_unwind().await);
    });
    match rx.recv() {
        Ok(Ok(value)) => value,
        // The work panicked (a bug): the caller sees that panic, as with a joined thread.
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the background runtime of upload_blocking shut down"),
    }
}
