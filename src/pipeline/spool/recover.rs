//! Start-up: the spool directory opened and locked, and what an earlier process left recovered,
//! segment by segment and frame by frame, never loading the backlog into memory.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use super::cursor::{self, CURSOR_TMP, Cursor, Position};
use super::disk::Disk;
use super::frame::{Frame, SEGMENT_MAGIC, SpooledBatch, read_frame};
use super::{Loss, MAGIC_LEN, Segment, SpoolError, SpoolFull, SpoolStore, io_error, segment_id, segment_name};

impl SpoolStore {
    /// Opens (creating it if needed) the spool in `dir` and recovers what it holds.
    pub(crate) fn open(
        dir: impl Into<PathBuf>,
        max_bytes: u64,
        segment_bytes: u64,
        when_full: SpoolFull,
        disk: Arc<dyn Disk>,
    ) -> Result<SpoolStore, SpoolError> {
        let dir = dir.into();
        let io = io_error;
        fs::create_dir_all(&dir).map_err(io("creating the directory", &dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening the lock file", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(SpoolError::Locked { dir }),
            Err(fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        }
        let _ = fs::remove_file(dir.join(CURSOR_TMP));

        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io("listing", &dir))? {
            let entry = entry.map_err(io("listing", &dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut lost = Vec::new();
        let start = match cursor::read(&dir).map_err(io("reading the cursor", &dir))? {
            Cursor::At(at) => at,
            // From the oldest segment: rows may be sent twice, none is lost.
            Cursor::Absent | Cursor::Corrupt => Position {
                segment: ids.first().copied().unwrap_or(1),
                offset: MAGIC_LEN,
            },
        };

        let mut store = SpoolStore {
            dir,
            disk,
            _lock: lock,
            max_bytes,
            segment_bytes: segment_bytes.max(MAGIC_LEN + 1),
            when_full,
            segments: VecDeque::new(),
            writer: None,
            read: start,
            reader: None,
            lent: BTreeMap::new(),
            ahead: BTreeMap::new(),
            returned: BTreeMap::new(),
            acked: start,
            saved: start,
            first_written: None,
            bytes_on_disk: 0,
            unread: 0,
            lost: Vec::new(),
            frame: Vec::new(),
        };
        for id in ids {
            let path = store.dir.join(segment_name(id));
            if id < start.segment {
                // Passed by the cursor; its delete was cut short by a stop.
                fs::remove_file(&path).map_err(io("deleting a confirmed segment", &path))?;
                continue;
            }
            let from = if id == start.segment { start.offset } else { MAGIC_LEN };
            match store.recover_segment(id, from, &mut lost)? {
                Some(segment) => {
                    store.bytes_on_disk += segment.len;
                    store.unread += segment.batches;
                    store.segments.push_back(segment);
                }
                None => fs::remove_file(&path).map_err(io("deleting an empty segment", &path))?,
            }
        }
        store.lost = lost;
        // Reading starts at the cursor, or at the first segment left if the cursor's is gone.
        if let Some(first) = store.segments.front()
            && first.id != store.read.segment
        {
            store.read = Position {
                segment: first.id,
                offset: MAGIC_LEN,
            };
        }
        Ok(store)
    }

    /// Checks segment `id` from byte `from` on: counts its good frames and truncates it after
    /// the last one. `None` for a file that holds no frame at all (empty, or not a segment).
    fn recover_segment(&self, id: u64, from: u64, lost: &mut Vec<Loss>) -> Result<Option<Segment>, SpoolError> {
        let path = self.dir.join(segment_name(id));
        let io = |what| io_error(what, &path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("opening a segment"))?;
        let len = file.metadata().map_err(io("reading a segment's size"))?.len();
        let mut reader = BufReader::new(&file);
        let mut magic = [0u8; SEGMENT_MAGIC.len()];
        if len < MAGIC_LEN || reader.read_exact(&mut magic).is_err() || &magic != SEGMENT_MAGIC {
            if len > 0 {
                lost.push(Loss {
                    segment: id,
                    offset: 0,
                    bytes: len,
                    rows: None,
                    reason: "not a spool segment (a wrong or missing header)",
                });
            }
            return Ok(None);
        }
        let mut at = from.clamp(MAGIC_LEN, len);
        reader.seek(SeekFrom::Start(at)).map_err(io("reading a segment"))?;
        let (mut batches, mut rows) = (0, 0);
        loop {
            match read_frame(&mut reader, len - at).map_err(io("reading a segment"))? {
                Frame::Good { payload, size } => {
                    batches += 1;
                    rows += u64::from(SpooledBatch::rows_in(&payload));
                    at += size;
                }
                Frame::End => break,
                Frame::Bad(reason) => {
                    lost.push(Loss {
                        segment: id,
                        offset: at,
                        bytes: len - at,
                        rows: None,
                        reason,
                    });
                    drop(reader);
                    file.set_len(at).map_err(io("truncating a segment after a bad frame"))?;
                    break;
                }
            }
        }
        Ok(Some(Segment {
            id,
            len: at,
            batches,
            rows,
            ..Segment::default()
        }))
    }
}
