//! Errors of the ingestion client. Each says whether rows were lost.

use std::fmt;

/// Why some rows were not delivered. Every variant means those rows are lost unless the caller
/// sends them again: the service did not accept them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FailureReason {
    /// One row is over the request limit on its own (as `[row]`, uncompressed or gzipped); it was
    /// never sent, since the service would answer 413.
    #[error("row is {size} bytes ({what}), over the {limit}-byte limit; it was not sent")]
    RowTooLarge {
        /// Its size, in the unit `what` names.
        size: usize,
        /// The limit it broke.
        limit: usize,
        /// `"uncompressed JSON"` or `"gzipped"`.
        what: &'static str,
    },
    /// A raw body over the request limit; it was not sent.
    #[error("request body is {size} bytes, over the service's {limit}-byte limit; it was not sent")]
    BodyTooLarge {
        /// The body's size.
        size: usize,
        /// The limit (1,048,576).
        limit: usize,
    },
    /// The row does not serialize to a JSON object; it was not sent.
    #[error("row is not a JSON object: {0}; it was not sent")]
    InvalidRow(String),
    /// The service refused the request with a status that is not retried.
    #[error("{}", Rejected(.status, .code, .message, .hint))]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The service's error code (`x-ms-error-code` or the body's `error.code`).
        code: Option<String>,
        /// The service's error message, or the body.
        message: String,
        /// What to check.
        hint: &'static str,
    },
    /// Transient failures (throttling, 5xx, timeouts, connection errors) outlasted the retry policy.
    #[error("gave up after {attempts} attempt(s): {last_error}")]
    RetriesExhausted {
        /// Requests made.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
    /// The credential gave no token.
    #[error("could not get an access token for {scope}: {message}")]
    Authentication {
        /// The scope asked for.
        scope: String,
        /// The credential's error.
        message: String,
    },
    /// The pipeline stopped before the rows were settled (shutdown or flush timeout).
    #[error("not confirmed before shutdown: {0}")]
    Shutdown(String),
    /// The batch waited for an upload slot while the queue filled up, and the disk spool could
    /// take only part of it (full, or a disk error): these rows were not sent.
    #[error("not sent: the disk spool could take only part of the batch ({message})")]
    NotSpooled {
        /// Why the spool refused.
        message: String,
    },
    /// The upload panicked: a bug in this crate (please open an issue with the message). The
    /// rows were not confirmed; the service may or may not have stored them.
    #[error("internal error in tracing-azure-logs, the upload panicked: {message}; please report it")]
    UploadPanicked {
        /// The panic's message.
        message: String,
    },
}

struct Rejected<'a>(&'a u16, &'a Option<String>, &'a String, &'a &'static str);

impl fmt::Display for Rejected<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the service rejected the request with HTTP {}", self.0)?;
        if let Some(code) = self.1 {
            write!(f, " ({code})")?;
        }
        if !self.2.is_empty() {
            write!(f, ": {}", self.2)?;
        }
        write!(f, "; {}", self.3)
    }
}

/// One batch of rows that was not delivered, with its rows, as `on_error` receives it.
#[derive(Clone, PartialEq)]
pub struct FailedBatch {
    pub(crate) rule_id: String,
    pub(crate) stream: String,
    pub(crate) reason: FailureReason,
    pub(crate) indices: Vec<usize>,
    pub(crate) rows: Vec<String>,
}

impl FailedBatch {
    /// Why the rows were not delivered.
    pub fn reason(&self) -> &FailureReason {
        &self.reason
    }

    /// The data collection rule the rows were for.
    pub fn rule_id(&self) -> &str {
        &self.rule_id
    }

    /// The stream the rows were for.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Positions of the failed rows in the input of `upload` (for the pipeline: sequence numbers).
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    /// The failed rows as JSON text, in input order. Empty for rows that did not serialize, for
    /// a request that was in flight when the pipeline stopped, and for rows still queued then
    /// (their text is not kept): [`len`](Self::len) still counts them.
    pub fn rows(&self) -> &[String] {
        &self.rows
    }

    /// Number of failed rows.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether no rows are in this failure.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The failed rows parsed back into JSON values.
    pub fn to_values(&self) -> Vec<serde_json::Value> {
        self.rows.iter().filter_map(|r| serde_json::from_str(r).ok()).collect()
    }
}

impl fmt::Debug for FailedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Row contents can be large and sensitive: show counts, not rows.
        f.debug_struct("FailedBatch")
            .field("rule_id", &self.rule_id)
            .field("stream", &self.stream)
            .field("reason", &self.reason)
            .field("rows", &self.indices.len())
            .finish()
    }
}

/// Some rows of an `upload` were not delivered; those rows are lost unless sent again. Every
/// batch is attempted: one failure does not stop the others.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} rows failed to upload in {} batch(es); first cause: {}", .batches.len(), first_cause(.batches))]
#[non_exhaustive]
pub struct UploadError {
    /// Rows not delivered.
    pub failed: usize,
    /// Rows given to `upload`.
    pub total: usize,
    /// Each failed batch with its cause and rows.
    pub batches: Vec<FailedBatch>,
}

fn first_cause(batches: &[FailedBatch]) -> String {
    batches.first().map(|b| b.reason.to_string()).unwrap_or_default()
}
