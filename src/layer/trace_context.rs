//! Trace correlation (feature `opentelemetry`): the OpenTelemetry ids of an event's span, from
//! the context that tracing-opentelemetry's layer keeps for each tracing span.
//!
//! The lookup (`tracing_opentelemetry::get_otel_context`: the registry's slot, the span's
//! extensions, the OpenTelemetry layer's lock) is made once per span and thread, when the span's
//! scope is encoded into the thread's [`span_stack`](super::span_stack); later events in the span
//! copy the encoded ids. It builds the span's context if the OpenTelemetry layer has not yet
//! (with `with_context_activation(false)`, or an event with an explicit parent), so the ids are
//! those the exported span will have.
//!
//! Pitfall: the OpenTelemetry layer must come from the tracing-opentelemetry version this crate
//! depends on (0.34); another version's layer is not found, and rows carry no ids.

use std::sync::OnceLock;

use opentelemetry::trace::TraceContextExt;
use tracing::Subscriber;
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::row::RowShape;
use crate::row::trace_ids::write_ids;

/// Writes the trace columns of an event in `leaf`: the ids of the nearest span, leaf first, that
/// the OpenTelemetry layer tracks (one its filter left out is skipped). Nothing when no such
/// span or layer exists. The caller must not hold `leaf`'s extensions (`get_otel_context` reads
/// them). Events that the OpenTelemetry SDK emits while the lookup builds a context never reach
/// this layer: tracing drops events emitted while it dispatches one.
pub(super) fn write_span_ids<S>(
    shape: &RowShape,
    dispatch: &OnceLock<WeakDispatch>,
    leaf: &SpanRef<'_, S>,
    out: &mut Vec<u8>,
) where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !shape.correlates() {
        return;
    }
    let Some(dispatch) = dispatch.get().and_then(WeakDispatch::upgrade) else {
        return;
    };
    for span in leaf.scope() {
        if let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) {
            write_ids(shape, out, cx.span().span_context());
            return;
        }
    }
}
