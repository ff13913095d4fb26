//! The background pipeline: the bounded queue the hot path pushes to, the worker that batches and
//! uploads, and the guard that flushes and stops it.

pub(crate) mod destinations;
pub(crate) mod guard;
pub(crate) mod queue;
#[cfg(unix)]
mod signals;
pub(crate) mod spool;
pub(crate) mod stats;
pub(crate) mod transport;
pub(crate) mod worker;

pub use destinations::StreamStats;
pub use guard::AzureLogsGuard;
pub use queue::FullPolicy;
pub use spool::{Spool, SpoolFull, SpoolMode, SpoolSync};
pub use stats::{FlushReport, Incomplete, Stats, StatsHandle};
