//! The tracing `Layer`: the hot path.
//!
//! `on_event` encodes the row into the thread's reused scratch buffer and copies it into the
//! thread's own page of the bounded queue: no lock beyond the registry's span-extension reads, no
//! I/O, no allocation once buffers are warm, no shared cache line per event, no wake-up of the
//! worker. Span fields are encoded once, in `on_new_span`/`on_record`, and
//! stored in the span's extensions; an event copies the encoded spans of its scope. The current
//! span comes from the layer's own per-thread [`span_stack`], not from the registry's, whose
//! read writes a cache line that other threads write too.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use crate::pipeline::queue::Queue;
use crate::route::Routes;
use crate::row::RowShape;
use crate::row::encode::{write_head, write_row_id, write_tail, write_time_column};
use crate::row::fields::{CachedKeys, EventFields, Fields};
use crate::row::json::key;
mod callsite;
mod span_fields;
pub(crate) mod span_stack;
#[cfg(feature = "opentelemetry")]
mod trace_context;

use callsite::{Callsite, append_members, cached};
use span_fields::{SpanFields, write_scope_columns};

/// Ships each event as a row to the Logs Ingestion API, through the pipeline that
/// [`AzureLogsBuilder::build`](crate::AzureLogsBuilder::build) starts. Composes with `EnvFilter`,
/// per-layer filters, `reload` and other pipelines' layers in the same registry.
///
/// Pitfall: an event emitted by another layer from its own `on_enter`/`on_exit` hook is given
/// the spans as this layer last saw them. Add this layer first (innermost) if such a layer is
/// installed too; then they agree with the registry.
#[derive(Clone)]
pub struct AzureLogsLayer {
    pub(crate) queue: Arc<Queue>,
    pub(crate) shape: Arc<RowShape>,
    pub(crate) routes: Arc<Routes>,
    /// Names this layer's entries in the thread's [`span_stack`]; set by `on_layer`, so a layer
    /// that was never installed (one swapped in by `reload`, which does not call `on_layer`)
    /// keeps no stack and asks the registry instead.
    pub(crate) instance: Option<u64>,
    /// The dispatch this layer is installed in, where the trace columns find tracing-
    /// opentelemetry's span contexts; set by `on_register_dispatch`.
    #[cfg(feature = "opentelemetry")]
    pub(crate) dispatch: std::sync::OnceLock<tracing::dispatcher::WeakDispatch>,
}

impl AzureLogsLayer {
    /// A layer not yet installed, pushing rows of `shape` into `queue`.
    pub(crate) fn new(queue: Arc<Queue>, shape: Arc<RowShape>, routes: Arc<Routes>) -> AzureLogsLayer {
        AzureLogsLayer {
            queue,
            shape,
            routes,
            instance: None,
            #[cfg(feature = "opentelemetry")]
            dispatch: std::sync::OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for AzureLogsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLogsLayer").finish_non_exhaustive()
    }
}

thread_local! {
    /// Per-thread scratch: the message field, and the parts of rows that depend only on the
    /// callsite (and this thread), encoded once.
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { message: Vec::new(), callsites: Vec::new() }) };
}

/// A thread's scratch space for encoding events.
struct Scratch {
    message: Vec<u8>,
    /// A direct-mapped cache of [`CALLSITE_SLOTS`] entries, allocated on first use.
    callsites: Vec<Callsite>,
}

impl<S> tracing_subscriber::Layer<S> for AzureLogsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    /// A fresh id per installation: a clone installed in a second subscriber keeps a stack of
    /// its own (span ids are per subscriber).
    fn on_layer(&mut self, _: &mut S) {
        self.instance = Some(span_stack::next_layer_id());
        #[cfg(feature = "opentelemetry")]
        {
            self.dispatch = std::sync::OnceLock::new();
        }
    }

    #[cfg(feature = "opentelemetry")]
    fn on_register_dispatch(&self, dispatch: &tracing::Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_enter(&self, id: &Id, _: Context<'_, S>) {
        if let Some(layer) = self.instance
            && self.shape.scoped()
        {
            span_stack::enter(layer, id);
        }
    }

    fn on_exit(&self, id: &Id, _: Context<'_, S>) {
        if let Some(layer) = self.instance
            && self.shape.scoped()
        {
            span_stack::exit(layer, id);
        }
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if self.shape.spans.is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields {
            name: attrs.metadata().name(),
            members: Vec::new(),
            encoded: Vec::new(),
            version: Default::default(),
        };
        attrs.record(&mut Fields(&mut fields));
        fields.encode();
        let mut extensions = span.extensions_mut();
        // Another pipeline's layer in the same registry may have encoded them already (the same
        // bytes): one copy serves both.
        if extensions.get_mut::<SpanFields>().is_none() {
            extensions.insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // Record into a copy with no lock held: the values' `Debug` code may emit an event in this
        // span, which reads the span's extensions.
        let Some(mut fields) = span.extensions().get::<SpanFields>().cloned() else {
            return;
        };
        values.record(&mut Fields(&mut fields));
        fields.encode();
        let version = fields.version.clone();
        span.extensions_mut().replace(fields);
        // After the new encoding is in place: a thread that reads the old version re-encodes.
        version.fetch_add(1, Ordering::Release);
    }

    /// Cached scopes that still hold the span (an entered span whose guard was leaked) are
    /// encoded again, from the registry, which no longer has it.
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if self.instance.is_some()
            && self.shape.spans.is_some()
            && let Some(span) = ctx.span(&id)
            && let Some(fields) = span.extensions().get::<SpanFields>()
        {
            fields.version.fetch_add(1, Ordering::Release);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let queue = &self.queue;
        if !queue.admit() {
            return;
        }
        // tracing-log's callsites all have the target "log": a cheap test before its own.
        let normalized = (event.metadata().target() == "log")
            .then(|| event.normalized_metadata())
            .flatten();
        let from_log = normalized.is_some();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let stream = self.routes.stream_for(meta.target(), event);

        let mut row = queue.buffer();
        let encoded = SCRATCH
            .try_with(|local| {
                // Already borrowed: an event emitted while this thread formats a field.
                let Ok(mut local) = local.try_borrow_mut() else {
                    return false;
                };
                let Scratch { message, callsites } = &mut *local;
                // `log` records share one callsite per level, with other metadata each time.
                let callsite = (!from_log).then(|| cached(callsites, &self.shape, event.metadata()));
                let input = EventInput {
                    event,
                    meta,
                    from_log,
                    callsite,
                };
                self.encode_event(&mut row, message, &input, &ctx);
                true
            })
            .unwrap_or(false);
        if !encoded {
            // Re-entrant events, exiting threads.
            let input = EventInput {
                event,
                meta,
                from_log,
                callsite: None,
            };
            self.encode_event(&mut row, &mut Vec::new(), &input, &ctx);
        }
        queue.push(stream, row);
    }
}

/// What an event's row is made of, besides the layer's settings.
struct EventInput<'a> {
    event: &'a Event<'a>,
    /// The event's metadata, or the `log` record's for events from tracing-log.
    meta: &'a Metadata<'a>,
    from_log: bool,
    /// The callsite's pre-encoded parts, when cached (not for `log` records).
    callsite: Option<&'a Callsite>,
}

impl AzureLogsLayer {
    /// Encodes the event as one JSON row into `row`, with `message` as scratch for the message.
    fn encode_event<S>(&self, row: &mut Vec<u8>, message: &mut Vec<u8>, input: &EventInput<'_>, ctx: &Context<'_, S>)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let EventInput {
            event,
            meta,
            from_log,
            callsite,
        } = *input;
        let shape = &*self.shape;
        row.push(b'{');
        write_time_column(shape, row);
        write_row_id(shape, row);
        match callsite {
            Some(c) => append_members(row, &c.head),
            None => write_head(shape, row, meta.level(), meta.target()),
        }
        message.clear();
        let cached = callsite.map(|c| CachedKeys {
            message: c.message,
            keys: &c.keys,
        });
        match &shape.properties {
            Some(k) => {
                key(row, k);
                row.push(b'{');
                event.record(&mut Fields(EventFields {
                    out: Some(row),
                    message,
                    skip_log_fields: from_log,
                    cached,
                }));
                row.push(b'}');
            }
            None => event.record(&mut Fields(EventFields {
                out: None,
                message,
                skip_log_fields: from_log,
                cached,
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
        if shape.scoped() {
            write_scope_columns(self, row, event, ctx);
        }
        match callsite {
            Some(c) => append_members(row, &c.tail),
            None => write_tail(shape, row, meta.file(), meta.line()),
        }
    }
}
