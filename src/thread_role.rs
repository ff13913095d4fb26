//! Which threads belong to the crate: the pipeline workers and the runtime of `upload_blocking`.
//!
//! Events and `log` records emitted on those threads (by reqwest, hyper, h2, rustls, azure_core,
//! azure_identity) must never be shipped, or every upload would log rows that cause uploads. The
//! producers (the layer, the log bridge and [`Table::send`](crate::Table::send)) check
//! [`is_pipeline_worker`] and skip such rows.
//!
//! This is a thread-local mark, the way opentelemetry-sdk's batch thread enters a suppressed
//! scope, and deliberately not a scoped default dispatcher (`tracing::subscriber::set_default`):
//! installing any scoped dispatcher raises tracing-core's process-wide scoped-dispatch count,
//! after which an event emitted while another event or span is being recorded (inside a field's
//! `Debug`, say) reaches no subscriber on *every* thread. With the mark, tracing on the
//! application's threads behaves exactly as without this crate.
//!
//! Pitfall: other layers of the application's subscriber (`fmt`, say) do see the HTTP stack's
//! events from these threads, as they do from any thread that uses reqwest; filter the targets
//! (`hyper=off,reqwest=off,h2=off,rustls=off,azure_core=off`) if they are unwanted.

use std::cell::Cell;

thread_local! {
    static PIPELINE_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is one of the crate's own (a pipeline worker or the runtime of
/// `upload_blocking`): rows produced on it are not shipped, and a flush there cannot wait.
pub(crate) fn is_pipeline_worker() -> bool {
    // During thread-local teardown the mark is gone: such a thread is not one of ours.
    PIPELINE_WORKER.try_with(Cell::get).unwrap_or(false)
}

/// Marks the current thread as the crate's own until the returned guard is dropped.
pub(crate) fn enter_worker() -> WorkerRole {
    let was = PIPELINE_WORKER.with(|w| w.replace(true));
    WorkerRole { was }
}

/// Marks the current thread as the crate's own for the rest of its life (a runtime's thread,
/// from `on_thread_start`).
pub(crate) fn mark_worker_thread() {
    PIPELINE_WORKER.with(|w| w.set(true));
}

/// Keeps the current thread marked as the crate's own; dropping it restores the previous mark.
#[must_use = "the thread is marked only while the guard lives"]
#[derive(Debug)]
pub(crate) struct WorkerRole {
    was: bool,
}

impl Drop for WorkerRole {
    fn drop(&mut self) {
        let was = self.was;
        let _ = PIPELINE_WORKER.try_with(|w| w.set(was));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_lasts_while_the_guard_lives_on_this_thread_only() {
        assert!(!is_pipeline_worker());
        let role = enter_worker();
        assert!(is_pipeline_worker());
        let other = std::thread::spawn(is_pipeline_worker).join().unwrap();
        assert!(!other, "another thread is not marked");
        {
            let _nested = enter_worker();
            assert!(is_pipeline_worker());
        }
        assert!(is_pipeline_worker(), "a nested guard restores the outer mark");
        drop(role);
        assert!(!is_pipeline_worker());
    }
}
