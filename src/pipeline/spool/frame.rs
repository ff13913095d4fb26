//! How records sit in a segment file: `len: u32 | crc32c: u32 | payload`, little-endian, with
//! the CRC over the payload; and the payload of a spooled batch.

use std::io::{self, Read};

/// Bytes of a frame's header.
pub(super) const FRAME_HEADER: usize = 8;
/// The largest payload a frame may hold: a batch is at most 1 MiB of gzip plus its names. A
/// length above it is a corrupt frame, never an allocation.
pub(super) const MAX_PAYLOAD: usize = 2 * 1024 * 1024;
/// The first bytes of every segment file: the format and its version.
pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"TALSPL01";

/// One closed batch as the spool keeps it: enough to send it again without re-encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SpooledBatch {
    pub(crate) rule_id: String,
    pub(crate) stream: String,
    /// The pipeline's id of the batch's first row (ids of a batch need not be consecutive: other
    /// streams' rows take ids in between), and how many of its rows are the application's.
    pub(crate) first_row: u64,
    pub(crate) rows: u32,
    /// The gzipped JSON array, as it goes on the wire.
    pub(crate) body: Vec<u8>,
}

impl SpooledBatch {
    /// Appends the whole frame (header and payload) for this batch to `out`.
    pub(super) fn encode_frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        out.push(1); // record kind: a batch
        out.extend_from_slice(&self.first_row.to_le_bytes());
        out.extend_from_slice(&self.rows.to_le_bytes());
        for name in [&self.rule_id, &self.stream] {
            let len = name.len().min(u16::MAX as usize);
            out.extend_from_slice(&(len as u16).to_le_bytes());
            out.extend_from_slice(&name.as_bytes()[..len]);
        }
        out.extend_from_slice(&self.body);
        let payload = &out[start + FRAME_HEADER..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32c::crc32c(payload).to_le_bytes();
        out[start..start + 4].copy_from_slice(&len);
        out[start + 4..start + 8].copy_from_slice(&crc);
    }

    /// The row count in a payload, without copying the body.
    pub(super) fn rows_in(payload: &[u8]) -> u32 {
        payload
            .get(9..13)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    /// Reads a batch back from a payload whose CRC matched; `None` if it does not parse.
    pub(super) fn decode(payload: &[u8]) -> Option<SpooledBatch> {
        let (&kind, rest) = payload.split_first()?;
        if kind != 1 {
            return None;
        }
        let first_row = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let rows = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
        let mut rest = &rest[12..];
        let mut name = || -> Option<String> {
            let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let text = String::from_utf8(rest.get(2..2 + len)?.to_vec()).ok()?;
            rest = &rest[2 + len..];
            Some(text)
        };
        let rule_id = name()?;
        let stream = name()?;
        Some(SpooledBatch {
            rule_id,
            stream,
            first_row,
            rows,
            body: rest.to_vec(),
        })
    }
}

/// What the next frame of a segment is.
#[derive(Debug)]
pub(super) enum Frame {
    /// A frame whose CRC matched, and its size on disk (header included).
    Good { payload: Vec<u8>, size: u64 },
    /// The segment ends cleanly here.
    End,
    /// A frame that cannot be trusted: a header cut short, a length out of range or past the
    /// end of the file, or a CRC mismatch. Nothing after it in the segment is read.
    Bad(&'static str),
}

/// Reads the frame at the current position of `file`, which has `left` bytes from there to its
/// end. Reads only this frame: a backlog is never loaded whole.
pub(super) fn read_frame(file: &mut impl Read, left: u64) -> io::Result<Frame> {
    if left == 0 {
        return Ok(Frame::End);
    }
    if left < FRAME_HEADER as u64 {
        return Ok(Frame::Bad("a frame header cut short (a write torn by a crash)"));
    }
    let mut header = [0u8; FRAME_HEADER];
    file.read_exact(&mut header)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 && crc == 0 {
        // Zeroes where a frame should be: space the file system allocated but never wrote.
        return Ok(Frame::Bad("zeroes instead of a frame (a write lost in a crash)"));
    }
    if len == 0 || len > MAX_PAYLOAD {
        return Ok(Frame::Bad("a frame length out of range"));
    }
    if (len + FRAME_HEADER) as u64 > left {
        return Ok(Frame::Bad("a frame cut short (a write torn by a crash)"));
    }
    let mut payload = vec![0u8; len];
    file.read_exact(&mut payload)?;
    if crc32c::crc32c(&payload) != crc {
        return Ok(Frame::Bad("a frame whose checksum does not match"));
    }
    Ok(Frame::Good {
        payload,
        size: (len + FRAME_HEADER) as u64,
    })
}
