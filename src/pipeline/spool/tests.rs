//! The spool's storage against files on disk: order, restarts, acknowledgements, the size bound,
//! corruption fixtures, the lock and a full disk. Every fixture is a real file in a temporary
//! directory, changed the way a crash or a bad disk would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use super::disk::RealDisk;
use super::frame::{Frame, read_frame};
use super::*;

/// A temporary spool directory, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tal-spool-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    fn segment_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Every batch in the segment files of `dir`, read straight from the files (the store holding
/// the directory is not asked), cursor or not.
pub(crate) fn batches_on_disk(dir: &Path) -> Vec<SpooledBatch> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    let mut batches = Vec::new();
    for file in files {
        let bytes = fs::read(&file).unwrap();
        let mut rest = &bytes[SEGMENT_MAGIC.len().min(bytes.len())..];
        loop {
            let left = rest.len() as u64;
            let Frame::Good { payload, .. } = read_frame(&mut rest, left).unwrap() else {
                break;
            };
            batches.push(SpooledBatch::decode(&payload).unwrap());
        }
    }
    batches
}

fn batch(i: u64, body: usize) -> SpooledBatch {
    SpooledBatch {
        rule_id: "dcr-spool".into(),
        stream: "Custom-Spool_CL".into(),
        first_row: i * 10,
        rows: 10,
        body: vec![i as u8; body],
    }
}

fn open(dir: &TempDir, max_bytes: u64, segment_bytes: u64, when_full: SpoolFull) -> SpoolStore {
    SpoolStore::open(&dir.0, max_bytes, segment_bytes, when_full, Arc::new(RealDisk)).unwrap()
}

/// Every batch still to hand out, with where each starts.
fn drain(store: &mut SpoolStore) -> Vec<(SpooledBatch, Position)> {
    let mut out = Vec::new();
    while let Some((batch, start, _)) = store.next().unwrap() {
        out.push((batch, start));
        assert!(out.len() < 10_000, "next() does not end");
    }
    out
}

/// The service confirmed `batches`: they are settled and the cursor saved.
fn confirm(store: &mut SpoolStore, batches: &[(SpooledBatch, Position)]) {
    for (_, start) in batches {
        assert!(store.settle(*start).unwrap(), "{start:?} was lent");
    }
    store.save_cursor().unwrap();
}

fn firsts(batches: &[(SpooledBatch, Position)]) -> Vec<u64> {
    batches.iter().map(|(b, _)| b.first_row / 10).collect()
}

#[test]
fn batches_come_back_in_order_across_a_restart_and_acked_ones_do_not() {
    let dir = TempDir::new("order");
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    for i in 0..3 {
        store.append(&batch(i, 100)).unwrap();
    }
    store.sync().unwrap();
    drop(store);

    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(store.unread(), 3);
    let read = drain(&mut store);
    assert_eq!(firsts(&read), [0, 1, 2]);
    assert_eq!(read[1].0, batch(1, 100), "every field comes back");
    confirm(&mut store, &read[..=1]);
    drop(store);

    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(firsts(&drain(&mut store)), [2], "acknowledged batches are not replayed");
    assert!(store.lost().is_empty(), "{:?}", store.lost());
}

#[test]
fn segments_roll_and_are_deleted_once_acked() {
    let dir = TempDir::new("roll");
    let mut store = open(&dir, 1 << 20, 4096, SpoolFull::DropNewest);
    for i in 0..20 {
        store.append(&batch(i, 1000)).unwrap();
    }
    assert!(dir.segment_files().len() >= 5, "{:?}", dir.segment_files());
    let read = drain(&mut store);
    assert_eq!(firsts(&read), (0..20).collect::<Vec<_>>());
    confirm(&mut store, &read);
    assert_eq!(dir.segment_files().len(), 1, "only the segment being written is left");
    assert_eq!(store.segments(), 1);
    let on_disk: u64 = dir.segment_files().iter().map(|f| f.metadata().unwrap().len()).sum();
    assert_eq!(store.bytes_on_disk(), on_disk);
}

#[test]
fn the_size_bound_holds_after_a_restart_and_each_policy_does_what_it_says() {
    let dir = TempDir::new("full");
    let mut store = open(&dir, 8_000, 2_500, SpoolFull::DropNewest);
    let mut appended = 0;
    let error = loop {
        match store.append(&batch(appended, 1000)) {
            Ok(()) => appended += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(error, SpoolError::Full { rows: 10, .. }), "{error}");
    assert!(error.to_string().contains("is not in the spool"), "{error}");
    let on_disk: u64 = dir.segment_files().iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(on_disk <= 8_000, "{on_disk}");
    drop(store);

    // After a restart the bound counts what is already on disk.
    let mut store = open(&dir, 8_000, 2_500, SpoolFull::DropNewest);
    assert!(matches!(store.append(&batch(99, 1000)), Err(SpoolError::Full { .. })));
    drop(store);

    // drop_oldest makes room by dropping the oldest segments, and counts their rows.
    let mut store = open(&dir, 8_000, 2_500, SpoolFull::DropOldest);
    store.append(&batch(100, 1000)).unwrap();
    let dropped: u64 = store.lost().iter().filter_map(|l| l.rows).sum();
    assert!(dropped > 0, "{:?}", store.lost());
    assert!(store.lost()[0].reason.contains("drop_oldest"));
    let left = firsts(&drain(&mut store));
    assert_eq!(left.last(), Some(&100));
    let kept = &left[..left.len() - 1];
    let first_kept = appended - kept.len() as u64;
    assert!(first_kept > 0, "some batches were dropped");
    assert_eq!(
        kept,
        (first_kept..appended).collect::<Vec<_>>(),
        "the newest batches are kept, the oldest dropped"
    );
    assert_eq!(
        left.len() as u64 * 10 + dropped,
        appended * 10 + 10,
        "every row kept or counted"
    );
    let on_disk: u64 = dir.segment_files().iter().map(|f| f.metadata().unwrap().len()).sum();
    assert!(on_disk <= 8_000, "{on_disk}");
}

#[test]
fn a_truncated_last_record_is_cut_off_and_counted() {
    let dir = TempDir::new("torn");
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    for i in 0..3 {
        store.append(&batch(i, 300)).unwrap();
    }
    drop(store);
    let file = &dir.segment_files()[0];
    let len = file.metadata().unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(file)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(store.lost().len(), 1);
    assert!(store.lost()[0].reason.contains("cut short"), "{:?}", store.lost());
    // The good records come back, and appending goes on after them.
    store.append(&batch(3, 300)).unwrap();
    assert_eq!(firsts(&drain(&mut store)), [0, 1, 3]);
    drop(store);
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert!(store.lost().is_empty(), "the torn tail was cut: {:?}", store.lost());
    assert_eq!(firsts(&drain(&mut store)), [0, 1, 3]);
}

#[test]
fn a_flipped_byte_loses_the_rest_of_its_segment_only() {
    let dir = TempDir::new("flip");
    let mut store = open(&dir, 1 << 20, 2_000, SpoolFull::DropNewest);
    for i in 0..6 {
        store.append(&batch(i, 600)).unwrap();
    }
    drop(store);
    let files = dir.segment_files();
    assert!(files.len() >= 2, "{files:?}");
    // The second record of the first segment: past the header and the first frame.
    let mut bytes = fs::read(&files[0]).unwrap();
    let first_frame = 8 + u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let target = 8 + first_frame + 8 + 30;
    assert!(target < bytes.len());
    bytes[target] ^= 0xFF;
    fs::write(&files[0], &bytes).unwrap();

    let mut store = open(&dir, 1 << 20, 2_000, SpoolFull::DropNewest);
    assert_eq!(store.lost().len(), 1, "{:?}", store.lost());
    assert!(store.lost()[0].reason.contains("checksum"));
    let read = firsts(&drain(&mut store));
    assert_eq!(read[0], 0, "the record before the flip");
    assert!(!read.contains(&1), "the flipped record is not handed out");
    assert_eq!(read.last(), Some(&5), "later segments are read: {read:?}");
}

#[test]
fn orphans_below_the_cursor_are_deleted_and_not_replayed() {
    let dir = TempDir::new("orphan");
    let mut store = open(&dir, 1 << 20, 2_000, SpoolFull::DropNewest);
    for i in 0..6 {
        store.append(&batch(i, 600)).unwrap();
    }
    let first = dir.segment_files()[0].clone();
    let kept = fs::read(&first).unwrap();
    let read = drain(&mut store);
    confirm(&mut store, &read);
    drop(store);
    // A delete cut short by a crash: the first segment is back, below the cursor.
    fs::write(&first, kept).unwrap();

    let mut store = open(&dir, 1 << 20, 2_000, SpoolFull::DropNewest);
    assert!(!first.exists(), "the orphan was deleted at start-up");
    assert!(drain(&mut store).is_empty(), "nothing confirmed is sent again");
    assert!(store.lost().is_empty());
}

#[test]
fn a_stale_or_corrupt_cursor_replays_rather_than_loses() {
    let dir = TempDir::new("cursor");
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    for i in 0..4 {
        store.append(&batch(i, 100)).unwrap();
    }
    let read = drain(&mut store);
    confirm(&mut store, &read[..=0]);
    let stale = fs::read(dir.0.join("cursor")).unwrap();
    confirm(&mut store, &read[1..=2]);
    drop(store);

    // The cursor of an earlier ack (its newer write never reached the disk).
    fs::write(dir.0.join("cursor"), &stale).unwrap();
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(firsts(&drain(&mut store)), [1, 2, 3], "sent again, not lost");
    drop(store);

    fs::write(dir.0.join("cursor"), b"garbage").unwrap();
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(
        firsts(&drain(&mut store)),
        [0, 1, 2, 3],
        "a corrupt cursor replays from the oldest"
    );
    assert!(store.lost().is_empty());
}

#[test]
fn empty_and_foreign_segment_files_do_not_block_start_up() {
    let dir = TempDir::new("junk");
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    store.append(&batch(7, 100)).unwrap();
    drop(store);
    fs::write(dir.0.join(segment_name(0)), b"").unwrap();
    fs::write(dir.0.join(segment_name(5)), b"not a segment at all").unwrap();
    fs::write(dir.0.join("notes.txt"), b"left alone").unwrap();

    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(firsts(&drain(&mut store)), [7]);
    assert_eq!(store.lost().len(), 1, "{:?}", store.lost());
    assert!(store.lost()[0].reason.contains("not a spool segment"));
    assert!(!dir.0.join(segment_name(0)).exists());
    assert!(!dir.0.join(segment_name(5)).exists());
    assert!(
        dir.0.join("notes.txt").exists(),
        "files that are not segments are left alone"
    );
}

#[test]
fn a_second_user_of_the_directory_is_refused() {
    let dir = TempDir::new("lock");
    let first = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    let error = SpoolStore::open(&dir.0, 1 << 20, 1 << 20, SpoolFull::DropNewest, Arc::new(RealDisk)).unwrap_err();
    assert!(matches!(error, SpoolError::Locked { .. }), "{error}");
    assert!(error.to_string().contains(&dir.0.display().to_string()), "{error}");
    drop(first);
    open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
}

/// A disk that fills up once `room` bytes have been appended.
#[derive(Debug)]
pub(crate) struct FillingDisk {
    pub(crate) room: AtomicU64,
}

impl Disk for FillingDisk {
    fn append(&self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        let left = self.room.load(Ordering::Relaxed);
        if (bytes.len() as u64) > left {
            // Half of it reaches the file, as a write cut short by a full disk.
            RealDisk.append(file, &bytes[..bytes.len() / 2])?;
            self.room.store(0, Ordering::Relaxed);
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        self.room.fetch_sub(bytes.len() as u64, Ordering::Relaxed);
        RealDisk.append(file, bytes)
    }

    fn sync(&self, file: &File) -> io::Result<()> {
        RealDisk.sync(file)
    }
}

#[test]
fn a_full_disk_refuses_the_batch_and_keeps_what_was_written() {
    let dir = TempDir::new("enospc");
    let disk = Arc::new(FillingDisk {
        room: AtomicU64::new(3_000),
    });
    let mut store = SpoolStore::open(&dir.0, 1 << 20, 1 << 20, SpoolFull::DropNewest, disk).unwrap();
    let mut written = 0;
    let error = loop {
        match store.append(&batch(written, 700)) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
    };
    assert!(written >= 2, "{written}");
    match &error {
        SpoolError::Io { what, source, .. } => {
            assert_eq!(*what, "appending a batch");
            assert_eq!(source.kind(), io::ErrorKind::StorageFull);
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("the batch is not in the spool"), "{error}");
    assert_eq!(firsts(&drain(&mut store)), (0..written).collect::<Vec<_>>());
    drop(store);
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert!(
        store.lost().is_empty(),
        "the partial frame was cut off: {:?}",
        store.lost()
    );
    assert_eq!(firsts(&drain(&mut store)), (0..written).collect::<Vec<_>>());
}

#[test]
fn lent_batches_confirmed_out_of_order_move_the_cursor_only_past_the_confirmed_prefix() {
    let dir = TempDir::new("lent-order");
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    let starts: Vec<Position> = (0..4).map(|i| store.append_lent(&batch(i, 100)).unwrap()).collect();
    assert_eq!(store.unread(), 0, "lent batches are not handed out again");
    assert!(store.next().unwrap().is_none());
    // The service confirms 2 and 0; 1 is still in flight, 3 too.
    assert!(store.settle(starts[2]).unwrap());
    assert!(store.settle(starts[0]).unwrap());
    store.save_cursor().unwrap();
    drop(store);
    // A crash here: 1 and 3 were never confirmed, 2 was but lies after 1.
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert_eq!(firsts(&drain(&mut store)), [1, 2, 3], "sent again, never lost");
}

#[test]
fn a_given_back_batch_comes_back_first_and_one_lent_at_write_is_never_handed_out_twice() {
    let dir = TempDir::new("lent-back");
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    store.append(&batch(0, 100)).unwrap();
    let one = store.append_lent(&batch(1, 100)).unwrap();
    store.append(&batch(2, 100)).unwrap();
    assert_eq!(store.unread(), 2);
    let (first, first_start, _) = store.next().unwrap().unwrap();
    assert_eq!(first.first_row, 0);
    // Batch 1 was not delivered: it comes back before 2.
    assert!(store.give_back(one));
    assert_eq!(store.unread(), 2);
    let read = drain(&mut store);
    assert_eq!(firsts(&read), [1, 2], "1 given back, then 2; 1 is not read twice");
    assert!(store.give_back(first_start), "0 failed too");
    assert_eq!(firsts(&drain(&mut store)), [0]);
    // Everything confirmed: the cursor passes it all and nothing is sent again.
    for start in [first_start, read[0].1, read[1].1] {
        assert!(store.settle(start).unwrap());
    }
    assert!(!store.settle(first_start).unwrap(), "settled once");
    drop(store);
    let mut store = open(&dir, 1 << 20, 1 << 20, SpoolFull::DropNewest);
    assert!(
        drain(&mut store).is_empty(),
        "the cursor was saved when the store closed"
    );
}

#[test]
fn confirming_lent_batches_deletes_the_segments_the_cursor_passed() {
    let dir = TempDir::new("lent-roll");
    let mut store = open(&dir, 1 << 20, 4096, SpoolFull::DropNewest);
    let starts: Vec<Position> = (0..20).map(|i| store.append_lent(&batch(i, 1000)).unwrap()).collect();
    assert!(dir.segment_files().len() >= 5);
    for start in &starts[..19] {
        store.settle(*start).unwrap();
    }
    assert!(
        dir.segment_files().len() <= 2,
        "passed segments are deleted without waiting for a save: {:?}",
        dir.segment_files()
    );
    store.settle(starts[19]).unwrap();
    store.save_cursor().unwrap();
    assert_eq!(dir.segment_files().len(), 1, "only the segment being written is left");
    let on_disk: u64 = dir.segment_files().iter().map(|f| f.metadata().unwrap().len()).sum();
    assert_eq!(store.bytes_on_disk(), on_disk);
}
