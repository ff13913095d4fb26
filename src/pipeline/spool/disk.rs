//! The writes the spool makes that can fail for want of disk (ENOSPC, EIO): behind a trait, so
//! that tests inject those failures.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};

/// Appends to and syncs spool files.
pub(crate) trait Disk: Send + Sync + fmt::Debug {
    /// Appends `bytes` to `file` (opened for appending).
    fn append(&self, file: &mut File, bytes: &[u8]) -> io::Result<()>;
    /// Makes what was written to `file` durable.
    fn sync(&self, file: &File) -> io::Result<()>;
}

/// The real file system.
#[derive(Debug)]
pub(crate) struct RealDisk;

impl Disk for RealDisk {
    fn append(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        file.write_all(bytes)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}
