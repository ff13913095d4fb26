//! The row: which columns an event becomes ([`Columns`]), the JSON encoders that
//! write them without allocating (`json`), field encoding (`fields`) and whole rows (`encode`).
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
//! | `TraceId`, `SpanId` | string, string | feature `opentelemetry`: the OpenTelemetry ids of the event's span (32 and 16 hex digits) |
//! | `File`, `Line` | string, int | event location, when known |
//! | `Thread` | string | thread name, or its id |
//!
//! String values over 64 KiB (65,536 bytes) are cut at a character boundary and end with
//! `…[truncated]`, staying within 65,536 bytes (the service truncates longer values anyway).
//! Non-finite floats become `null`; `Debug` and `Display` values become strings.

use serde_json::Value;

pub(crate) mod encode;
pub(crate) mod fields;
pub(crate) mod json;
#[cfg(feature = "opentelemetry")]
pub(crate) mod trace_ids;

use json::write_str;

/// The service's limit on one field value; longer strings are cut.
pub const MAX_FIELD_BYTES: usize = 65_536;

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
    /// The OpenTelemetry trace id of the event's span, 32 lowercase hex digits, as
    /// tracing-opentelemetry's layer gives it (feature `opentelemetry`). Default `TraceId`;
    /// Application Insights calls it `OperationId`. Rows outside any traced span leave it out.
    #[cfg(feature = "opentelemetry")]
    pub trace_id: Option<String>,
    /// The OpenTelemetry span id of the event's span, 16 lowercase hex digits (feature
    /// `opentelemetry`). Default `SpanId`; Application Insights calls it `ParentId`.
    #[cfg(feature = "opentelemetry")]
    pub span_id: Option<String>,
    /// Source file. Default `File`.
    pub file: Option<String>,
    /// Source line. Default `Line`.
    pub line: Option<String>,
    /// Thread name or id. Default `Thread`.
    pub thread: Option<String>,
    /// A 64-bit id per row, unique per process start: what tells a row sent twice (delivery is
    /// at-least-once) from two rows. Off by default; see
    /// [`AzureLogsBuilder::row_id_column`](crate::AzureLogsBuilder::row_id_column).
    pub row_id: Option<String>,
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
            #[cfg(feature = "opentelemetry")]
            trace_id: name("TraceId"),
            #[cfg(feature = "opentelemetry")]
            span_id: name("SpanId"),
            file: name("File"),
            line: name("Line"),
            thread: name("Thread"),
            row_id: None,
            statics: Vec::new(),
        }
    }
}

impl Columns {
    /// The default columns with their DCR types, in row order (`None` where turned off).
    fn defaults(&self) -> Vec<(&Option<String>, &'static str)> {
        let mut columns = vec![
            (&self.time_generated, "datetime"),
            (&self.row_id, "long"),
            (&self.level, "string"),
            (&self.target, "string"),
            (&self.message, "string"),
            (&self.properties, "dynamic"),
            (&self.spans, "dynamic"),
        ];
        #[cfg(feature = "opentelemetry")]
        columns.extend([(&self.trace_id, "string"), (&self.span_id, "string")]);
        columns.extend([(&self.file, "string"), (&self.line, "int"), (&self.thread, "string")]);
        columns
    }

    /// Every column in use with its DCR type, defaults then statics, in row order.
    pub(crate) fn typed(&self) -> impl Iterator<Item = (&str, &'static str)> {
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
    pub(crate) fn check(&self) -> Result<(), crate::error::ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (name, _) in self.typed() {
            let reason = if name.is_empty() {
                "a column name is empty".to_owned()
            } else if !seen.insert(name) {
                format!("column {name:?} is used twice")
            } else {
                continue;
            };
            return Err(crate::error::ConfigError::InvalidOption {
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
    pub(crate) row_id: Option<Box<[u8]>>,
    pub(crate) level: Option<Box<[u8]>>,
    pub(crate) target: Option<Box<[u8]>>,
    pub(crate) message: Option<Box<[u8]>>,
    pub(crate) properties: Option<Box<[u8]>>,
    pub(crate) spans: Option<Box<[u8]>>,
    #[cfg(feature = "opentelemetry")]
    pub(crate) trace_id: Option<Box<[u8]>>,
    #[cfg(feature = "opentelemetry")]
    pub(crate) span_id: Option<Box<[u8]>>,
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
            row_id: key(&columns.row_id),
            level: key(&columns.level),
            target: key(&columns.target),
            message: key(&columns.message),
            properties: key(&columns.properties),
            spans: key(&columns.spans),
            #[cfg(feature = "opentelemetry")]
            trace_id: key(&columns.trace_id),
            #[cfg(feature = "opentelemetry")]
            span_id: key(&columns.span_id),
            file: key(&columns.file),
            line: key(&columns.line),
            thread: key(&columns.thread),
            statics: statics.into_boxed_slice(),
        }
    }

    /// Whether rows carry the trace columns (`TraceId`, `SpanId`); never without the
    /// `opentelemetry` feature.
    #[inline]
    pub(crate) fn correlates(&self) -> bool {
        #[cfg(feature = "opentelemetry")]
        return self.trace_id.is_some() || self.span_id.is_some();
        #[cfg(not(feature = "opentelemetry"))]
        false
    }

    /// Whether rows need the event's span: for the `Spans` column or the trace columns.
    #[inline]
    pub(crate) fn scoped(&self) -> bool {
        self.spans.is_some() || self.correlates()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut expected = vec!["TimeGenerated", "Level", "Target", "Message", "Properties", "Spans"];
        #[cfg(feature = "opentelemetry")]
        expected.extend(["TraceId", "SpanId"]);
        expected.extend(["File", "Line", "Computer"]);
        assert_eq!(names, expected);
        assert_eq!(decl["columns"][0]["type"], "datetime");
        let line = names.iter().position(|n| *n == "Line").unwrap();
        assert_eq!(decl["columns"][line]["type"], "int");

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
        let defaults = Columns::default().typed().count();
        assert_eq!(
            schema["properties"]["schema"]["columns"].as_array().unwrap().len(),
            defaults
        );
    }
}
