//! Opt-in: flush before SIGTERM or SIGINT ends the process.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::pipeline::guard::{AzureLogsGuard, request_flush};

impl AzureLogsGuard {
    /// On SIGTERM or SIGINT (Ctrl-C), flushes the pipeline for at most the flush timeout, then
    /// lets the signal end the process the way it would have without this call (its default
    /// action, so the exit status still says "killed by SIGTERM").
    ///
    /// Without it (or your own handling), those signals end the process before the guard is
    /// dropped, and the rows of the open batch (about `max_delay` of events) and those in flight
    /// are lost, as with SIGKILL.
    ///
    /// What it installs: handlers for SIGTERM and SIGINT (through `signal-hook`, which chains them
    /// with other handlers registered through it) and one thread, `tracing-azure-logs-signals`,
    /// that waits for them. Call it once. Do not use it if the program handles these signals
    /// itself (a server draining its connections, `tokio::signal::ctrl_c`): it ends the process
    /// after the flush. Drop the guard at the end of your own shutdown instead; see the README's
    /// "Graceful shutdown".
    ///
    /// Rows emitted while the flush runs may not be sent. Unix only.
    ///
    /// ```no_run
    /// let guard = tracing_azure_logs::try_init()?;
    /// guard.flush_on_signals()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn flush_on_signals(&self) -> io::Result<()> {
        let mut signals = Signals::new([SIGTERM, SIGINT])?;
        let control = self.control.clone();
        let timeout = self.flush_timeout;
        std::thread::Builder::new()
            .name("tracing-azure-logs-signals".into())
            .spawn(move || {
                if let Some(signal) = signals.forever().next() {
                    let _ = request_flush(&control, Some(timeout));
                    // The default action of SIGTERM and SIGINT ends the process; should it not
                    // (the signal is blocked), exit as a shell reports a signal.
                    let _ = signal_hook::low_level::emulate_default_handler(signal);
                    std::process::exit(128 + signal);
                }
            })?;
        Ok(())
    }
}
