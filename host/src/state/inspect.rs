//! Inspection: reading a data directory's database from another process (`weir outbox stats`,
//! `weir dead-letters`) without changing it.
//!
//! A database no gateway holds is opened read-only. A database left by a crash (SIGKILL, power
//! loss) needs redb's repair before it can be read, which a read-only open refuses; repairing it
//! in place would change the file the next `weir run` finds (and, should the file be damaged,
//! `weir run` is the one that moves it aside and salvages it). So the repair runs on an
//! [`Overlay`]: redb sees the file through a layer of memory — reads come from the file unless
//! the range was written, writes land in memory only, and the file is opened read-only, so
//! nothing reaches it. Only the pages the repair rewrites are held in memory.
//!
//! redb cannot lock a file it reaches through the overlay, so an overlay read is checked
//! afterwards instead: it counts only if the file still needs its repair, no process holds it
//! and its length and modification time did not change meanwhile (a gateway that started
//! during the read would have repaired it in place). Otherwise the read is thrown away and the
//! inspection starts over; a running gateway is reported as [`StoreError::InUse`].
//!
//! **Invariant:** inspection never writes to the database file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use redb::{Database, DatabaseError, ReadTransaction, ReadableDatabase, StorageBackend};

use super::salvage::{QuietPanics, panic_message};
use super::stats::{self, Stats};
use super::{CACHE_BYTES, DATABASE_FILE, DeadLetter, OrStore, StoreError};

/// Reads of a database that needed a repair, thrown away because the file changed meanwhile,
/// before giving up.
const ATTEMPTS: usize = 3;

/// What an inspection read, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Inspected<T> {
    /// What was read.
    pub value: T,
    /// The file was left by an unclean stop and was read through an in-memory repair (the
    /// file itself is unchanged; the next `weir run` repairs it).
    pub repaired: bool,
}

/// The newest dead letters and the counts.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetters {
    /// The newest, oldest first, with their ids.
    pub newest: Vec<(u64, DeadLetter)>,
    /// Dead letters kept.
    pub kept: u64,
    /// Dead letters evicted to respect the capacity.
    pub evicted: u64,
}

/// Stats of a data dir no gateway is using (see [`stats`]).
pub fn stats(data_dir: &Path) -> Result<Inspected<Stats>, StoreError> {
    read(data_dir, stats::collect)
}

/// The newest `limit` dead letters of a data dir no gateway is using, and the counts.
pub fn dead_letters(data_dir: &Path, limit: usize) -> Result<Inspected<DeadLetters>, StoreError> {
    read(data_dir, |txn| {
        let (kept, evicted) = super::dead_letter_counts(txn)?;
        Ok(DeadLetters { newest: super::newest_dead_letters(txn, limit)?, kept, evicted })
    })
}

/// Runs `what` on a read transaction of the database in `data_dir`, changing nothing.
fn read<T>(
    data_dir: &Path,
    what: impl Fn(&ReadTransaction) -> Result<T, StoreError>,
) -> Result<Inspected<T>, StoreError> {
    let path = data_dir.join(DATABASE_FILE);
    // A damaged file can make redb panic; that is reported as an error, not as a crash.
    let _quiet = QuietPanics::install();
    let unreadable = |panic| StoreError::Unreadable { what: "database", reason: panic_message(&panic) };
    for _ in 0..ATTEMPTS {
        let opened = catch_unwind(AssertUnwindSafe(|| redb::Builder::new().open_read_only(&path)));
        match opened.map_err(unreadable)? {
            Ok(db) => {
                let value = catch_unwind(AssertUnwindSafe(|| what(&db.begin_read().or_store("read")?)));
                return Ok(Inspected { value: value.map_err(unreadable)??, repaired: false });
            }
            Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { path }),
            Err(DatabaseError::RepairAborted) => {}
            Err(e) => return Err(StoreError::Database { operation: "open read-only", source: Box::new(e.into()) }),
        }
        let before = fingerprint(&path)?;
        let value = catch_unwind(AssertUnwindSafe(|| -> Result<T, StoreError> {
            let file = File::open(&path).map_err(|source| StoreError::DataDir { path: path.clone(), source })?;
            let db = Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(Overlay::new(file)?)
                .or_store("repair in memory")?;
            what(&db.begin_read().or_store("read")?)
        }));
        // Whatever was read counts only if nobody touched the file meanwhile.
        let untouched = fingerprint(&path)? == before;
        match catch_unwind(AssertUnwindSafe(|| redb::Builder::new().open_read_only(&path))) {
            Ok(Err(DatabaseError::DatabaseAlreadyOpen)) => return Err(StoreError::InUse { path }),
            Ok(Err(DatabaseError::RepairAborted)) if untouched => {
                return Ok(Inspected { value: value.map_err(unreadable)??, repaired: true });
            }
            // Repaired or rewritten meanwhile (a gateway came and went): read it again.
            _ => {}
        }
    }
    Err(StoreError::Unreadable {
        what: "database",
        reason: format!("{} kept changing while it was read; try again", path.display()),
    })
}

/// Length and modification time of the file: any write changes one of them.
fn fingerprint(path: &Path) -> Result<(u64, Option<SystemTime>), StoreError> {
    let metadata = std::fs::metadata(path).map_err(|source| StoreError::DataDir { path: path.to_owned(), source })?;
    Ok((metadata.len(), metadata.modified().ok()))
}

/// Granularity of the overlay's memory layer, bytes.
const BLOCK: u64 = 4096;

/// A file seen through a layer of memory: redb reads the file where it has not written, and
/// its writes and length changes stay in memory. The file is opened read-only.
///
/// **Invariants:** `file_end <= len`; bytes of the layer's blocks at or past `len` are zero, as
/// are file bytes at or past `file_end` — so a length that grows again shows zeroes, as
/// [`StorageBackend::set_len`] requires.
#[derive(Debug)]
struct Overlay {
    file: File,
    layer: Mutex<Layer>,
}

#[derive(Debug)]
struct Layer {
    /// The length redb sees.
    len: u64,
    /// File bytes from here on are not used (the length was cut below them once).
    file_end: u64,
    /// Blocks written, by index.
    blocks: HashMap<u64, Box<[u8]>>,
}

impl Overlay {
    fn new(file: File) -> Result<Self, StoreError> {
        let len =
            file.metadata().map_err(|e| StoreError::Unreadable { what: "database", reason: e.to_string() })?.len();
        Ok(Self { file, layer: Mutex::new(Layer { len, file_end: len, blocks: HashMap::new() }) })
    }

    fn layer(&self) -> std::sync::MutexGuard<'_, Layer> {
        // A panic inside redb while it held the lock leaves the layer as consistent as before.
        self.layer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills `out` with the file's bytes at `offset`, zeroes past `file_end`.
    fn read_file(&self, file_end: u64, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        let from_file = usize::try_from(file_end.saturating_sub(offset)).unwrap_or(usize::MAX).min(out.len());
        let (head, tail) = out.split_at_mut(from_file);
        self.file.read_exact_at(head, offset)?;
        tail.fill(0);
        Ok(())
    }
}

fn out_of_range(offset: u64, len: usize, storage: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{len} bytes at {offset} are past the end of the storage ({storage} bytes)"),
    )
}

/// Block index and the offset inside it of byte `at`.
fn block_of(at: u64) -> (u64, usize) {
    (at / BLOCK, usize::try_from(at % BLOCK).expect("an offset inside a block fits in usize"))
}

impl StorageBackend for Overlay {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.layer().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let layer = self.layer();
        if offset.checked_add(out.len() as u64).is_none_or(|end| end > layer.len) {
            return Err(out_of_range(offset, out.len(), layer.len));
        }
        let mut done = 0;
        while done < out.len() {
            let at = offset + done as u64;
            let (index, within) = block_of(at);
            let n = (BLOCK as usize - within).min(out.len() - done);
            let part = &mut out[done..done + n];
            match layer.blocks.get(&index) {
                Some(block) => part.copy_from_slice(&block[within..within + n]),
                None => self.read_file(layer.file_end, at, part)?,
            }
            done += n;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut layer = self.layer();
        if len < layer.len {
            layer.file_end = layer.file_end.min(len);
            let (last, within) = block_of(len);
            layer.blocks.retain(|&index, _| index <= last);
            if let Some(block) = layer.blocks.get_mut(&last) {
                block[within..].fill(0);
            }
        }
        layer.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut layer = self.layer();
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > layer.len) {
            return Err(out_of_range(offset, data.len(), layer.len));
        }
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let (index, within) = block_of(at);
            let n = (BLOCK as usize - within).min(data.len() - done);
            if !layer.blocks.contains_key(&index) {
                let mut block = vec![0; BLOCK as usize].into_boxed_slice();
                let start = index * BLOCK;
                // Only the part below the length is meaningful; the rest stays zero.
                let meaningful = usize::try_from(layer.len - start).unwrap_or(usize::MAX).min(block.len());
                self.read_file(layer.file_end, start, &mut block[..meaningful])?;
                layer.blocks.insert(index, block);
            }
            let block = layer.blocks.get_mut(&index).expect("the block was just inserted");
            block[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay_of(bytes: &[u8]) -> (tempfile::NamedTempFile, Overlay) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, bytes).expect("write");
        let overlay = Overlay::new(File::open(file.path()).expect("open")).expect("overlay");
        (file, overlay)
    }

    fn read(overlay: &Overlay, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xAA; len];
        overlay.read(offset, &mut out).expect("in range");
        out
    }

    #[test]
    fn writes_stay_in_memory_and_read_back_across_blocks() {
        let original: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 251) as u8).collect();
        let (file, overlay) = overlay_of(&original);
        overlay.write(BLOCK - 2, &[1, 2, 3, 4]).expect("write");
        let mut expected = original.clone();
        expected[BLOCK as usize - 2..BLOCK as usize + 2].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(read(&overlay, 0, expected.len()), expected);
        assert_eq!(std::fs::read(file.path()).expect("read"), original, "the file is untouched");
    }

    #[test]
    fn a_length_cut_and_grown_again_reads_zeroes() {
        let original = vec![7_u8; 2 * BLOCK as usize];
        let (_file, overlay) = overlay_of(&original);
        overlay.write(10, &[9; 10]).expect("write");
        overlay.set_len(15).expect("cut");
        assert!(overlay.read(10, &mut [0; 10]).is_err(), "past the end");
        overlay.set_len(3 * BLOCK).expect("grow");
        assert_eq!(read(&overlay, 0, 20), [&[7; 10][..], &[9; 5], &[0; 5]].concat());
        assert_eq!(read(&overlay, BLOCK, BLOCK as usize), vec![0; BLOCK as usize]);
        overlay.write(2 * BLOCK + 1, &[5]).expect("write past the old end");
        assert_eq!(read(&overlay, 2 * BLOCK, 3), [0, 5, 0]);
    }
}
