//! The parts of a row that depend only on the callsite (and the thread), encoded once per
//! thread in a direct-mapped cache.

use tracing::Metadata;

use crate::row::RowShape;
use crate::row::encode::{write_head, write_tail};
use crate::row::json::write_str;

const CALLSITE_SLOTS: usize = 512;

/// The pre-encoded parts of rows from one callsite, for one row shape, on one thread.
#[derive(Default)]
pub(super) struct Callsite {
    meta: usize,
    shape: u64,
    /// `,"Level":"INFO","Target":"app::http"` and the static columns.
    pub(super) head: Vec<u8>,
    /// `,"File":"src/main.rs","Line":12,"Thread":"main"}`.
    pub(super) tail: Vec<u8>,
    /// `"name":` for each field of the callsite, by field index.
    pub(super) keys: Vec<Vec<u8>>,
    /// The index of the `message` field, if the callsite has one.
    pub(super) message: Option<usize>,
}

/// The cached parts for `meta` and `shape`, encoded on a miss (first use, or a slot collision),
/// reusing the slot's buffers.
pub(super) fn cached<'a>(
    callsites: &'a mut Vec<Callsite>,
    shape: &RowShape,
    meta: &'static Metadata<'static>,
) -> &'a Callsite {
    if callsites.is_empty() {
        callsites.resize_with(CALLSITE_SLOTS, Callsite::default);
    }
    let (meta_id, shape_id) = (meta as *const Metadata<'static> as usize, shape.id);
    let slot = (meta_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 55) % CALLSITE_SLOTS;
    let entry = &mut callsites[slot];
    if entry.meta != meta_id || entry.shape != shape_id {
        entry.meta = meta_id;
        entry.shape = shape_id;
        entry.head.clear();
        write_head(shape, &mut entry.head, meta.level(), meta.target());
        entry.tail.clear();
        write_tail(shape, &mut entry.tail, meta.file(), meta.line());
        entry.keys.resize_with(meta.fields().len(), Vec::new);
        entry.message = meta.fields().field("message").map(|f| f.index());
        for (field, key) in meta.fields().iter().zip(&mut entry.keys) {
            key.clear();
            write_str(key, field.name());
            key.push(b':');
        }
    }
    entry
}

/// Appends pre-encoded members that start with a comma, dropping it right after `{`.
pub(super) fn append_members(row: &mut Vec<u8>, members: &[u8]) {
    match members.split_first() {
        Some((b',', rest)) if row.last() == Some(&b'{') => row.extend_from_slice(rest),
        _ => row.extend_from_slice(members),
    }
}
