//! The row: which columns an event becomes, and the JSON encoders that write them without
//! allocating.
//!
//! Default columns (each can be renamed or turned off, static columns can be added):
//!
//! | column | DCR type | from |
//! |---|---|---|
//! | `TimeGenerated` | datetime | event time, RFC 3339 UTC with microseconds |
//! | `Level` | string | `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE` |
//! | `Target` | string | the event's target (module path by default) |
//! | `Message` | string | the `message` field |
//! | `Properties` | dynamic | every other event field, typed (numbers stay numbers) |
//! | `Spans` | dynamic | the span scope, root to leaf: `[{"name": ..., "fields": {...}}]` |
//! | `File`, `Line` | string, int | event location, when known |
//! | `Thread` | string | thread name, or its id |
//!
//! String values over 64 KiB (65,536 bytes) are cut at a character boundary and end with
//! `…[truncated]`, staying within 65,536 bytes (the service truncates longer values anyway).
//! Non-finite floats become `null`; `Debug` and `Display` values become strings.

use std::fmt::{self, Write as _};

use serde_json::Value;

/// The service's limit on one field value; longer strings are cut.
pub const MAX_FIELD_BYTES: usize = 65_536;
const TRUNCATED: &str = "…[truncated]";

/// Names of the default columns; `None` turns a column off.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Columns {
    /// Event time. Default `TimeGenerated`.
    pub time_generated: Option<String>,
    /// Level. Default `Level`.
    pub level: Option<String>,
    /// Target. Default `Target`.
    pub target: Option<String>,
    /// The `message` field. Default `Message`.
    pub message: Option<String>,
    /// The other event fields, as an object. Default `Properties`.
    pub properties: Option<String>,
    /// The span scope, root to leaf. Default `Spans`.
    pub spans: Option<String>,
    /// Source file. Default `File`.
    pub file: Option<String>,
    /// Source line. Default `Line`.
    pub line: Option<String>,
    /// Thread name or id. Default `Thread`.
    pub thread: Option<String>,
    /// Columns with the same value in every row (for example `Computer`), in order.
    pub statics: Vec<(String, Value)>,
}

impl Default for Columns {
    fn default() -> Self {
        let name = |n: &str| Some(n.to_owned());
        Columns {
            time_generated: name("TimeGenerated"),
            level: name("Level"),
            target: name("Target"),
            message: name("Message"),
            properties: name("Properties"),
            spans: name("Spans"),
            file: name("File"),
            line: name("Line"),
            thread: name("Thread"),
            statics: Vec::new(),
        }
    }
}

impl Columns {
    /// The default columns with their DCR types, in row order (`None` where turned off).
    fn defaults(&self) -> [(&Option<String>, &'static str); 9] {
        [
            (&self.time_generated, "datetime"),
            (&self.level, "string"),
            (&self.target, "string"),
            (&self.message, "string"),
            (&self.properties, "dynamic"),
            (&self.spans, "dynamic"),
            (&self.file, "string"),
            (&self.line, "int"),
            (&self.thread, "string"),
        ]
    }

    /// Every column in use with its DCR type, defaults then statics, in row order.
    fn typed(&self) -> impl Iterator<Item = (&str, &'static str)> {
        let statics = self.statics.iter().map(|(name, value)| {
            let kind = match value {
                Value::Bool(_) => "boolean",
                Value::Number(n) if n.is_f64() => "real",
                Value::Number(_) => "long",
                Value::String(_) => "string",
                _ => "dynamic",
            };
            (name.as_str(), kind)
        });
        self.defaults()
            .into_iter()
            .filter_map(|(name, kind)| name.as_deref().map(|n| (n, kind)))
            .chain(statics)
    }

    /// Fails on an empty column name or one used twice (rows would carry duplicate keys).
    pub(crate) fn check(&self) -> Result<(), crate::client::ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (name, _) in self.typed() {
            let reason = if name.is_empty() {
                "a column name is empty".to_owned()
            } else if !seen.insert(name) {
                format!("column {name:?} is used twice")
            } else {
                continue;
            };
            return Err(crate::client::ConfigError::InvalidOption {
                option: "columns",
                reason,
            });
        }
        Ok(())
    }

    /// The DCR stream declaration for rows of this shape: `{"columns":[{"name","type"}...]}`.
    /// Paste it under `streamDeclarations` of your data collection rule; the table needs the same
    /// columns (`TimeGenerated` is required on every table).
    pub fn stream_declaration(&self) -> Value {
        serde_json::json!({ "columns": self.typed_columns() })
    }

    /// The body that creates the matching custom table with the Log Analytics Tables API
    /// (`PUT .../workspaces/{ws}/tables/{table}?api-version=2022-10-01`); `table` should end in
    /// `_CL`. The table always has `TimeGenerated`, added here when the rows leave it out.
    pub fn table_schema(&self, table: &str) -> Value {
        let mut columns = self.typed_columns();
        if !columns.iter().any(|c| c["name"] == "TimeGenerated") {
            columns.insert(0, serde_json::json!({"name": "TimeGenerated", "type": "datetime"}));
        }
        serde_json::json!({ "properties": { "schema": { "name": table, "columns": columns } } })
    }

    /// Every column with its DCR type, in row order.
    fn typed_columns(&self) -> Vec<Value> {
        self.typed()
            .map(|(name, kind)| serde_json::json!({"name": name, "type": kind}))
            .collect()
    }
}

/// [`Columns`] with every key pre-encoded as `"Name":`, ready for the hot path.
#[derive(Debug)]
pub(crate) struct RowShape {
    /// Unique per shape, for caches keyed on it (an address could be reused after a free).
    pub(crate) id: u64,
    pub(crate) time_generated: Option<Box<[u8]>>,
    pub(crate) level: Option<Box<[u8]>>,
    pub(crate) target: Option<Box<[u8]>>,
    pub(crate) message: Option<Box<[u8]>>,
    pub(crate) properties: Option<Box<[u8]>>,
    pub(crate) spans: Option<Box<[u8]>>,
    pub(crate) file: Option<Box<[u8]>>,
    pub(crate) line: Option<Box<[u8]>>,
    pub(crate) thread: Option<Box<[u8]>>,
    /// `"A":1,"B":"x"` (no leading comma), or empty.
    pub(crate) statics: Box<[u8]>,
}

impl RowShape {
    pub(crate) fn new(columns: &Columns) -> Self {
        let key = |name: &Option<String>| {
            name.as_ref().map(|n| {
                let mut out = Vec::with_capacity(n.len() + 3);
                write_str(&mut out, n);
                out.push(b':');
                out.into_boxed_slice()
            })
        };
        let mut statics = Vec::new();
        for (name, value) in &columns.statics {
            if !statics.is_empty() {
                statics.push(b',');
            }
            write_str(&mut statics, name);
            statics.push(b':');
            serde_json::to_writer(&mut statics, value).expect("a Value always serializes");
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        RowShape {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            time_generated: key(&columns.time_generated),
            level: key(&columns.level),
            target: key(&columns.target),
            message: key(&columns.message),
            properties: key(&columns.properties),
            spans: key(&columns.spans),
            file: key(&columns.file),
            line: key(&columns.line),
            thread: key(&columns.thread),
            statics: statics.into_boxed_slice(),
        }
    }
}

/// Starts a member of an object that is being written: a comma unless it is the first, then the
/// pre-encoded key. `out` must end inside an object opened with `{`.
pub(crate) fn key(out: &mut Vec<u8>, encoded_key: &[u8]) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(encoded_key);
}

/// Writes `s` as a JSON string, cut to [`MAX_FIELD_BYTES`].
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Fast path: most keys and values are short and need no escaping.
    if s.len() <= MAX_FIELD_BYTES - TRUNCATED.len() && is_clean(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut w = Escaper::new(out);
    w.push(s);
    w.finish();
}

/// Writes `value` formatted with `Display` or `Debug` as a JSON string, without a temporary
/// `String`, cut to [`MAX_FIELD_BYTES`].
pub(crate) fn write_fmt(out: &mut Vec<u8>, value: fmt::Arguments<'_>) {
    out.push(b'"');
    let mut w = Escaper::new(out);
    // Our `write_str` never fails; a `Debug` impl that errors leaves what it wrote so far.
    let _ = w.write_fmt(value);
    w.finish();
}

/// Escapes text into a JSON string body, counting the unescaped bytes against the field limit.
struct Escaper<'a> {
    out: &'a mut Vec<u8>,
    left: usize,
    cut: bool,
}

impl<'a> Escaper<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Escaper {
            out,
            left: MAX_FIELD_BYTES - TRUNCATED.len(),
            cut: false,
        }
    }

    fn push(&mut self, s: &str) {
        if self.cut {
            return;
        }
        let s = if s.len() > self.left {
            self.cut = true;
            let mut end = self.left;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        } else {
            s
        };
        self.left -= s.len();
        escape_into(self.out, s);
    }

    fn finish(self) {
        if self.cut {
            self.out.extend_from_slice(TRUNCATED.as_bytes());
        }
        self.out.push(b'"');
    }
}

impl fmt::Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s);
        Ok(())
    }
}

/// Whether any byte of `word` is a control character, `"` or `\\`: the bytes JSON escapes.
#[inline]
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    (control | has_zero(word ^ (ONES * u64::from(b'"'))) | has_zero(word ^ (ONES * u64::from(b'\\')))) != 0
}

/// Whether `bytes` has nothing JSON escapes, eight bytes at a time.
#[inline]
fn is_clean(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        if needs_escape(u64::from_le_bytes(chunk.try_into().expect("8 bytes"))) {
            return false;
        }
    }
    // The tail, padded with a byte that needs no escaping.
    let tail = chunks.remainder();
    let mut word = [b'a'; 8];
    word[..tail.len()].copy_from_slice(tail);
    !needs_escape(u64::from_le_bytes(word))
}

fn escape_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most text needs no escaping: check it eight bytes at a time, then copy it in one go.
    if is_clean(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                out.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Writes an integer.
pub(crate) fn write_int(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Writes a float; NaN and infinities become `null`.
pub(crate) fn write_f64(out: &mut Vec<u8>, value: f64) {
    if write_short_decimal(out, value) {
        return;
    }
    if value.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(value).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Writes the common case of a float, a decimal with at most six fractional digits (`12.5`,
/// `0.25`, `3.0`), with integer arithmetic; returns false to leave other values to ryu. The text
/// reads back as exactly `value`: `m / 10^k == value` is checked, and with `m < 10^15 < 2^53` both
/// operands are exact, so the division is the correctly rounded value of the decimal.
fn write_short_decimal(out: &mut Vec<u8>, value: f64) -> bool {
    const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    let magnitude = value.abs();
    if !(1e-6..1e9).contains(&magnitude) && magnitude != 0.0 {
        return false;
    }
    for (k, &p) in POW10.iter().enumerate() {
        // The integer nearest to `magnitude * p` (below 10^15, so below 2^53): `as` truncates,
        // which is one instruction where `round` is a libm call.
        let m = (magnitude * p + 0.5) as i64;
        if m as f64 / p == magnitude {
            if value.is_sign_negative() && magnitude != 0.0 {
                out.push(b'-');
            }
            // The digits of m, with the point k places from the right.
            let mut buf = itoa::Buffer::new();
            let digits = buf.format(m as u64).as_bytes();
            if k == 0 {
                out.extend_from_slice(digits);
                out.extend_from_slice(b".0");
            } else if digits.len() > k {
                let (int, frac) = digits.split_at(digits.len() - k);
                out.extend_from_slice(int);
                out.push(b'.');
                out.extend_from_slice(frac);
            } else {
                out.extend_from_slice(b"0.");
                out.extend(std::iter::repeat_n(b'0', k - digits.len()));
                out.extend_from_slice(digits);
            }
            return true;
        }
    }
    false
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn as_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
    }

    #[test]
    fn strings_escape_and_truncate_at_a_char_boundary() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\nd\u{1}é😀");
        assert_eq!(as_json(&out), Value::String("a\"b\\c\nd\u{1}é😀".into()));

        let long = "é".repeat(MAX_FIELD_BYTES);
        let mut out = Vec::new();
        write_str(&mut out, &long);
        let s = as_json(&out).as_str().unwrap().to_owned();
        assert!(s.len() <= MAX_FIELD_BYTES, "{}", s.len());
        assert!(s.len() > MAX_FIELD_BYTES - 20);
        assert!(s.ends_with(TRUNCATED));
        assert!(s.trim_end_matches(TRUNCATED).chars().all(|c| c == 'é'));

        let mut out = Vec::new();
        write_fmt(&mut out, format_args!("{:?}", "x".repeat(MAX_FIELD_BYTES * 2)));
        let s = as_json(&out).as_str().unwrap().to_owned();
        assert!(
            s.len() <= MAX_FIELD_BYTES && s.len() > MAX_FIELD_BYTES - 20,
            "{}",
            s.len()
        );
        assert!(s.starts_with("\"xxx") && s.ends_with(TRUNCATED));
    }

    #[test]
    fn word_scan_finds_exactly_the_bytes_json_escapes() {
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = b;
                let expected = b < 0x20 || b == b'"' || b == b'\\';
                assert_eq!(needs_escape(u64::from_le_bytes(word)), expected, "byte {b:#x} at {at}");
            }
        }
        // Long clean text, then text dirty only in its tail, round-trip.
        for text in [
            "x".repeat(64),
            format!("{}\"{}", "y".repeat(17), "z".repeat(3)),
            "é\n".repeat(9),
        ] {
            let mut out = Vec::new();
            write_str(&mut out, &text);
            assert_eq!(as_json(&out), Value::String(text));
        }
    }

    #[test]
    fn short_decimals_read_back_exactly_like_ryu() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![
            0.0,
            -0.0,
            12.5,
            0.25,
            3.0,
            -7.125,
            0.1,
            0.3,
            1e-6,
            999_999_999.5,
            123.456789,
            1e9,
            5e-7,
        ];
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let cents = (state % 10_000_000) as f64 / 100.0;
            values.push(cents);
            values.push(-cents / 7.0);
            values.push(f64::from_bits(state));
        }
        for v in values {
            let mut out = Vec::new();
            write_f64(&mut out, v);
            let text = std::str::from_utf8(&out).unwrap();
            if !v.is_finite() {
                assert_eq!(text, "null");
                continue;
            }
            let back: f64 = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                back.to_bits(),
                if v == 0.0 { 0.0f64.to_bits() } else { v.to_bits() },
                "{v} -> {text}"
            );
            assert!(text.contains('.') || text.contains('e'), "{text} must stay a float");
        }
    }

    #[test]
    fn floats() {
        let mut out = Vec::new();
        out.push(b'[');
        write_f64(&mut out, 12.5);
        out.push(b',');
        write_f64(&mut out, f64::NAN);
        out.push(b',');
        write_f64(&mut out, f64::NEG_INFINITY);
        out.push(b']');
        assert_eq!(as_json(&out), serde_json::json!([12.5, null, null]));
    }

    #[test]
    fn stream_declaration_lists_columns_and_statics() {
        let columns = Columns {
            thread: None,
            statics: vec![("Computer".into(), Value::String("web-1".into()))],
            ..Columns::default()
        };
        let decl = columns.stream_declaration();
        let names: Vec<&str> = decl["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "TimeGenerated",
                "Level",
                "Target",
                "Message",
                "Properties",
                "Spans",
                "File",
                "Line",
                "Computer"
            ]
        );
        assert_eq!(decl["columns"][0]["type"], "datetime");
        assert_eq!(decl["columns"][7]["type"], "int");

        let no_time = Columns {
            time_generated: None,
            ..Columns::default()
        };
        let schema = no_time.table_schema("MyService_CL");
        assert_eq!(schema["properties"]["schema"]["name"], "MyService_CL");
        assert_eq!(
            schema["properties"]["schema"]["columns"][0],
            serde_json::json!({"name": "TimeGenerated", "type": "datetime"})
        );
        assert_eq!(schema["properties"]["schema"]["columns"].as_array().unwrap().len(), 9);
    }
}
