//! JSON helpers: the encoders that write keys, strings, numbers and formatted values into a row
//! without allocating (strings cut to [`MAX_FIELD_BYTES`]), and the checks on serialized rows.

use std::fmt::{self, Write as _};

use serde::Serialize;

use super::MAX_FIELD_BYTES;

const TRUNCATED: &str = "…[truncated]";

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

/// Serializes one row, which must be a JSON object.
pub(crate) fn serialize_row<T: Serialize + ?Sized>(row: &T) -> Result<Vec<u8>, String> {
    let bytes = serde_json::to_vec(row).map_err(|e| e.to_string())?;
    if bytes.first() != Some(&b'{') {
        return Err(format!("it serializes to {}", json_kind(&bytes)));
    }
    Ok(bytes)
}

/// What kind of JSON value `json` (serialized, no leading space) is, for error messages.
pub(crate) fn json_kind(json: &[u8]) -> &'static str {
    match json.first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        _ => "a number",
    }
}

/// A row as text, for `on_error`.
pub(crate) fn lossy(row: &[u8]) -> String {
    String::from_utf8_lossy(row).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
    fn rows_must_be_objects() {
        assert!(serialize_row(&serde_json::json!({"a": 1})).is_ok());
        assert_eq!(serialize_row(&[1, 2]).unwrap_err(), "it serializes to an array");
        assert_eq!(serialize_row(&5).unwrap_err(), "it serializes to a number");
    }
}
