//! The acknowledgement cursor: the first spooled byte not yet confirmed by the service. Written
//! to a temporary file, synced, renamed over the old one and the directory synced, so a crash
//! leaves either the old cursor or the new one, never half of one.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use super::disk::Disk;

/// The cursor's file in the spool directory, and its temporary twin.
pub(super) const CURSOR: &str = "cursor";
pub(super) const CURSOR_TMP: &str = "cursor.tmp";

/// A place in the spool: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
}

/// What the cursor file said.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Cursor {
    Absent,
    At(Position),
    /// Unreadable (a checksum mismatch, a wrong size): the spool replays from its oldest
    /// segment, so rows may be sent twice but none is lost.
    Corrupt,
}

pub(super) fn read(dir: &Path) -> io::Result<Cursor> {
    let bytes = match fs::read(dir.join(CURSOR)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cursor::Absent),
        Err(e) => return Err(e),
    };
    if bytes.len() != 20 {
        return Ok(Cursor::Corrupt);
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..16]) != crc {
        return Ok(Cursor::Corrupt);
    }
    Ok(Cursor::At(Position {
        segment: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        offset: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    }))
}

pub(super) fn write(disk: &dyn Disk, dir: &Path, at: Position) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(&at.segment.to_le_bytes());
    bytes.extend_from_slice(&at.offset.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(CURSOR_TMP);
    let mut file = File::create(&tmp)?;
    disk.append(&mut file, &bytes)?;
    disk.sync(&file)?;
    drop(file);
    fs::rename(&tmp, dir.join(CURSOR))?;
    sync_dir(dir)
}

/// Makes a rename or an unlink in `dir` durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
