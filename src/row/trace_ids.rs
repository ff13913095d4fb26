//! The trace columns (feature `opentelemetry`): an OpenTelemetry span context's trace id and span
//! id, as lowercase hex JSON strings under the shape's column names.

use opentelemetry::trace::{SpanContext, TraceContextExt};

use super::RowShape;
use super::json::key;

/// Writes the `TraceId` and `SpanId` members of `context` (each after a comma unless `out` ends
/// with `{`); nothing for an invalid (all-zero) context. A context that was not sampled still
/// has its ids, and they still join the rows with the other services' telemetry of the trace.
pub(crate) fn write_ids(shape: &RowShape, out: &mut Vec<u8>, context: &SpanContext) {
    if !context.is_valid() {
        return;
    }
    if let Some(k) = &shape.trace_id {
        key(out, k);
        write_hex(out, &context.trace_id().to_bytes());
    }
    if let Some(k) = &shape.span_id {
        key(out, k);
        write_hex(out, &context.span_id().to_bytes());
    }
}

/// The trace columns from the thread's current OpenTelemetry context (`Context::current`): for
/// rows made outside a tracing span (the `log` bridge, events outside spans), inside a span that
/// the OpenTelemetry API started or that tracing-opentelemetry activated. One thread-local read.
pub(crate) fn write_current(shape: &RowShape, out: &mut Vec<u8>) {
    if shape.correlates() {
        opentelemetry::Context::map_current(|cx| write_ids(shape, out, cx.span().span_context()));
    }
}

/// `bytes` as a JSON string of lowercase hex digits, two per byte.
fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 2);
    out.push(b'"');
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 15)]);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;
    use crate::row::Columns;

    #[test]
    fn ids_are_lowercase_hex_under_the_shape_names() {
        let context = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let columns = Columns {
            trace_id: Some("OperationId".into()),
            ..Columns::default()
        };
        let mut out = b"{".to_vec();
        write_ids(&RowShape::new(&columns), &mut out, &context);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"OperationId":"0af7651916cd43dd8448eb211c80319c","SpanId":"b7ad6b7169203331""#
        );
        let dropped = Columns {
            span_id: None,
            ..Columns::default()
        };
        let mut out = b"{\"A\":1".to_vec();
        write_ids(&RowShape::new(&dropped), &mut out, &context);
        assert_eq!(out, br#"{"A":1,"TraceId":"0af7651916cd43dd8448eb211c80319c""#);
        let mut out = Vec::new();
        write_ids(
            &RowShape::new(&Columns::default()),
            &mut out,
            &SpanContext::empty_context(),
        );
        assert!(out.is_empty(), "no ids for an invalid context");
    }
}
