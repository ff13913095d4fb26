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

use tracing::field::Field;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::pipeline::queue::Queue;
use crate::route::Routes;
use crate::row::RowShape;
use crate::row::encode::{write_head, write_tail, write_time_column};
use crate::row::fields::{CachedKeys, EventFields, FieldSink, Fields};
use crate::row::json::{key, write_str};
use crate::span_stack;

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
}

impl std::fmt::Debug for AzureLogsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLogsLayer").finish_non_exhaustive()
    }
}

/// A span's fields, encoded once: `{"name":"request","fields":{"method":"GET"}}`.
#[derive(Clone)]
struct SpanFields {
    name: &'static str,
    members: Vec<(&'static str, Vec<u8>)>,
    encoded: Vec<u8>,
    /// Advanced after `encoded` changes (and when the span closes): scopes cached in the
    /// threads' [`span_stack`]s that hold this span are then encoded again. Shared by copies.
    version: span_stack::Version,
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
    /// Per-thread scratch: the message field, and the parts of rows that depend only on the
    /// callsite (and this thread), encoded once.
    static LOCAL: RefCell<Local> = const { RefCell::new(Local { message: Vec::new(), callsites: Vec::new() }) };
}

struct Local {
    message: Vec<u8>,
    /// A direct-mapped cache of [`CALLSITE_SLOTS`] entries, allocated on first use.
    callsites: Vec<Callsite>,
}

const CALLSITE_SLOTS: usize = 512;

/// The pre-encoded parts of rows from one callsite, for one row shape, on one thread.
#[derive(Default)]
struct Callsite {
    meta: usize,
    shape: u64,
    /// `,"Level":"INFO","Target":"app::http"` and the static columns.
    head: Vec<u8>,
    /// `,"File":"src/main.rs","Line":12,"Thread":"main"}`.
    tail: Vec<u8>,
    /// `"name":` for each field of the callsite, by field index.
    keys: Vec<Vec<u8>>,
    /// The index of the `message` field, if the callsite has one.
    message: Option<usize>,
}

/// The cached parts for `meta` and `shape`, encoded on a miss (first use, or a slot collision),
/// reusing the slot's buffers.
fn cached<'a>(callsites: &'a mut Vec<Callsite>, shape: &RowShape, meta: &'static Metadata<'static>) -> &'a Callsite {
    if callsites.is_empty() {
        callsites.resize_with(CALLSITE_SLOTS, Callsite::default);
    }
    let (meta_id, shape_id) = (meta as *const Metadata<'static> as usize, shape.id);
    let slot = (meta_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) % CALLSITE_SLOTS;
    let entry = &mut callsites[slot];
    if entry.meta != meta_id || entry.shape != shape_id {
        entry.meta = meta_id;
        entry.shape = shape_id;
        entry.head.clear();
        write_head(shape, &mut entry.head, meta.level(), meta.target());
        entry.tail.clear();
        write_tail(shape, &mut entry.tail, meta.file(), meta.line());
        entry.keys.resize_with(meta.fields().len(), Vec::new);
        entry.message = meta.fields().field("message").map(|f| f.index());
        for (field, key) in meta.fields().iter().zip(&mut entry.keys) {
            key.clear();
            write_str(key, field.name());
            key.push(b':');
        }
    }
    entry
}

/// Appends pre-encoded members that start with a comma, dropping it right after `{`.
fn append_members(row: &mut Vec<u8>, members: &[u8]) {
    match members.split_first() {
        Some((b',', rest)) if row.last() == Some(&b'{') => row.extend_from_slice(rest),
        _ => row.extend_from_slice(members),
    }
}

impl<S> tracing_subscriber::Layer<S> for AzureLogsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    /// A fresh id per installation: a clone installed in a second subscriber keeps a stack of
    /// its own (span ids are per subscriber).
    fn on_layer(&mut self, _: &mut S) {
        self.instance = Some(span_stack::next_layer_id());
    }

    fn on_enter(&self, id: &Id, _: Context<'_, S>) {
        if let (Some(layer), Some(_)) = (self.instance, &self.shape.spans) {
            span_stack::enter(layer, id);
        }
    }

    fn on_exit(&self, id: &Id, _: Context<'_, S>) {
        if let (Some(layer), Some(_)) = (self.instance, &self.shape.spans) {
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
        let encoded = LOCAL
            .try_with(|local| {
                // Already borrowed: an event emitted while this thread formats a field.
                let Ok(mut local) = local.try_borrow_mut() else {
                    return false;
                };
                let Local { message, callsites } = &mut *local;
                // `log` records share one callsite per level, with other metadata each time.
                let callsite = (!from_log).then(|| cached(callsites, &self.shape, event.metadata()));
                self.encode_event(&mut row, message, event, meta, from_log, callsite, &ctx);
                true
            })
            .unwrap_or(false);
        if !encoded {
            // Re-entrant events, exiting threads.
            self.encode_event(&mut row, &mut Vec::new(), event, meta, from_log, None, &ctx);
        }
        queue.push(stream, row);
    }
}

impl AzureLogsLayer {
    #[allow(clippy::too_many_arguments)]
    fn encode_event<S>(
        &self,
        row: &mut Vec<u8>,
        message: &mut Vec<u8>,
        event: &Event<'_>,
        meta: &Metadata<'_>,
        from_log: bool,
        callsite: Option<&Callsite>,
        ctx: &Context<'_, S>,
    ) where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let shape = &*self.shape;
        row.push(b'{');
        write_time_column(shape, row);
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
        if let Some(k) = &shape.spans {
            key(row, k);
            write_event_scope(self.instance, row, event, ctx);
            row.push(b']');
        }
        match callsite {
            Some(c) => append_members(row, &c.tail),
            None => write_tail(shape, row, meta.file(), meta.line()),
        }
    }
}

/// Writes `[` and the encoded spans of the event's scope (the spans `Context::event_scope`
/// names), root first. For an event in the current span, from the scope cached in this layer's
/// own [`span_stack`] (not the registry's stack: see there why), encoded again when a span in
/// it changed; otherwise (an explicit parent, or the stack cannot be read) from the registry.
fn write_event_scope<S>(layer: Option<u64>, row: &mut Vec<u8>, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    if event.is_contextual()
        && let Some(layer) = layer
    {
        let cached = span_stack::with_current(layer, |id, scope| {
            if !scope.is_fresh() {
                scope.clear();
                scope.encoded.push(b'[');
                // A span the registry no longer has (its guard was leaked, then it closed) is
                // looked up again at the next event.
                if let Some(leaf) = ctx.span(&id) {
                    scope.leaf_versioned = leaf.extensions().get::<SpanFields>().is_some();
                    write_scope(&mut scope.encoded, Some(&mut scope.versions), leaf, 0);
                    scope.valid = true;
                }
            }
            row.extend_from_slice(&scope.encoded);
        });
        match cached {
            Some(Some(())) => return,
            Some(None) => {
                row.push(b'[');
                return;
            }
            None => {}
        }
    }
    row.push(b'[');
    if let Some(leaf) = ctx.event_span(event) {
        write_scope(row, None, leaf, 0);
    }
}

/// Spans nested deeper than this are left out of an event's `Spans`, root side first.
const MAX_SPAN_DEPTH: usize = 64;

/// Writes the encoded fields of `span`'s ancestors, root first, then its own; with `versions`,
/// also each span's version, read before its encoding.
fn write_scope<S>(
    row: &mut Vec<u8>,
    mut versions: Option<&mut Vec<(span_stack::Version, u64)>>,
    span: SpanRef<'_, S>,
    depth: usize,
) where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if depth + 1 < MAX_SPAN_DEPTH
        && let Some(parent) = span.parent()
    {
        write_scope(row, versions.as_deref_mut(), parent, depth + 1);
    }
    if let Some(fields) = span.extensions().get::<SpanFields>() {
        if let Some(versions) = versions {
            versions.push((fields.version.clone(), fields.version.load(Ordering::Acquire)));
        }
        if row.last() != Some(&b'[') {
            row.push(b',');
        }
        row.extend_from_slice(&fields.encoded);
    }
}
