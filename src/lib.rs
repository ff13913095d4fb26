//! Ship application logs to Azure Monitor Logs through the Logs Ingestion API.
//!
//! The crate is being built up issue by issue; see the README for the status of each capability.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "emulator")]
pub mod emulator;

pub mod client;

pub use client::{Audience, LogsIngestionClient, RetryPolicy, UploadError, UploadReport};
