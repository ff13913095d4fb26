//! The background pipeline: the bounded queue the hot path pushes to, the worker that batches and
//! uploads, and the guard that flushes and stops it.

pub(crate) mod guard;
pub(crate) mod queue;
#[cfg(unix)]
mod signals;
pub(crate) mod streams;
pub(crate) mod worker;

pub use guard::{AzureLogsGuard, FlushReport, Incomplete, Stats, StatsHandle};
pub use queue::FullPolicy;
pub use streams::StreamStats;
