//! What can go wrong with a query, each saying what to do about it.

use super::QueryResult;

/// Why a query gave no (complete) result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The service refused the query; retrying will not help. `hint` says what to check.
    #[error("the query was refused: HTTP {status}{}: {message}; {hint}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The service's error code (`BadArgumentError`, `InsufficientAccessError`, ...), and the
        /// inner code when there is one (`SyntaxError`, `SemanticError`).
        code: Option<String>,
        /// The service's message (for a bad query: what is wrong with it).
        message: String,
        /// What to check.
        hint: &'static str,
    },
    /// The service answered with part of the result: a limit cut it (500,000 rows or about
    /// 64 MB), or part of the query failed. Rows are missing from `result`. Narrow the timespan
    /// or the query, or pass [`QueryOptions::allow_partial`](super::QueryOptions::allow_partial)
    /// to take such results as they are.
    #[error("the query's result is partial ({code}: {message}); rows are missing: narrow the timespan or the query")]
    Partial {
        /// The rows that came back.
        result: Box<QueryResult>,
        /// The service's code (`PartialError`).
        code: String,
        /// The detail's message (which limit, or what failed).
        message: String,
    },
    /// Every try failed with a retryable error (429, 5xx, a timeout, a connection error) until
    /// the retry policy gave up.
    #[error("the query failed after {attempts} attempt(s); the last error: {last_error}")]
    RetriesExhausted {
        /// Requests made.
        attempts: u32,
        /// The last error.
        last_error: String,
    },
    /// No token could be obtained for the query scope.
    #[error(
        "no access token for scope {scope}: {message}; check the credential and that the scope matches the \
         endpoint's cloud"
    )]
    Authentication {
        /// The scope asked for.
        scope: String,
        /// The credential's error.
        message: String,
    },
    /// The service's answer could not be read.
    #[error("the query's response could not be read: {0}")]
    InvalidResponse(String),
    /// Rows did not decode into the requested type.
    #[error("row {row} of table {table} does not decode: {message}")]
    Decode {
        /// The table's name.
        table: String,
        /// The row's index.
        row: usize,
        /// Serde's message (names the field).
        message: String,
    },
}

/// What to check for a status the query client does not retry.
pub(crate) fn hint(status: u16) -> &'static str {
    match status {
        400 => "the service could not run the query: its message says what to change",
        401 => {
            "the token was refused: check that the scope matches the endpoint's cloud (https://api.loganalytics.io \
             for the public cloud) and that the credential is for the workspace's tenant"
        }
        403 => {
            "the identity may not read this workspace: grant it the 'Log Analytics Reader' (or 'Reader') role on the \
             workspace (role assignments can take minutes to apply)"
        }
        404 => "check the workspace id (a GUID: the workspace's 'Workspace ID', not its name or resource id)",
        _ => "this status is not retried",
    }
}
