//! Setup errors: nothing was sent when one of these is returned.

/// A setting that cannot work; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The endpoint is not a usable URL.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Plain `http://` to a host that is not loopback: the bearer token would travel in clear.
    #[error(
        "refusing plain http for {endpoint:?}: access tokens must not travel unencrypted; use https:// \
         (plain http is allowed only for loopback hosts such as the local emulator)"
    )]
    InsecureEndpoint {
        /// The endpoint as given.
        endpoint: String,
    },
    /// An option is out of range.
    #[error("invalid option {option}: {reason}")]
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Environment variables that a setup reads from the environment are missing.
    #[error("missing environment variable(s): {}", .0.join(", "))]
    MissingEnvironment(Vec<&'static str>),
    /// No credential could be built from the environment.
    #[error("no Azure credential could be built: {0}")]
    Credential(String),
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// Why [`try_init`](crate::try_init) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The settings are missing or wrong; nothing was installed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another global subscriber is already installed; the pipeline was stopped again.
    #[error("a global tracing subscriber is already set: {0}")]
    SubscriberAlreadySet(String),
    /// Another `log` logger is already installed (for example `LogTracer`, which `init()`
    /// installs); the bridge was not installed and its pipeline was stopped again.
    #[error("a `log` logger is already set, so the log bridge was not installed: {0}")]
    LoggerAlreadySet(String),
}
