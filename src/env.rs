//! The environment variables the crate reads, and how: names, and a reader that takes a blank
//! value as unset.

/// Environment variable with the ingestion endpoint (a DCE, or the DCR's logs ingestion endpoint).
pub const ENV_ENDPOINT: &str = "AZURE_DCE_ENDPOINT";
/// Environment variable with the data collection rule's immutable id (`dcr-...`).
pub const ENV_RULE_ID: &str = "AZURE_DCR_RULE_ID";
/// Environment variable with the stream name (`Custom-...`).
pub const ENV_STREAM: &str = "AZURE_DCR_STREAM_NAME";
/// Environment variable with a fixed bearer token, for the local emulator only: when set,
/// [`AzureLogsBuilder::from_env`](crate::AzureLogsBuilder::from_env) uses it instead of an Azure credential.
pub const ENV_EMULATOR_TOKEN: &str = "AZURE_LOGS_EMULATOR_TOKEN";

/// An environment variable's value; unset, blank or not Unicode is `None`.
pub(crate) fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The names of the variables that are `None`, in order.
pub(crate) fn missing_vars<const N: usize>(vars: [(&'static str, &Option<String>); N]) -> Vec<&'static str> {
    vars.into_iter().filter(|(_, v)| v.is_none()).map(|(n, _)| n).collect()
}
