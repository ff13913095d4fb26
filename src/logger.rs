//! The `log` producer: [`AzureLogger`] encodes `log` records as rows and pushes them on the
//! pipeline's queue. Public as [`crate::log_bridge`].

use std::sync::Arc;

use log::kv::{Error as KvError, Key, Value, VisitSource, VisitValue};
use log::{LevelFilter, Metadata, Record};

use crate::pipeline::AzureLogsGuard;
use crate::pipeline::queue::Queue;
use crate::route::{Routes, longest_prefix};
use crate::row::RowShape;
use crate::row::encode::{begin_row, write_tail};
use crate::row::fields::key_str;
use crate::row::json::{key, write_f64, write_fmt, write_int, write_str};

/// Which `log` records the bridge ships: a default level, and levels for target prefixes (the
/// longest matching prefix wins).
#[derive(Clone, Debug)]
pub struct LogBridge {
    level: LevelFilter,
    targets: Vec<(String, LevelFilter)>,
}

impl LogBridge {
    /// Ships records at `level` and above.
    pub fn new(level: LevelFilter) -> Self {
        LogBridge {
            level,
            targets: Vec::new(),
        }
    }

    /// Records whose target is `prefix` or below it (`hyper` covers `hyper::proto`) use `level`.
    pub fn target(mut self, prefix: impl Into<String>, level: LevelFilter) -> Self {
        self.targets.push((prefix.into(), level));
        self
    }

    fn level_for(&self, target: &str) -> LevelFilter {
        longest_prefix(&self.targets, target).map_or(self.level, |l| *l)
    }

    /// The most verbose level any target may ship, for `log::set_max_level`.
    pub fn max_level(&self) -> LevelFilter {
        self.targets.iter().map(|(_, l)| *l).fold(self.level, Ord::max)
    }
}

/// The `log::Log` implementation; get one from [`AzureLogsGuard::logger`].
pub struct AzureLogger {
    pub(crate) queue: Arc<Queue>,
    pub(crate) shape: Arc<RowShape>,
    pub(crate) routes: Arc<Routes>,
    pub(crate) filter: LogBridge,
}

impl std::fmt::Debug for AzureLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureLogger")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl log::Log for AzureLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.filter.level_for(metadata.target())
    }

    fn log(&self, record: &Record<'_>) {
        let queue = &self.queue;
        if !self.enabled(record.metadata()) || !queue.admit() {
            return;
        }
        let target = match record.target() {
            "" => record.module_path().unwrap_or_default(),
            t => t,
        };
        let mut row = queue.buffer();
        encode_record(&self.shape, &mut row, record, target);
        queue.push(self.routes.stream_for_target(target), row);
    }

    fn flush(&self) {}
}

fn encode_record(shape: &RowShape, row: &mut Vec<u8>, record: &Record<'_>, target: &str) {
    let level = match record.level() {
        log::Level::Error => tracing::Level::ERROR,
        log::Level::Warn => tracing::Level::WARN,
        log::Level::Info => tracing::Level::INFO,
        log::Level::Debug => tracing::Level::DEBUG,
        log::Level::Trace => tracing::Level::TRACE,
    };
    begin_row(shape, row, &level, target);
    if let Some(k) = &shape.properties {
        key(row, k);
        row.push(b'{');
        // A failing key-value source leaves what it wrote; the object stays valid JSON.
        let _ = record.key_values().visit(&mut KeyValues { out: row });
        row.push(b'}');
    }
    if let Some(k) = &shape.message {
        key(row, k);
        write_fmt(row, *record.args());
    }
    if let Some(k) = &shape.spans {
        key(row, k);
        row.extend_from_slice(b"[]");
    }
    // A record has no tracing span, but may come inside an OpenTelemetry span (one
    // tracing-opentelemetry activated for the current tracing span, or the API's own).
    #[cfg(feature = "opentelemetry")]
    crate::row::trace_ids::write_current(shape, row);
    write_tail(shape, row, record.file(), record.line());
}

struct KeyValues<'a> {
    out: &'a mut Vec<u8>,
}

impl<'kvs> VisitSource<'kvs> for KeyValues<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        key_str(self.out, key.as_str());
        value.visit(TypedValue { out: self.out })
    }
}

/// Writes a key-value's value keeping its type: numbers stay numbers.
struct TypedValue<'a> {
    out: &'a mut Vec<u8>,
}

impl<'v> VisitValue<'v> for TypedValue<'_> {
    fn visit_any(&mut self, value: Value<'_>) -> Result<(), KvError> {
        write_fmt(self.out, format_args!("{value}"));
        Ok(())
    }
    fn visit_null(&mut self) -> Result<(), KvError> {
        self.out.extend_from_slice(b"null");
        Ok(())
    }
    fn visit_u64(&mut self, value: u64) -> Result<(), KvError> {
        write_int(self.out, value);
        Ok(())
    }
    fn visit_i64(&mut self, value: i64) -> Result<(), KvError> {
        write_int(self.out, value);
        Ok(())
    }
    fn visit_u128(&mut self, value: u128) -> Result<(), KvError> {
        write_int(self.out, value);
        Ok(())
    }
    fn visit_i128(&mut self, value: i128) -> Result<(), KvError> {
        write_int(self.out, value);
        Ok(())
    }
    fn visit_f64(&mut self, value: f64) -> Result<(), KvError> {
        write_f64(self.out, value);
        Ok(())
    }
    fn visit_bool(&mut self, value: bool) -> Result<(), KvError> {
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
        Ok(())
    }
    fn visit_str(&mut self, value: &str) -> Result<(), KvError> {
        write_str(self.out, value);
        Ok(())
    }
    fn visit_char(&mut self, value: char) -> Result<(), KvError> {
        write_str(self.out, value.encode_utf8(&mut [0; 4]));
        Ok(())
    }
}

impl AzureLogsGuard {
    /// A `log::Log` that ships `log` records through this pipeline (target routes apply), with
    /// `filter`'s levels. Install it with `log::set_boxed_logger`, or use
    /// [`log_bridge::init`](crate::log_bridge::init). Do not also install `LogTracer`.
    pub fn logger(&self, filter: LogBridge) -> AzureLogger {
        AzureLogger {
            queue: self.queue.clone(),
            shape: self.shape.clone(),
            routes: self.routes.clone(),
            filter,
        }
    }
}
