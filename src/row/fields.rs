//! Field encoding: tracing fields visited into typed JSON values (numbers stay numbers), for
//! event properties, the message, and span fields.

use std::fmt;

use super::json::{key, write_f64, write_fmt, write_int, write_str};

/// Where a visited field's value goes: `None` skips the field.
pub(crate) trait FieldSink {
    fn slot(&mut self, field: &tracing::field::Field) -> Option<&mut Vec<u8>>;
}

/// Visits tracing fields and writes each value, typed, into the slot its sink gives.
pub(crate) struct Fields<S>(pub(crate) S);

/// Event fields as object members (`"name":value`) into `out` (skipped when `None`), except the
/// `message` field, which goes to `message` as a JSON string; fields named `log.*` (added by the
/// `log` → `tracing` bridge, which become columns) are skipped when `skip_log_fields` is set.
pub(crate) struct EventFields<'a> {
    pub(crate) out: Option<&'a mut Vec<u8>>,
    pub(crate) message: &'a mut Vec<u8>,
    pub(crate) skip_log_fields: bool,
    /// The callsite's fields, when cached: no name is compared then.
    pub(crate) cached: Option<CachedKeys<'a>>,
}

/// A callsite's fields by index: which one is `message`, and the others' keys as `"name":`.
#[derive(Clone, Copy)]
pub(crate) struct CachedKeys<'a> {
    pub(crate) message: Option<usize>,
    pub(crate) keys: &'a [Vec<u8>],
}

impl FieldSink for EventFields<'_> {
    fn slot(&mut self, field: &tracing::field::Field) -> Option<&mut Vec<u8>> {
        if let Some(CachedKeys { message, keys }) = self.cached {
            let index = field.index();
            if message == Some(index) {
                self.message.clear();
                return Some(self.message);
            }
            if let Some(encoded) = keys.get(index) {
                let out = self.out.as_deref_mut()?;
                key(out, encoded);
                return Some(out);
            }
        }
        let name = field.name();
        if name == "message" {
            self.message.clear();
            return Some(self.message);
        }
        if self.skip_log_fields && name.starts_with("log.") {
            return None;
        }
        let out = self.out.as_deref_mut()?;
        key_str(out, name);
        Some(out)
    }
}

/// Starts a member whose key is not pre-encoded.
pub(crate) fn key_str(out: &mut Vec<u8>, name: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    write_str(out, name);
    out.push(b':');
}

impl<S: FieldSink> tracing::field::Visit for Fields<S> {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if let Some(out) = self.0.slot(field) {
            write_f64(out, value);
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        if let Some(out) = self.0.slot(field) {
            write_int(out, value);
        }
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if let Some(out) = self.0.slot(field) {
            write_int(out, value);
        }
    }
    fn record_i128(&mut self, field: &tracing::field::Field, value: i128) {
        if let Some(out) = self.0.slot(field) {
            write_int(out, value);
        }
    }
    fn record_u128(&mut self, field: &tracing::field::Field, value: u128) {
        if let Some(out) = self.0.slot(field) {
            write_int(out, value);
        }
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        if let Some(out) = self.0.slot(field) {
            out.extend_from_slice(if value { b"true" } else { b"false" });
        }
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if let Some(out) = self.0.slot(field) {
            write_str(out, value);
        }
    }
    fn record_error(&mut self, field: &tracing::field::Field, value: &(dyn std::error::Error + 'static)) {
        if let Some(out) = self.0.slot(field) {
            write_fmt(out, format_args!("{value}"));
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if let Some(out) = self.0.slot(field) {
            write_fmt(out, format_args!("{value:?}"));
        }
    }
}
