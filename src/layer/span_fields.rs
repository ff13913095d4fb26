//! Span fields, encoded once when a span is created or recorded and kept in its extensions, and
//! an event's scope written from them (through the thread's span stack when it can).

use std::sync::atomic::Ordering;

use tracing::field::Field;
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::{AzureLogsLayer, span_stack};
#[cfg(feature = "opentelemetry")]
use super::{callsite::append_members, trace_context};
use crate::row::fields::FieldSink;
use crate::row::json::{key, write_str};

/// A span's fields, encoded once: `{"name":"request","fields":{"method":"GET"}}`.
#[derive(Clone)]
pub(super) struct SpanFields {
    pub(super) name: &'static str,
    pub(super) members: Vec<(&'static str, Vec<u8>)>,
    pub(super) encoded: Vec<u8>,
    /// Advanced after `encoded` changes (and when the span closes): scopes cached in the
    /// threads' [`span_stack`]s that hold this span are then encoded again. Shared by copies.
    pub(super) version: span_stack::Version,
}

impl SpanFields {
    pub(super) fn encode(&mut self) {
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

/// Writes the columns that come from the event's span: `Spans` (the spans `Context::event_scope`
/// names, root first) and, with the feature `opentelemetry`, the trace columns. For an event in
/// the current span, from the scope cached in this layer's own [`span_stack`] (not the registry's
/// stack: see there why), encoded again when a span in it changed; otherwise (an explicit
/// parent, or the stack cannot be read) from the registry.
pub(super) fn write_scope_columns<S>(layer: &AzureLogsLayer, row: &mut Vec<u8>, event: &Event<'_>, ctx: &Context<'_, S>)
where
    S: Subscriber + for<'l> LookupSpan<'l>,
{
    let shape = &*layer.shape;
    if event.is_contextual()
        && let Some(instance) = layer.instance
    {
        let cached = span_stack::with_current(instance, |id, scope| {
            if !scope.is_fresh() {
                scope.clear();
                if shape.spans.is_some() {
                    scope.encoded.push(b'[');
                }
                // A span the registry no longer has (its guard was leaked, then it closed) is
                // looked up again at the next event.
                if let Some(leaf) = ctx.span(&id) {
                    // Encoded apart from the row, so with a comma first (`key` writes one into an
                    // empty buffer); `append_members` drops it after a `{`.
                    #[cfg(feature = "opentelemetry")]
                    trace_context::write_span_ids(shape, &layer.dispatch, &leaf, &mut scope.ids);
                    if shape.spans.is_some() {
                        scope.leaf_versioned = leaf.extensions().get::<SpanFields>().is_some();
                        write_scope(&mut scope.encoded, Some(&mut scope.versions), leaf, 0);
                    }
                    scope.valid = true;
                }
            }
            if let Some(k) = &shape.spans {
                key(row, k);
                row.extend_from_slice(&scope.encoded);
                row.push(b']');
            }
            #[cfg(feature = "opentelemetry")]
            append_members(row, &scope.ids);
        });
        match cached {
            span_stack::Current::Span(()) => return,
            span_stack::Current::None => {
                if let Some(k) = &shape.spans {
                    key(row, k);
                    row.extend_from_slice(b"[]");
                }
                #[cfg(feature = "opentelemetry")]
                crate::row::trace_ids::write_current(shape, row);
                return;
            }
            span_stack::Current::Unknown => {}
        }
    }
    if let Some(k) = &shape.spans {
        key(row, k);
        row.push(b'[');
        if let Some(leaf) = ctx.event_span(event) {
            write_scope(row, None, leaf, 0);
        }
        row.push(b']');
    }
    #[cfg(feature = "opentelemetry")]
    match ctx.event_span(event) {
        Some(leaf) => trace_context::write_span_ids(shape, &layer.dispatch, &leaf, row),
        None => crate::row::trace_ids::write_current(shape, row),
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
