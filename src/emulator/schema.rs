//! Stream declarations (DCR `streamDeclarations`) and row validation.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Longest top-level string value the service keeps, in UTF-8 bytes (64 KiB). Longer values are
/// truncated at the last char boundary at or below this length.
pub const MAX_FIELD_BYTES: usize = 65_536;

/// A DCR stream column type, as spelled in `streamDeclarations` (`string`, `int`, `long`, `real`,
/// `boolean`, `datetime`, `dynamic`).
///
/// What a JSON value must be to match (anything else is a mismatch; `null` always matches):
/// `String`: a JSON string (numbers are not coerced). `Int`: an integer in the i32 range (`5.0` is
/// not an integer). `Long`: an integer in the i64 range. `Real`: any number. `Boolean`: `true` or
/// `false`. `DateTime`: a string in RFC 3339 / ISO 8601 form (`2024-05-01T12:00:00Z`,
/// `2024-05-01T12:00:00.123456+02:00`, `2024-05-01`) or `YYYY-MM-DD hh:mm:ss[.fff]`. `Dynamic`:
/// any JSON value.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// `string`
    String,
    /// `int` (32-bit signed)
    Int,
    /// `long` (64-bit signed)
    Long,
    /// `real` (any JSON number)
    Real,
    /// `boolean`
    Boolean,
    /// `datetime`
    DateTime,
    /// `dynamic` (any JSON value)
    Dynamic,
}

impl ColumnType {
    /// The DCR spelling of the type (`"datetime"`, `"int"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Int => "int",
            ColumnType::Long => "long",
            ColumnType::Real => "real",
            ColumnType::Boolean => "boolean",
            ColumnType::DateTime => "datetime",
            ColumnType::Dynamic => "dynamic",
        }
    }

    /// Parses a DCR type name, case-insensitively (`dateTime` is accepted); `None` if unknown.
    pub fn from_dcr_name(name: &str) -> Option<ColumnType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" => ColumnType::String,
            "int" => ColumnType::Int,
            "long" => ColumnType::Long,
            "real" => ColumnType::Real,
            "boolean" | "bool" => ColumnType::Boolean,
            "datetime" => ColumnType::DateTime,
            "dynamic" => ColumnType::Dynamic,
            _ => return None,
        })
    }

    fn accepts(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null) | (ColumnType::Dynamic, _) => true,
            (ColumnType::String, Value::String(_)) => true,
            (ColumnType::Int, Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
            (ColumnType::Long, Value::Number(n)) => n.as_i64().is_some(),
            (ColumnType::Real, Value::Number(_)) => true,
            (ColumnType::Boolean, Value::Bool(_)) => true,
            (ColumnType::DateTime, Value::String(s)) => is_datetime(s),
            _ => false,
        }
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One declared column of a stream: its name (case-sensitive, as in the JSON rows) and type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Column name, matched exactly against the JSON keys of a row.
    pub name: String,
    /// Column type.
    pub kind: ColumnType,
}

impl Column {
    /// A column named `name` of type `kind`.
    pub fn new(name: impl Into<String>, kind: ColumnType) -> Column {
        Column {
            name: name.into(),
            kind,
        }
    }

    /// The streams of a DCR `streamDeclarations` object, `{"Custom-X":{"columns":[..]},..}`, each
    /// with its columns (see [`from_stream_declaration`](Self::from_stream_declaration)). Stream
    /// names must start with `Custom-`. The error names the stream and the malformed entry.
    pub fn from_stream_declarations(declarations: &Value) -> Result<Vec<(String, Vec<Column>)>, String> {
        let declarations = declarations
            .as_object()
            .ok_or("streamDeclarations must be an object of streams")?;
        declarations
            .iter()
            .map(|(stream, declaration)| {
                if !stream.starts_with("Custom-") {
                    return Err(format!("declared stream '{stream}' must start with 'Custom-'"));
                }
                let columns =
                    Column::from_stream_declaration(declaration).map_err(|e| format!("stream '{stream}': {e}"))?;
                Ok((stream.clone(), columns))
            })
            .collect()
    }

    /// The columns of a DCR `streamDeclarations` entry, `{"columns":[{"name","type"}...]}`, such
    /// as [`Columns::stream_declaration`](crate::Columns::stream_declaration) prints. The error
    /// says which entry is malformed.
    pub fn from_stream_declaration(declaration: &Value) -> Result<Vec<Column>, String> {
        let entries = declaration
            .get("columns")
            .and_then(Value::as_array)
            .ok_or("a stream declaration needs a \"columns\" array")?;
        entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let name = entry.get("name").and_then(Value::as_str);
                let kind = entry
                    .get("type")
                    .and_then(Value::as_str)
                    .and_then(ColumnType::from_dcr_name);
                match (name, kind) {
                    (Some(name), Some(kind)) => Ok(Column::new(name, kind)),
                    _ => Err(format!("column {i} needs a \"name\" and a DCR \"type\": {entry}")),
                }
            })
            .collect()
    }
}

/// The declared columns of one stream.
#[derive(Debug, Default)]
pub(crate) struct StreamSchema {
    columns: HashMap<String, ColumnType>,
    /// The column names in declaration order.
    order: Vec<String>,
}

/// All declarations: rule id → stream name → columns.
#[derive(Debug, Default)]
pub(crate) struct Declarations {
    rules: HashMap<String, HashMap<String, Arc<StreamSchema>>>,
}

/// Result of looking a (rule, stream) pair up in the declarations.
pub(crate) enum Lookup {
    /// Nothing is declared: every rule and stream is accepted without a schema.
    Open,
    /// Declared.
    Found(Arc<StreamSchema>),
    /// Declarations exist, but not for this rule.
    UnknownRule,
    /// The rule is declared, but not this stream.
    UnknownStream,
}

impl Declarations {
    pub(crate) fn declare(&mut self, rule_id: String, stream: String, columns: Vec<Column>) {
        let schema = StreamSchema {
            order: columns.iter().map(|c| c.name.clone()).collect(),
            columns: columns.into_iter().map(|c| (c.name, c.kind)).collect(),
        };
        self.rules.entry(rule_id).or_default().insert(stream, Arc::new(schema));
    }

    /// Replaces every stream of `rule_id` (a rule created again with other declarations).
    pub(crate) fn replace_rule(&mut self, rule_id: &str, streams: Vec<(String, Vec<Column>)>) {
        self.rules.remove(rule_id);
        for (stream, columns) in streams {
            self.declare(rule_id.to_owned(), stream, columns);
        }
    }

    /// The columns (names and DCR types) of `stream` as declared for any rule, if it is.
    pub(crate) fn stream_columns(&self, stream: &str) -> Option<Vec<(String, String)>> {
        let schema = self.rules.values().find_map(|streams| streams.get(stream))?;
        Some(
            schema
                .order
                .iter()
                .map(|name| (name.clone(), schema.columns[name].as_str().to_owned()))
                .collect(),
        )
    }

    pub(crate) fn lookup(&self, rule_id: &str, stream: &str) -> Lookup {
        if self.rules.is_empty() {
            return Lookup::Open;
        }
        match self.rules.get(rule_id) {
            None => Lookup::UnknownRule,
            Some(streams) => match streams.get(stream) {
                None => Lookup::UnknownStream,
                Some(s) => Lookup::Found(s.clone()),
            },
        }
    }
}

/// Why a row was rejected (becomes a 400 with code `InvalidPayload` or `SchemaMismatch`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RowError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks one row of the array and applies the service's changes to it.
///
/// Returns `Ok(None)` when the raw text is kept as sent, `Ok(Some(json))` when the row was changed
/// (truncated strings, nulled mismatches, dropped undeclared columns), `Err` when the row is
/// rejected (not an object; strict schema mismatch).
pub(crate) fn process_row(
    raw: &RawValue,
    index: usize,
    schema: Option<&StreamSchema>,
    strict: bool,
) -> Result<Option<String>, RowError> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err(RowError {
            code: "InvalidPayload",
            message: format!("The request body must be a JSON array of objects; element {index} is not an object."),
        });
    }
    // A row no longer than the field cap cannot hold a longer string: keep it as sent.
    if schema.is_none() && text.len() <= MAX_FIELD_BYTES {
        return Ok(None);
    }
    let mut map: Map<String, Value> = serde_json::from_str(text).map_err(|e| RowError {
        code: "InvalidJson",
        message: format!("Element {index} is not valid JSON: {e}"),
    })?;
    let mut changed = false;
    if let Some(schema) = schema {
        let mut undeclared = Vec::new();
        for (name, value) in map.iter_mut() {
            match schema.columns.get(name) {
                None if strict => {
                    return Err(RowError {
                        code: "SchemaMismatch",
                        message: format!("Row {index}, column '{name}': the column is not declared in the stream."),
                    });
                }
                None => undeclared.push(name.clone()),
                Some(kind) if !kind.accepts(value) => {
                    if strict {
                        return Err(RowError {
                            code: "SchemaMismatch",
                            message: format!("Row {index}, column '{name}': expected {kind}, got {}.", kind_of(value)),
                        });
                    }
                    *value = Value::Null;
                    changed = true;
                }
                Some(_) => {}
            }
        }
        for name in undeclared {
            map.remove(&name);
            changed = true;
        }
    }
    for value in map.values_mut() {
        if let Value::String(s) = value {
            changed |= truncate_at_char_boundary(s, MAX_FIELD_BYTES);
        }
    }
    if changed {
        Ok(Some(Value::Object(map).to_string()))
    } else {
        Ok(None)
    }
}

/// Truncates `s` to at most `max` bytes at a char boundary; true if it was cut.
pub(crate) fn truncate_at_char_boundary(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// RFC 3339 / ISO 8601 date-time (`T` or space separator, optional seconds, fraction, zone), or a
/// plain date.
pub(crate) fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    fn num(b: &[u8], at: usize, len: usize) -> Option<u32> {
        let digits = b.get(at..at + len)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + u32::from(d - b'0'))
        })
    }
    let (Some(year), Some(month), Some(day)) = (num(b, 0, 4), num(b, 5, 2), num(b, 8, 2)) else {
        return false;
    };
    if b[4] != b'-' || b[7] != b'-' || !(1..=12).contains(&month) {
        return false;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days).contains(&day) {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return false;
    }
    let (Some(hour), Some(minute)) = (num(b, 11, 2), num(b, 14, 2)) else {
        return false;
    };
    if b[13] != b':' || hour > 23 || minute > 59 {
        return false;
    }
    let mut i = 16;
    if b.get(i) == Some(&b':') {
        match num(b, i + 1, 2) {
            Some(sec) if sec <= 60 => i += 3,
            _ => return false,
        }
        if matches!(b.get(i), Some(b'.' | b',')) {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return false;
            }
        }
    }
    match &b[i..] {
        [] | [b'Z' | b'z'] => true,
        [b'+' | b'-', rest @ ..] => {
            let (h, m) = match rest {
                [h1, h2] => (num(&[*h1, *h2], 0, 2), Some(0)),
                [h1, h2, b':', m1, m2] | [h1, h2, m1, m2] => (num(&[*h1, *h2], 0, 2), num(&[*m1, *m2], 0, 2)),
                _ => return false,
            };
            matches!((h, m), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_from_a_stream_declaration() {
        let decl = serde_json::json!({"columns": [{"name": "TimeGenerated", "type": "datetime"}, {"name": "N", "type": "long"}]});
        let columns = Column::from_stream_declaration(&decl).unwrap();
        assert_eq!(columns.len(), 2);
        assert_eq!((columns[1].name.as_str(), columns[1].kind), ("N", ColumnType::Long));
        let err = Column::from_stream_declaration(&serde_json::json!({"columns": [{"name": "X", "type": "guid"}]}));
        assert!(err.unwrap_err().contains("column 0"));
        assert!(Column::from_stream_declaration(&serde_json::json!([])).is_err());
    }

    #[test]
    fn datetimes() {
        for ok in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.123456Z",
            "2024-05-01T12:00:00+02:00",
            "2024-05-01T12:00:00-0530",
            "2024-05-01T12:00Z",
            "2024-05-01 12:00:00",
            "2024-05-01 12:00:00.5",
            "2024-02-29",
            "2024-12-31t23:59:60z",
        ] {
            assert!(is_datetime(ok), "{ok}");
        }
        for bad in [
            "",
            "2024",
            "2024-13-01",
            "2023-02-29",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00 UTC",
            "2024-05-01X12:00:00",
            "yesterday",
            "2024-05-01T12:00:00+2",
            "２０２４-05-01",
        ] {
            assert!(!is_datetime(bad), "{bad}");
        }
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let mut s = "é".repeat(10); // 20 bytes
        assert!(truncate_at_char_boundary(&mut s, 7));
        assert_eq!(s.len(), 6);
        let mut t = "abc".to_string();
        assert!(!truncate_at_char_boundary(&mut t, 3));
    }

    #[test]
    fn types() {
        use serde_json::json;
        assert!(ColumnType::Int.accepts(&json!(2147483647)));
        assert!(!ColumnType::Int.accepts(&json!(2147483648i64)));
        assert!(!ColumnType::Int.accepts(&json!(1.5)));
        assert!(ColumnType::Long.accepts(&json!(i64::MIN)));
        assert!(!ColumnType::Long.accepts(&json!(u64::MAX)));
        assert!(ColumnType::Real.accepts(&json!(1)));
        assert!(!ColumnType::Boolean.accepts(&json!("true")));
        assert!(ColumnType::String.accepts(&json!(null)));
        assert!(!ColumnType::String.accepts(&json!(1)));
        assert!(ColumnType::Dynamic.accepts(&json!({"a": [1]})));
        assert_eq!(ColumnType::from_dcr_name("dateTime"), Some(ColumnType::DateTime));
    }
}
