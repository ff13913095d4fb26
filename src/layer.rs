//! The tracing `Layer`: the hot path.
//!
//! `on_event` encodes the row straight into a reused buffer and pushes it on the bounded queue:
//! no lock beyond the registry's span-extension reads, no I/O, no allocation once buffers are warm,
//! no wake-up of the worker. Span fields are encoded once, in `on_new_span`/`on_record`, and
//! stored in the span's extensions; an event copies the encoded spans of its scope.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::field::Field;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::pipeline::queue::Queue;
use crate::route::Routes;
use crate::row::{EventFields, FieldSink, Fields, RowShape, key, write_int, write_str, write_time};

/// Ships each event as a row to the Logs Ingestion API, through the pipeline that
/// [`AzureLogsBuilder::build`](crate::AzureLogsBuilder::build) starts. Composes with `EnvFilter`
/// and per-layer filters like any layer.
#[derive(Clone)]
pub struct AzureLogsLayer {
    pub(crate) queue: Arc<Queue>,
    pub(crate) shape: Arc<RowShape>,
    pub(crate) routes: Arc<Routes>,
}

impl std::fmt::Debug for AzureLogsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLogsLayer").finish_non_exhaustive()
    }
}

/// A span's fields, encoded once: `{"name":"request","fields":{"method":"GET"}}`.
struct SpanFields {
    name: &'static str,
    members: Vec<(&'static str, Vec<u8>)>,
    encoded: Vec<u8>,
}

impl SpanFields {
    fn encode(&mut self) {
        let out = &mut self.encoded;
        out.clear();
        out.extend_from_slice(b"{\"name\":");
        write_str(out, self.name);
        out.extend_from_slice(b",\"fields\":{");
        for (i, (name, value)) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, name);
            out.push(b':');
            out.extend_from_slice(value);
        }
        out.extend_from_slice(b"}}");
    }
}

/// A recorded field replaces an earlier value of the same name.
impl FieldSink for &mut SpanFields {
    fn slot(&mut self, field: &Field) -> Option<&mut Vec<u8>> {
        let name = field.name();
        let index = match self.members.iter().position(|(n, _)| *n == name) {
            Some(i) => i,
            None => {
                self.members.push((name, Vec::new()));
                self.members.len() - 1
            }
        };
        let value = &mut self.members[index].1;
        value.clear();
        Some(value)
    }
}

thread_local! {
    /// Per-thread scratch for the message field.
    static MESSAGE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The thread's name (or id) as a JSON string, encoded on first use.
    static THREAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<S> tracing_subscriber::Layer<S> for AzureLogsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.shape.spans.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields {
            name: attrs.metadata().name(),
            members: Vec::new(),
            encoded: Vec::new(),
        };
        attrs.record(&mut Fields(&mut fields));
        fields.encode();
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            values.record(&mut Fields(&mut *fields));
            fields.encode();
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let queue = &*self.queue;
        if !queue.admit() {
            return;
        }
        let normalized = event.normalized_metadata();
        let from_log = normalized.is_some();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let stream = self.routes.stream_for(meta.target(), event);

        let mut row = queue.buffer();
        let encoded = MESSAGE.try_with(|message| match message.try_borrow_mut() {
            Ok(mut message) => self.encode_event(&mut row, &mut message, event, meta, from_log, &ctx),
            // Re-entered (an event emitted while formatting a field): use fresh scratch.
            Err(_) => self.encode_event(&mut row, &mut Vec::new(), event, meta, from_log, &ctx),
        });
        if encoded.is_err() {
            // The thread is exiting and its locals are gone.
            self.encode_event(&mut row, &mut Vec::new(), event, meta, from_log, &ctx);
        }
        queue.push(stream, row);
    }
}

impl AzureLogsLayer {
    fn encode_event<S>(
        &self,
        row: &mut Vec<u8>,
        message: &mut Vec<u8>,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        from_log: bool,
        ctx: &Context<'_, S>,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let shape = &*self.shape;
        begin_row(shape, row, meta.level(), meta.target());
        message.clear();
        match &shape.properties {
            Some(k) => {
                key(row, k);
                row.push(b'{');
                event.record(&mut Fields(EventFields {
                    out: Some(row),
                    message,
                    skip_log_fields: from_log,
                }));
                row.push(b'}');
            }
            None => event.record(&mut Fields(EventFields {
                out: None,
                message,
                skip_log_fields: from_log,
            })),
        }
        if let Some(k) = &shape.message {
            key(row, k);
            if message.is_empty() {
                row.extend_from_slice(b"\"\"");
            } else {
                row.extend_from_slice(message);
            }
        }
        if let Some(k) = &shape.spans {
            key(row, k);
            row.push(b'[');
            if let Some(scope) = ctx.event_scope(event) {
                for span in scope.from_root() {
                    if let Some(fields) = span.extensions().get::<SpanFields>() {
                        if row.last() != Some(&b'[') {
                            row.push(b',');
                        }
                        row.extend_from_slice(&fields.encoded);
                    }
                }
            }
            row.push(b']');
        }
        end_row(shape, row, meta.file(), meta.line());
    }
}

/// The columns every row ends with (file, line, thread) and the closing `}`.
pub(crate) fn end_row(shape: &RowShape, row: &mut Vec<u8>, file: Option<&str>, line: Option<u32>) {
    if let (Some(k), Some(file)) = (&shape.file, file) {
        key(row, k);
        write_str(row, file);
    }
    if let (Some(k), Some(line)) = (&shape.line, line) {
        key(row, k);
        write_int(row, line);
    }
    write_thread(shape, row);
    row.push(b'}');
}

/// The `Thread` column: the thread's name, or its id, encoded once per thread.
fn write_thread(shape: &RowShape, row: &mut Vec<u8>) {
    let Some(k) = &shape.thread else { return };
    key(row, k);
    let encode = |out: &mut Vec<u8>| {
        let current = std::thread::current();
        match current.name() {
            Some(name) => write_str(out, name),
            None => crate::row::write_fmt(out, format_args!("{:?}", current.id())),
        }
    };
    let cached = THREAD.try_with(|thread| {
        let mut thread = thread.borrow_mut();
        if thread.is_empty() {
            encode(&mut thread);
        }
        row.extend_from_slice(&thread);
    });
    if cached.is_err() {
        encode(row);
    }
}

/// `{` and the columns every row starts with: time, level, target, static columns.
pub(crate) fn begin_row(shape: &RowShape, row: &mut Vec<u8>, level: &Level, target: &str) {
    row.push(b'{');
    if let Some(k) = &shape.time_generated {
        key(row, k);
        write_time(row, SystemTime::now());
    }
    if let Some(k) = &shape.level {
        key(row, k);
        row.extend_from_slice(match *level {
            Level::ERROR => b"\"ERROR\"",
            Level::WARN => b"\"WARN\"",
            Level::INFO => b"\"INFO\"",
            Level::DEBUG => b"\"DEBUG\"",
            Level::TRACE => b"\"TRACE\"",
        });
    }
    if let Some(k) = &shape.target {
        key(row, k);
        write_str(row, target);
    }
    if !shape.statics.is_empty() {
        if row.last() != Some(&b'{') {
            row.push(b',');
        }
        row.extend_from_slice(&shape.statics);
    }
}

/// The worker's row reporting drops: level WARN, target `tracing_azure_logs`, properties
/// `dropped` (since the last report) and `dropped_total`.
pub(crate) fn encode_diagnostic(shape: &RowShape, row: &mut Vec<u8>, dropped: u64, total: u64) {
    begin_row(shape, row, &Level::WARN, "tracing_azure_logs");
    if let Some(k) = &shape.properties {
        key(row, k);
        row.extend_from_slice(b"{\"dropped\":");
        write_int(row, dropped);
        row.extend_from_slice(b",\"dropped_total\":");
        write_int(row, total);
        row.push(b'}');
    }
    if let Some(k) = &shape.message {
        key(row, k);
        crate::row::write_fmt(
            row,
            format_args!(
                "tracing-azure-logs dropped {dropped} row(s) since its last report ({total} in all): the queue was full"
            ),
        );
    }
    if let Some(k) = &shape.spans {
        key(row, k);
        row.extend_from_slice(b"[]");
    }
    end_row(shape, row, None, None);
}
