//! Whole rows: the columns every row starts and ends with, shared by the layer, the log bridge
//! and the worker's diagnostic row.

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Level;

use super::RowShape;
use super::json::{key, write_fmt, write_int, write_str};

thread_local! {
    /// The thread's name (or id) as a JSON string, encoded on first use.
    static THREAD: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The thread's next row id and the end of its block.
    static ROW_IDS: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Row ids a thread takes at a time from the process's counter: one shared atomic operation
/// per 1,024 rows.
const ROW_ID_BLOCK: u64 = 1024;
/// Bits of a row id that count rows; the 23 above them are random per process start, so ids
/// stay positive as a signed 64-bit `long`.
const ROW_ID_COUNTER_BITS: u32 = 40;

/// The next row id of this process: a random 23-bit prefix drawn at the first id, then a counter
/// (1.1 × 10^12 rows). Unique within a process; two processes share a prefix with a chance of
/// one in 8 million, so deduplicate by `RowId` and `Computer`.
pub(crate) fn next_row_id() -> u64 {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..1 << 23) << ROW_ID_COUNTER_BITS);
    let take = || NEXT_BLOCK.fetch_add(ROW_ID_BLOCK, Ordering::Relaxed);
    let count = ROW_IDS
        .try_with(|ids| {
            let (mut next, mut end) = ids.get();
            if next == end {
                next = take();
                end = next + ROW_ID_BLOCK;
            }
            ids.set((next + 1, end));
            next
        })
        // A thread whose locals are being torn down: a block of one.
        .unwrap_or_else(|_| NEXT_BLOCK.fetch_add(1, Ordering::Relaxed));
    prefix | (count & ((1 << ROW_ID_COUNTER_BITS) - 1))
}

/// The row id column, when the shape has one.
pub(crate) fn write_row_id(shape: &RowShape, row: &mut Vec<u8>) {
    if let Some(k) = &shape.row_id {
        key(row, k);
        write_int(row, next_row_id());
    }
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
    write_row_id(shape, row);
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
