//! Where each export query stands: the end of the last window its sink confirmed.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use super::ExportError;

/// Keeps each query's checkpoint. Implement it to keep them elsewhere (a database, a blob).
pub trait CheckpointStore: Send + Sync {
    /// The checkpoint of `query`, `None` when it has none yet.
    fn load(&self, query: &str) -> Result<Option<SystemTime>, ExportError>;
    /// Records that every row of `query` ingested before `at` was written by the sink. Must be
    /// durable when it returns.
    fn save(&self, query: &str, at: SystemTime) -> Result<(), ExportError>;
}

/// Checkpoints in files: `{dir}/{query}/latest_timestamp.txt`, an RFC 3339 time with
/// nanoseconds, replaced atomically (temporary file, fsync, rename).
#[derive(Clone, Debug)]
pub struct FileCheckpoints {
    dir: PathBuf,
}

impl FileCheckpoints {
    /// Checkpoints under `dir` (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> FileCheckpoints {
        FileCheckpoints { dir: dir.into() }
    }

    fn path(&self, query: &str) -> PathBuf {
        self.dir.join(query).join("latest_timestamp.txt")
    }
}

impl CheckpointStore for FileCheckpoints {
    fn load(&self, query: &str) -> Result<Option<SystemTime>, ExportError> {
        let path = self.path(query);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ExportError::checkpoint(&path, e.to_string())),
        };
        let time = azure_core::time::parse_rfc3339(text.trim()).map_err(|e| {
            ExportError::checkpoint(&path, format!("not an RFC 3339 time ({e}); fix or delete the file"))
        })?;
        Ok(Some(time.into()))
    }

    fn save(&self, query: &str, at: SystemTime) -> Result<(), ExportError> {
        let path = self.path(query);
        let text = super::rfc3339(at);
        write_atomically(&path, text.as_bytes()).map_err(|e| ExportError::checkpoint(&path, e.to_string()))
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never half of
/// one: a temporary file next to it, fsynced, renamed over it.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}
