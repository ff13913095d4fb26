//! Whole rows: the columns every row starts and ends with, shared by the layer, the log bridge
//! and the worker's diagnostic row.

use std::cell::RefCell;

use tracing::Level;

use super::RowShape;
use super::json::{key, write_fmt, write_int, write_str};

thread_local! {
    /// The thread's name (or id) as a JSON string, encoded on first use.
    static THREAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The columns every row ends with (file, line, thread) and the closing `}`.
pub(crate) fn write_tail(shape: &RowShape, row: &mut Vec<u8>, file: Option<&str>, line: Option<u32>) {
    if let (Some(k), Some(file)) = (&shape.file, file) {
        key(row, k);
        write_str(row, file);
    }
    if let (Some(k), Some(line)) = (&shape.line, line) {
        key(row, k);
        write_int(row, line);
    }
    write_thread(shape, row);
    row.push(b'}');
}

/// The `Thread` column: the thread's name, or its id, encoded once per thread.
fn write_thread(shape: &RowShape, row: &mut Vec<u8>) {
    let Some(k) = &shape.thread else { return };
    key(row, k);
    let encode = |out: &mut Vec<u8>| {
        let current = std::thread::current();
        match current.name() {
            Some(name) => write_str(out, name),
            None => write_fmt(out, format_args!("{:?}", current.id())),
        }
    };
    let cached = THREAD.try_with(|thread| {
        let mut thread = thread.borrow_mut();
        if thread.is_empty() {
            encode(&mut thread);
        }
        row.extend_from_slice(&thread);
    });
    if cached.is_err() {
        encode(row);
    }
}

/// `{` and the columns every row starts with: time, level, target, static columns.
pub(crate) fn begin_row(shape: &RowShape, row: &mut Vec<u8>, level: &Level, target: &str) {
    row.push(b'{');
    write_time_column(shape, row);
    write_head(shape, row, level, target);
}

pub(crate) fn write_time_column(shape: &RowShape, row: &mut Vec<u8>) {
    if let Some(k) = &shape.time_generated {
        key(row, k);
        row.extend_from_slice(&crate::clock::now_json());
    }
}

/// Level, target and the static columns, each after a comma unless `row` ends with `{`.
pub(crate) fn write_head(shape: &RowShape, row: &mut Vec<u8>, level: &Level, target: &str) {
    if let Some(k) = &shape.level {
        key(row, k);
        row.extend_from_slice(match *level {
            Level::ERROR => b"\"ERROR\"",
            Level::WARN => b"\"WARN\"",
            Level::INFO => b"\"INFO\"",
            Level::DEBUG => b"\"DEBUG\"",
            Level::TRACE => b"\"TRACE\"",
        });
    }
    if let Some(k) = &shape.target {
        key(row, k);
        write_str(row, target);
    }
    if !shape.statics.is_empty() {
        if row.last() != Some(&b'{') {
            row.push(b',');
        }
        row.extend_from_slice(&shape.statics);
    }
}

/// The worker's row reporting drops: level WARN, target `tracing_azure_logs`, properties
/// `dropped` (since the last report) and `dropped_total`.
pub(crate) fn encode_diagnostic(shape: &RowShape, row: &mut Vec<u8>, dropped: u64, total: u64) {
    encode_warning(
        shape,
        row,
        [("dropped", dropped), ("dropped_total", total)],
        format_args!(
            "tracing-azure-logs dropped {dropped} row(s) since its last report ({total} in all): the queue was full"
        ),
    );
}

/// The worker's row reporting spool writes that failed: properties `spool_errors` (since the
/// last report) and `spool_errors_total`.
pub(crate) fn encode_spool_diagnostic(shape: &RowShape, row: &mut Vec<u8>, errors: u64, total: u64) {
    encode_warning(
        shape,
        row,
        [("spool_errors", errors), ("spool_errors_total", total)],
        format_args!(
            "tracing-azure-logs could not write {errors} batch(es) to its disk spool since its last report ({total} in \
             all); their rows were reported failed"
        ),
    );
}

/// A WARN row from target `tracing_azure_logs` with integer properties and a message.
fn encode_warning(shape: &RowShape, row: &mut Vec<u8>, properties: [(&str, u64); 2], message: std::fmt::Arguments<'_>) {
    begin_row(shape, row, &Level::WARN, "tracing_azure_logs");
    if let Some(k) = &shape.properties {
        key(row, k);
        row.push(b'{');
        for (i, (name, value)) in properties.iter().enumerate() {
            if i > 0 {
                row.push(b',');
            }
            write_str(row, name);
            row.push(b':');
            write_int(row, *value);
        }
        row.push(b'}');
    }
    if let Some(k) = &shape.message {
        key(row, k);
        write_fmt(row, message);
    }
    if let Some(k) = &shape.spans {
        key(row, k);
        row.extend_from_slice(b"[]");
    }
    write_tail(shape, row, None, None);
}
