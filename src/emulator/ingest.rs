//! Decoding and storing an upload: gunzip within the cap, parse and check the rows one by one
//! (each row's cost counted against the cap), persist them as JSON lines.

use std::fmt;
use std::io::{Read, Write};

use serde_json::value::RawValue;

use super::schema::process_row;
use super::state::{Chunk, Shared};

pub(super) enum GunzipError {
    TooLarge,
    Invalid(std::io::Error),
}

pub(super) fn gunzip(data: &[u8], cap: usize) -> Result<Vec<u8>, GunzipError> {
    let guess = data.len().saturating_mul(8).min(cap).min(64 << 20) + 64;
    let mut out = Vec::with_capacity(guess);
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(cap as u64 + 1);
    decoder.read_to_end(&mut out).map_err(GunzipError::Invalid)?;
    if out.len() > cap {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

/// Bytes each row of a request costs besides its text while the request is decoded (its place in
/// the body), counted against the decoding cap.
pub(super) const ROW_COST: usize = std::mem::size_of::<(usize, usize)>();

/// Hands each element of a JSON array to a callback as it is parsed, without collecting them.
pub(super) struct EachRow<'f, F>(&'f mut F);

impl<'de, F: FnMut(&'de RawValue) -> Result<(), ()>> serde::de::Visitor<'de> for EachRow<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            (self.0)(raw).map_err(|()| <A::Error as serde::de::Error>::custom("row refused"))?;
        }
        Ok(())
    }
}

/// Parses and checks the rows one by one as they are read, persists them, and returns the row
/// count and (when rows are retained) the text to store. The decoded text, 16 bytes per row and
/// rows that a lenient schema rewrote count against `max_decompressed_bytes`: past it, 413.
/// Synchronous: no other request runs on this thread meanwhile, so at most one decoded body is
/// being processed at a time.
pub(super) fn ingest(
    shared: &Shared,
    text: String,
    stream: &str,
    schema: Option<&super::schema::StreamSchema>,
) -> Result<(usize, Option<Chunk>), (u16, &'static str, String)> {
    let json = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let first = json.trim_start().as_bytes().first().copied();
    if first != Some(b'[') {
        let (code, message) = if first.is_none() {
            (
                "InvalidJson",
                "The request body is empty; expected a JSON array of objects.",
            )
        } else {
            ("InvalidPayload", "The request body must be a JSON array of objects.")
        };
        return Err((400, code, message.to_owned()));
    }
    let keep = shared.config.retain_rows || shared.config.persist_dir.is_some();
    let cap = shared.config.max_decompressed_bytes;
    let base = text.as_ptr() as usize;
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut changes: Vec<String> = Vec::new();
    let mut rows = 0usize;
    // What the rows cost besides the body's text, counted against the cap as they are read, so
    // that a small body of many tiny rows (`[{},{},...]`) cannot take memory the cap does not see.
    let mut held = text.len();
    let mut failure = None;
    let read = {
        let mut on_row = |raw: &RawValue| {
            held += ROW_COST;
            let result = match process_row(raw, rows, schema, shared.config.strict_schema) {
                _ if held > cap => Err((
                    413,
                    "PayloadSizeLimitExceeded",
                    format!(
                        "The decoded request body ({} bytes with more than {rows} rows at {ROW_COST} bytes each to \
                         hold) exceeds the emulator's limit of {cap} bytes.",
                        text.len()
                    ),
                )),
                Ok(None) => {
                    if keep {
                        spans.push((raw.get().as_ptr() as usize - base, raw.get().len()));
                    }
                    Ok(())
                }
                Ok(Some(changed)) => {
                    held += changed.len();
                    if keep {
                        spans.push((usize::MAX, changes.len()));
                        changes.push(changed);
                    }
                    Ok(())
                }
                Err(e) => Err((400, e.code, e.message)),
            };
            rows += 1;
            result.map_err(|e| failure = Some(e))
        };
        let mut de = serde_json::Deserializer::from_str(json);
        serde::Deserializer::deserialize_seq(&mut de, EachRow(&mut on_row)).and_then(|()| de.end())
    };
    if let Some(failure) = failure {
        return Err(failure);
    }
    read.map_err(|e| (400, "InvalidJson", format!("The request body is not valid JSON: {e}.")))?;
    if !keep {
        return Ok((rows, None));
    }
    let (text, spans) = if changes.is_empty() {
        (text, spans)
    } else {
        let mut out = String::with_capacity(text.len());
        let mut new_spans = Vec::with_capacity(spans.len());
        for (start, len) in spans {
            let row = if start == usize::MAX {
                changes[len].as_str()
            } else {
                &text[start..start + len]
            };
            new_spans.push((out.len(), row.len()));
            out.push_str(row);
            out.push('\n');
        }
        (out, new_spans)
    };
    if let Some(dir) = &shared.config.persist_dir {
        persist(shared, dir, stream, &text, &spans).map_err(|e| {
            (
                500,
                "PersistFailed",
                format!("Could not append the rows to the persist directory: {e}."),
            )
        })?;
    }
    Ok((rows, shared.config.retain_rows.then_some((text, spans))))
}

/// File name used for a stream's JSON lines: characters other than `[A-Za-z0-9_.-]` become `_`.
pub(crate) fn persist_file_name(stream: &str) -> String {
    let mut name: String = stream
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with('.') {
        name.insert(0, '_');
    }
    name.push_str(".jsonl");
    name
}

pub(super) fn persist(
    shared: &Shared,
    dir: &std::path::Path,
    stream: &str,
    text: &str,
    spans: &[(usize, usize)],
) -> std::io::Result<()> {
    if spans.is_empty() {
        return Ok(());
    }
    let mut lines = String::with_capacity(text.len() + spans.len());
    for &(start, len) in spans {
        let row = &text[start..start + len];
        if row.contains(['\n', '\r']) {
            let value: serde_json::Value = serde_json::from_str(row).map_err(std::io::Error::other)?;
            lines.push_str(&value.to_string());
        } else {
            lines.push_str(row);
        }
        lines.push('\n');
    }
    let mut files = shared
        .persist_files
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = match files.entry(stream.to_owned()) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(e) => e.insert(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(persist_file_name(stream)))?,
        ),
    };
    file.write_all(lines.as_bytes())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(persist_file_name("Custom-App_CL"), "Custom-App_CL.jsonl");
        assert_eq!(persist_file_name("../x/y"), "_.._x_y.jsonl");
    }

    #[test]
    fn gzip_limits() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b' '; 10_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip(&gz, 10_000).ok().map(|v| v.len()), Some(10_000));
        assert!(matches!(gunzip(&gz, 9_999), Err(GunzipError::TooLarge)));
        assert!(matches!(
            gunzip(&gz[..gz.len() / 2], 10_000),
            Err(GunzipError::Invalid(_))
        ));
        assert!(matches!(gunzip(b"not gzip", 10_000), Err(GunzipError::Invalid(_))));
    }
}
