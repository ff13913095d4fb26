//! The seam between the worker and the service: the worker uploads each closed batch through a
//! [`Transport`]. [`LogsIngestionClient`] is the real one; the worker's tests script their own, so
//! batching, flushes and failure accounting are tested in memory.

use std::future::Future;
use std::pin::Pin;

use crate::client::batch::Batch;
use crate::client::{ContentEncoding, LogsIngestionClient, SendOutcome};
use crate::pipeline::destinations::Destination;

/// An upload under way: each part sent (a batch whose gzip is over the limit is split) and how
/// it ended.
pub(crate) type Sending = Pin<Box<dyn Future<Output = Vec<(Batch, SendOutcome)>> + Send>>;

/// An upload of a body as it is.
pub(crate) type SendingBody = Pin<Box<dyn Future<Output = SendOutcome> + Send>>;

/// Sends closed batches. Implementations retry as they see fit; the worker only counts and
/// reports what each part came to.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Starts sending `batch` to `destination`. The future owns what it needs.
    fn send(&self, destination: &Destination, batch: Batch) -> Sending;
    /// Starts sending a body that is already gzipped (a spooled batch) to `destination`.
    fn send_body(&self, destination: &Destination, body: Vec<u8>) -> SendingBody;
    /// Uploads the worker keeps in flight at most.
    fn max_concurrency(&self) -> usize;
    /// The cap on a batch's uncompressed JSON array, brackets and commas included.
    fn max_uncompressed(&self) -> usize;
    /// The gzip level `send` compresses at, for bodies compressed before they are sent.
    fn gzip_level(&self) -> u32;
}

impl Transport for LogsIngestionClient {
    fn send(&self, destination: &Destination, batch: Batch) -> Sending {
        let client = self.clone();
        let url = self.stream_url(&destination.rule_id, &destination.stream);
        Box::pin(async move { client.send_batch(&url, batch).await })
    }

    fn send_body(&self, destination: &Destination, body: Vec<u8>) -> SendingBody {
        let client = self.clone();
        let url = self.stream_url(&destination.rule_id, &destination.stream);
        Box::pin(async move { client.send(&url, body, ContentEncoding::Gzip).await })
    }

    fn max_concurrency(&self) -> usize {
        LogsIngestionClient::max_concurrency(self)
    }

    fn max_uncompressed(&self) -> usize {
        LogsIngestionClient::max_uncompressed(self)
    }

    fn gzip_level(&self) -> u32 {
        LogsIngestionClient::gzip_level(self)
    }
}
