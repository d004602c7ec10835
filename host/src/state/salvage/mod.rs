//! Salvage: opening the database file when it is damaged — bit flips, zeroed pages, a
//! truncated file — without a crash loop and without anyone deleting files by hand.
//!
//! Every open verifies the whole file (redb's integrity check: page checksums of every committed
//! tree). A file that fails it, or that makes redb panic, is *damaged*: it is moved to
//! `<data_dir>/damaged/weir.redb.<unix seconds>` (the newest [`DAMAGED_KEPT`] are kept), a fresh
//! file takes its place, and whatever the damaged copy still yields is copied in, table by table.
//! A [`Recovery`] report records what happened and what was lost; the host logs it, keeps it in
//! the `recoveries` table and `weir outbox stats` shows it.
//!
//! **Outbox records come back from the raw bytes too.** redb refuses a whole tree when one page
//! on its path is damaged, so besides the table-by-table copy, `scan` reads the damaged file's
//! bytes for record envelopes and decodes every one it finds, wherever redb's tree above it
//! went — also when redb reads the whole outbox table, since redb verifies no page it reads and
//! the copy it returns may be damaged where an intact one lies elsewhere. The candidates (redb's
//! and the scan's) are sorted out per stream in [`choose`]:
//! - a copy of a record below the stream's *outbox floor* (the lowest seq its outbox may still
//!   hold, kept in `counters`) is *stale* — copy-on-write leaves confirmed records in freed
//!   pages — and is not restored. Without a floor (a file written before weir kept one, or a
//!   damaged `counters` table) but with the whole outbox table read by redb, copies below the
//!   lowest seq redb read are stale; with neither, stale copies are restored and sent again:
//!   the JetStream sink finds them by `Nats-Msg-Id` in the central stream, MQTT consumers by
//!   the record id, so a resent stale record is a recognisable duplicate, never a loss;
//! - of differing copies of one seq, the widest span wins (a summary grows in place), then the
//!   copy seen most often (copy-on-write leaves several intact copies of most records; a damaged
//!   one is unique), then redb's, then the newest; seqs where equally likely copies differ are
//!   reported as *conflicting*;
//! - a summary (coarsened record or drop marker) supersedes every record its span covers.
//!
//! **The loss report is exact where it can be.** Per stream it lists the seqs restored (as
//! ranges) and, when the stream's outbox floor and last seq were both read back, the seqs
//! between them that no restored record covers: those are lost (counted in
//! `records_unrecovered`, one per original record). Otherwise, if redb read the whole outbox
//! table, the loss is what the outbox accounting held and did not come back; else it is
//! unknown, and the report says why.
//!
//! **Invariants:**
//! - *never reuse a seq*: if the stream positions could not all be read back, a gateway-wide
//!   *seq floor* (the current time in microseconds since the Unix epoch) is stored; new seqs of
//!   every stream start above it, so no new record takes the id of one the central broker may
//!   already hold. Every stream's position is at least the last seq of any record restored.
//! - *only whole records*: an outbox record is restored only if it decodes completely, names
//!   the stream and seq it is stored under, its span starts at that seq and ends at or below
//!   the stream's last seq (when known). The record format has no checksum and redb verifies no
//!   page it reads outside its integrity check, so a bit flipped inside a value that keeps the
//!   record decodable goes unnoticed when no intact copy outvotes it.
//! - *errors that are not damage are not treated as such*: a file another process holds, or one
//!   the OS refuses to read, is reported, never moved.

mod scan;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use rangemap::RangeInclusiveSet;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use super::outbox::{OUTBOX, OUTBOX_USAGE, Outbox, PUBLISH_RESERVATIONS, STREAM_COUNTERS};
use super::{
    CACHE_BYTES, COUNTERS, Counter, DEAD_LETTERS, FUNCTION_STATE, OrStore, RECENT_DELIVERIES, SINK_POSITIONS,
    STREAM_SEQ, StoreError, create_tables, recount_dead_letter_bytes, recount_function_state_usage,
};
use scan::Scanned;

/// Damaged files kept in `<data_dir>/damaged`, newest first; older ones are deleted.
pub const DAMAGED_KEPT: usize = 2;
/// Directory (inside the data dir) damaged files are moved to.
pub const DAMAGED_DIR: &str = "damaged";
/// Counter (gateway-wide): every stream's seqs continue above this after a recovery.
pub(super) const SEQ_FLOOR: &str = "seq_floor";
/// id → [`Recovery`] as JSON.
pub(super) const RECOVERIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("recoveries");

/// Every recovery report kept in the database, oldest first.
pub(super) fn recoveries(txn: &redb::ReadTransaction) -> Result<Vec<Recovery>, StoreError> {
    let table = txn.open_table(RECOVERIES).or_store("read recoveries")?;
    let mut recoveries = Vec::new();
    for entry in table.iter().or_store("read recoveries")? {
        let (_, report) = entry.or_store("read recoveries")?;
        let report = serde_json::from_slice(report.value())
            .map_err(|e| StoreError::Unreadable { what: "recovery report", reason: e.to_string() })?;
        recoveries.push(report);
    }
    Ok(recoveries)
}

/// What a recovery from a damaged file did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recovery {
    /// When (ns since the Unix epoch).
    pub at: i64,
    /// Where the damaged file went.
    pub damaged_file: PathBuf,
    /// Why it was found damaged.
    pub reason: String,
    /// Per table: entries copied, and whether the table read back to its end.
    pub tables: Vec<TableSalvage>,
    /// Per stream: original records (seqs) held before the damage that were not recovered, as
    /// [`StreamSalvage::lost`] counts them (or, without a floor, from the outbox's accounting).
    pub outbox_records_lost: Vec<(String, u64)>,
    /// Whether that loss is known for every stream (see [`StreamSalvage::loss_basis`]).
    pub outbox_loss_known: bool,
    /// The seq floor set because stream positions were lost.
    pub seq_floor: Option<u64>,
    /// Per stream: what its outbox came back with, and which seqs were lost.
    #[serde(default)]
    pub outbox: Vec<StreamSalvage>,
}

/// What one stream's outbox came back with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamSalvage {
    /// The stream.
    pub stream: String,
    /// Records restored to the outbox.
    pub records: u64,
    /// Of these, records read from the damaged file's raw bytes (redb could not reach them).
    pub from_raw_bytes: u64,
    /// Seqs the restored records stand for (their spans), as inclusive ranges.
    pub recovered: Vec<(u64, u64)>,
    /// Copies found of records already confirmed (below the outbox floor), not restored.
    pub stale: u64,
    /// Seqs restored although differing copies of them were found, equally often: at most one
    /// was intact, and the record restored may be the damaged one.
    #[serde(default)]
    pub conflicting: u64,
    /// Seqs the outbox held before the damage and that were not recovered, as inclusive
    /// ranges; absent when unknown.
    pub lost: Option<Vec<(u64, u64)>>,
    /// How `lost` was determined (or why it is unknown).
    pub loss_basis: String,
}

/// What one table yielded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSalvage {
    /// The table.
    pub table: String,
    /// Entries copied.
    pub salvaged: u64,
    /// Entries read but not kept (undecodable or inconsistent).
    pub rejected: u64,
    /// The table read back to its end without error.
    pub complete: bool,
}

/// Why an open failed.
enum OpenFailure {
    /// Not damage: report it as is.
    Refused(StoreError),
    /// The file is damaged.
    Damaged(String),
}

/// Opens the database at `path`, recovering from a damaged file. Returns the report when it
/// had to recover.
pub(super) fn open_database(path: &Path) -> Result<(Database, Option<Recovery>), StoreError> {
    // A damaged file can make redb panic; those panics are caught and reported here, so the
    // default hook's message and backtrace on stderr would only alarm.
    let _quiet = QuietPanics::install();
    let reason = match try_open(path) {
        Ok(db) => return Ok((db, None)),
        Err(OpenFailure::Refused(error)) => return Err(error),
        Err(OpenFailure::Damaged(reason)) => reason,
    };
    tracing::error!(stage = "state", file = %path.display(), reason = %reason,
        "the state database is damaged; moving it aside and recovering what it still holds");
    let damaged_file = move_aside(path)?;
    let db = match try_open(path) {
        Ok(db) => db,
        Err(OpenFailure::Refused(error)) => return Err(error),
        Err(OpenFailure::Damaged(reason)) => {
            return Err(StoreError::CommitFailed { reason: format!("a fresh database is damaged at once: {reason}") });
        }
    };
    let recovery = salvage(&damaged_file, &db, reason)?;
    Ok((db, Some(recovery)))
}

/// Opens the database at `path` again after the committer closed it following a failed
/// commit: redb brings it back to its last durable commit. Unlike [`open_database`] it moves
/// nothing aside — a file that opened at start and then met an I/O error is not damaged.
pub(super) fn reopen(path: &Path) -> Result<Database, StoreError> {
    match try_open(path) {
        Ok(db) => Ok(db),
        Err(OpenFailure::Refused(error)) => Err(error),
        Err(OpenFailure::Damaged(reason)) => Err(StoreError::CommitFailed { reason }),
    }
}

/// Replaces the panic hook with one that logs at debug level, until dropped. Opening happens
/// before any other thread of the process runs, so no other panic is hidden.
type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

pub(super) struct QuietPanics {
    previous: Option<PanicHook>,
}

impl QuietPanics {
    pub(super) fn install() -> Self {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(
            |info| tracing::debug!(stage = "state", panic = %info, "caught while reading the database"),
        ));
        Self { previous: Some(previous) }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

fn try_open(path: &Path) -> Result<Database, OpenFailure> {
    // redb initialises an empty file as a new database; ours was never empty once created, so
    // an empty one lost everything (and its seqs must not start over).
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(OpenFailure::Damaged("the file is empty (truncated)".to_owned()));
    }
    let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Database, redb::Error> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).set_check_integrity_on_open(true).create(path)?;
        create_tables(&db).map_err(|e| match e {
            StoreError::Database { source, .. } => *source,
            other => redb::Error::Corrupted(other.to_string()),
        })?;
        Ok(db)
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::Error::DatabaseAlreadyOpen)) => {
            Err(OpenFailure::Refused(StoreError::InUse { path: path.to_owned() }))
        }
        Ok(Err(error)) if is_damage(&error) => Err(OpenFailure::Damaged(error.to_string())),
        Ok(Err(error)) => {
            Err(OpenFailure::Refused(StoreError::Database { operation: "open", source: Box::new(error) }))
        }
        Err(panic) => {
            Err(OpenFailure::Damaged(format!("the database panicked while opening: {}", panic_message(&panic))))
        }
    }
}

/// Damage, as opposed to a refusal by the OS or another process.
fn is_damage(error: &redb::Error) -> bool {
    match error {
        redb::Error::Corrupted(_) | redb::Error::RepairAborted => true,
        redb::Error::Io(io) => {
            matches!(io.kind(), std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData)
        }
        _ => false,
    }
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Moves the damaged file into the damaged directory and prunes older damaged files.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let data_dir = path.parent().unwrap_or(Path::new("."));
    let dir = data_dir.join(DAMAGED_DIR);
    let io = |source| StoreError::DataDir { path: dir.clone(), source };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(super::DATABASE_FILE);
    let mut target = dir.join(format!("{name}.{seconds}"));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("{name}.{seconds}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).map_err(io)?;
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{name}."))))
        .collect();
    kept.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let excess = kept.len().saturating_sub(DAMAGED_KEPT);
    for old in kept.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!(stage = "state", file = %old.display(), error = %e, "cannot delete an old damaged file");
        }
    }
    Ok(target)
}

/// Copies what the damaged file at `damaged` still yields into the fresh `db`.
fn salvage(damaged: &Path, db: &Database, reason: String) -> Result<Recovery, StoreError> {
    let now = crate::telemetry::now_nanos();
    let mut salvaged = Salvaged::default();
    match catch_unwind(AssertUnwindSafe(|| Database::builder().open_read_only(damaged))) {
        Ok(Ok(source)) => salvaged.read(&source),
        read_only => {
            let why = match read_only {
                Ok(Err(e)) => e.to_string(),
                Err(panic) => panic_message(&panic),
                Ok(Ok(_)) => unreachable!("handled above"),
            };
            tracing::warn!(stage = "state", error = %why, "the damaged file does not open read-only; trying a repair on a copy");
            salvaged.read_repaired_copy(damaged);
        }
    }

    // Even when redb reads the whole outbox table, it does not verify the pages it reads: a
    // record it returns may be a damaged copy of one that lies intact elsewhere in the file.
    let stale = |stream: &str, seq: u64| salvaged.stale_below(stream).is_some_and(|below| seq < below);
    let scanned = scan::scan(damaged, stale).unwrap_or_else(|e| {
        tracing::error!(stage = "state", error = %e, "the damaged file's bytes cannot be read for outbox records");
        Scanned::default()
    });
    let streams = salvaged.outbox_streams(scanned);

    let txn = db.begin_write().or_store("write recovered state")?;
    let mut recovery = Recovery {
        at: now,
        damaged_file: damaged.to_owned(),
        reason,
        tables: salvaged.tables.clone(),
        outbox_records_lost: Vec::new(),
        // Which streams held records is known only from their positions or the accounting.
        outbox_loss_known: salvaged.complete(STREAM_SEQ.name()) || salvaged.usage.is_some(),
        seq_floor: None,
        outbox: Vec::new(),
    };
    {
        let mut state = txn.open_table(FUNCTION_STATE).or_store("write recovered state")?;
        for ((namespace, key), value) in &salvaged.function_state {
            state.insert((namespace.as_str(), key.as_slice()), value.as_slice()).or_store("write recovered state")?;
        }
        drop(state);
        recount_function_state_usage(&txn)?;
        let mut outbox = Outbox::open(&txn)?;
        let mut highest: BTreeMap<String, u64> = BTreeMap::new();
        for stream in &streams {
            for (seq, body, record) in &stream.records {
                outbox.restore(&stream.report.stream, *seq, body, record)?;
            }
            if let Some(last) = stream.report.recovered.last() {
                highest.insert(stream.report.stream.clone(), last.1);
            }
        }
        for ((stream, from), through) in &salvaged.reservations {
            outbox.reserve(stream, *from..=*through)?;
        }
        for ((stream, counter), value) in &salvaged.stream_counters {
            if let Some(counter) = Counter::ALL.iter().find(|c| c.name() == counter) {
                outbox.count(stream, *counter, *value)?;
            }
        }
        for stream in streams {
            let name = stream.report.stream.clone();
            match stream.lost_records {
                Some(lost) if lost > 0 => {
                    outbox.count(&name, Counter::RecordsUnrecovered, lost)?;
                    recovery.outbox_records_lost.push((name, lost));
                }
                Some(_) => {}
                None => recovery.outbox_loss_known = false,
            }
            recovery.outbox.push(stream.report);
        }
        let mut seqs = txn.open_table(STREAM_SEQ).or_store("write recovered state")?;
        let mut positions = highest;
        for (stream, seq) in &salvaged.stream_seq {
            let seq = positions.get(stream.as_str()).copied().unwrap_or(0).max(*seq);
            positions.insert(stream.clone(), seq);
        }
        for (stream, seq) in &positions {
            seqs.insert(stream.as_str(), *seq).or_store("write recovered state")?;
        }
        let mut counters = txn.open_table(COUNTERS).or_store("write recovered state")?;
        for (name, value) in &salvaged.counters {
            counters.insert(name.as_str(), *value).or_store("write recovered state")?;
        }
        if !salvaged.complete(STREAM_SEQ.name()) {
            let micros = u64::try_from(now / 1_000).unwrap_or(0);
            let floor = micros.max(salvaged.counters.iter().find(|(n, _)| n == SEQ_FLOOR).map_or(0, |(_, v)| *v));
            counters.insert(SEQ_FLOOR, floor).or_store("write recovered state")?;
            recovery.seq_floor = Some(floor);
        }
        let mut positions = txn.open_table(SINK_POSITIONS).or_store("write recovered state")?;
        for (stream, position) in &salvaged.sink_positions {
            positions.insert(stream.as_str(), *position).or_store("write recovered state")?;
        }
        let mut recent = txn.open_table(RECENT_DELIVERIES).or_store("write recovered state")?;
        for ((source, order), identity) in &salvaged.recent_deliveries {
            recent.insert((source.as_str(), *order), identity.as_slice()).or_store("write recovered state")?;
        }
        let mut letters = txn.open_table(DEAD_LETTERS).or_store("write recovered state")?;
        for (id, letter) in &salvaged.dead_letters {
            letters.insert(*id, letter.as_slice()).or_store("write recovered state")?;
        }
        let mut recoveries = txn.open_table(RECOVERIES).or_store("write recovered state")?;
        for (id, report) in &salvaged.recoveries {
            recoveries.insert(*id, report.as_slice()).or_store("write recovered state")?;
        }
        let id = salvaged.recoveries.last().map_or(0, |(id, _)| id + 1);
        let report = serde_json::to_vec(&recovery).expect("a recovery report serialises");
        recoveries.insert(id, report.as_slice()).or_store("write recovered state")?;
    }
    // The byte count copied with `counters` may include letters that were not recovered.
    recount_dead_letter_bytes(&txn)?;
    txn.commit().or_store("write recovered state")?;
    tracing::error!(stage = "state", damaged_file = %recovery.damaged_file.display(),
        salvaged = ?recovery.tables.iter().map(|t| (t.table.as_str(), t.salvaged, t.complete)).collect::<Vec<_>>(),
        outbox_records_lost = ?recovery.outbox_records_lost, outbox_loss_known = recovery.outbox_loss_known,
        seq_floor = recovery.seq_floor, "recovered from a damaged state database; ingesting again");
    Ok(recovery)
}

/// (namespace, key) of a function state entry.
type StateKey = (String, Vec<u8>);

/// One stream's outbox as it will be restored.
struct StreamOutbox {
    /// (seq, body, record), in seq order.
    records: Vec<(u64, Vec<u8>, weir_record::Record)>,
    /// Records (counted in seqs: original records) lost, when known.
    lost_records: Option<u64>,
    report: StreamSalvage,
}

/// What is known of one stream's seqs.
#[derive(Clone, Copy)]
struct Bounds {
    /// Its outbox floor, as kept.
    floor: Option<u64>,
    /// Copies of seqs below this are stale: the floor, or else the lowest seq redb read in a
    /// whole outbox table.
    stale_below: Option<u64>,
    /// Its last seq.
    last_seq: Option<u64>,
}

/// A candidate outbox record: (body, record, read through redb, identical copies found).
type Candidate = (Vec<u8>, weir_record::Record, bool, u32);

/// Entries read back from a damaged file.
#[derive(Default)]
struct Salvaged {
    tables: Vec<TableSalvage>,
    function_state: Vec<(StateKey, Vec<u8>)>,
    outbox: Vec<((String, u64), Vec<u8>, weir_record::Record)>,
    /// Every key redb read in the outbox table, its record kept or not.
    outbox_keys: std::collections::BTreeSet<(String, u64)>,
    usage: Option<Vec<(String, u64)>>,
    reservations: Vec<((String, u64), u64)>,
    stream_counters: Vec<((String, String), u64)>,
    stream_seq: Vec<(String, u64)>,
    counters: Vec<(String, u64)>,
    sink_positions: Vec<(String, u64)>,
    recent_deliveries: Vec<((String, u64), Vec<u8>)>,
    dead_letters: Vec<(u64, Vec<u8>)>,
    recoveries: Vec<(u64, Vec<u8>)>,
}

impl Salvaged {
    fn complete(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t.table == table && t.complete)
    }

    /// The stream's outbox floor (see `outbox_floor_key`), when known.
    fn outbox_floor(&self, stream: &str) -> Option<u64> {
        let key = super::outbox_floor_key(stream);
        self.counters.iter().find(|(name, _)| *name == key).map(|(_, v)| *v)
    }

    /// Copies of the stream's seqs below this are stale: its outbox floor, or else — when redb
    /// read the whole outbox table — the lowest seq redb read (nothing below it was held).
    fn stale_below(&self, stream: &str) -> Option<u64> {
        self.outbox_floor(stream).or_else(|| {
            let lowest = self.outbox_keys.range((stream.to_owned(), 0)..).next().filter(|(s, _)| s == stream);
            self.complete(OUTBOX.name()).then(|| lowest.map(|(_, seq)| *seq)).flatten()
        })
    }

    /// Decides, per stream, which records to restore — those redb read back, then those the
    /// raw scan found — and what was lost (see the module doc).
    fn outbox_streams(&self, scanned: Scanned) -> Vec<StreamOutbox> {
        let mut candidates: BTreeMap<String, BTreeMap<u64, Vec<Candidate>>> = BTreeMap::new();
        for ((stream, seq), body, record) in &self.outbox {
            let copies = candidates.entry(stream.clone()).or_default().entry(*seq).or_default();
            // The scan finds this copy too, where redb read it: counted there, not twice.
            copies.push((body.clone(), record.clone(), true, 0));
        }
        for ((stream, seq), found) in scanned.records {
            let copies = candidates.entry(stream).or_default().entry(seq).or_default();
            for found in found {
                match copies.iter_mut().find(|c| c.0 == found.body) {
                    Some(same) => same.3 += found.copies,
                    None => copies.push((found.body, found.record, false, found.copies)),
                }
            }
        }
        for copy in candidates.values_mut().flat_map(|seqs| seqs.values_mut()).flatten() {
            copy.3 = copy.3.max(1);
        }
        let table_complete = self.complete(OUTBOX.name());

        let positions_complete = self.complete(STREAM_SEQ.name());
        let usage: Option<BTreeMap<&str, u64>> =
            self.usage.as_ref().map(|u| u.iter().map(|(s, n)| (s.as_str(), *n)).collect());
        let mut names: std::collections::BTreeSet<String> = candidates.keys().cloned().collect();
        names.extend(scanned.stale.keys().cloned());
        names.extend(usage.iter().flat_map(|u| u.keys().map(|s| (*s).to_owned())));
        names.extend(self.stream_seq.iter().map(|(s, _)| s.clone()));
        let mut streams = Vec::new();
        for name in names {
            let by_seq = candidates.remove(&name).unwrap_or_default();
            let floor = self.outbox_floor(&name);
            let stale_below = self.stale_below(&name);
            let last_seq = self
                .stream_seq
                .iter()
                .find(|(s, _)| *s == name)
                .map(|(_, seq)| *seq)
                .or_else(|| positions_complete.then_some(0));
            let bounds = Bounds { floor, stale_below, last_seq };
            let stale = scanned.stale.get(&name).copied().unwrap_or(0);
            let mut stream = choose(name, by_seq, bounds, table_complete, usage.as_ref());
            stream.report.stale += stale;
            streams.push(stream);
        }
        streams
    }

    /// Lets redb repair a copy of the damaged file (the original stays as it was) and reads that.
    fn read_repaired_copy(&mut self, damaged: &Path) {
        let copy = damaged.with_extension("repairing");
        let repaired = std::fs::copy(damaged, &copy).map_err(|e| e.to_string()).and_then(|_| {
            catch_unwind(AssertUnwindSafe(|| Database::builder().set_cache_size(CACHE_BYTES).open(&copy)))
                .map_err(|panic| panic_message(&panic))?
                .map_err(|e| e.to_string())
        });
        match repaired {
            Ok(source) => {
                self.read(&source);
                drop(source);
            }
            Err(e) => {
                tracing::error!(stage = "state", error = %e, "the damaged file cannot be repaired either; nothing is recovered");
            }
        }
        let _ = std::fs::remove_file(&copy);
    }

    fn read(&mut self, source: &impl ReadableDatabase) {
        self.function_state = self.table(source, FUNCTION_STATE, |(namespace, key), value| {
            Some(((namespace.to_owned(), key.to_vec()), value.to_vec()))
        });
        let keys = std::cell::RefCell::new(std::collections::BTreeSet::new());
        self.outbox = self.table(source, OUTBOX, |(stream, seq), body| {
            keys.borrow_mut().insert((stream.to_owned(), seq));
            let record = weir_record::read(body).ok()?;
            (record.header.stream == stream && record.header.seq == seq)
                .then(|| ((stream.to_owned(), seq), body.to_vec(), record))
        });
        self.outbox_keys = keys.into_inner();
        let usage = self.table(source, OUTBOX_USAGE, |stream, (records, _bytes)| Some((stream.to_owned(), records)));
        self.usage = self.complete(OUTBOX_USAGE.name()).then_some(usage);
        self.reservations = self
            .table(source, PUBLISH_RESERVATIONS, |(stream, from), through| Some(((stream.to_owned(), from), through)));
        self.stream_counters = self.table(source, STREAM_COUNTERS, |(stream, name), value| {
            Some(((stream.to_owned(), name.to_owned()), value))
        });
        self.stream_seq = self.table(source, STREAM_SEQ, |stream, seq| Some((stream.to_owned(), seq)));
        self.counters = self.table(source, COUNTERS, |name, value| Some((name.to_owned(), value)));
        self.sink_positions =
            self.table(source, SINK_POSITIONS, |stream, position| Some((stream.to_owned(), position)));
        self.recent_deliveries = self.table(source, RECENT_DELIVERIES, |(source, order), identity| {
            Some(((source.to_owned(), order), identity.to_vec()))
        });
        self.dead_letters = self.table(source, DEAD_LETTERS, |id, letter| {
            super::DeadLetter::from_bytes(letter).ok().map(|_| (id, letter.to_vec()))
        });
        self.recoveries = self.table(source, RECOVERIES, |id, report| {
            serde_json::from_slice::<Recovery>(report).ok().map(|_| (id, report.to_vec()))
        });
    }

    /// Reads `table` entry by entry until its end or the first error (or panic), keeping what
    /// `keep` accepts, and notes how far it got.
    fn table<K, V, T>(
        &mut self,
        source: &impl ReadableDatabase,
        table: TableDefinition<'_, K, V>,
        keep: impl Fn(K::SelfType<'_>, V::SelfType<'_>) -> Option<T>,
    ) -> Vec<T>
    where
        K: redb::Key + 'static,
        V: redb::Value + 'static,
    {
        let mut kept = Vec::new();
        let mut rejected = 0;
        let complete = catch_unwind(AssertUnwindSafe(|| -> Result<(), redb::Error> {
            let txn = source.begin_read()?;
            let opened = match txn.open_table(table) {
                Ok(opened) => opened,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            for entry in opened.iter()? {
                let (key, value) = entry?;
                match keep(key.value(), value.value()) {
                    Some(item) => kept.push(item),
                    None => rejected += 1,
                }
            }
            Ok(())
        }));
        let complete = match complete {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(stage = "state", table = table.name(), salvaged = kept.len(), error = %e, "a damaged table reads back only in part");
                false
            }
            Err(panic) => {
                tracing::warn!(stage = "state", table = table.name(), salvaged = kept.len(), error = %panic_message(&panic),
                    "a damaged table reads back only in part");
                false
            }
        };
        self.tables.push(TableSalvage {
            table: table.name().to_owned(),
            salvaged: kept.len() as u64,
            rejected,
            complete,
        });
        kept
    }
}

/// Picks one stream's records among the candidates and works out what was lost.
///
/// - A copy whose span reaches beyond the stream's last seq (when known) is not whole.
/// - Per seq, one copy: the widest span (a summary is rewritten in place as it grows, so older,
///   narrower copies of it linger in freed pages); then the one seen most often (a record of
///   readings never changes, so copies that differ were damaged, and copy-on-write leaves
///   several intact copies of most records); then the one redb read back; then the newest.
/// - Copies below the outbox floor are stale (already confirmed): not restored. Without a floor,
///   when redb read the whole outbox table, copies below the lowest seq it held are stale.
/// - A record whose span overlaps a wider (or, equally wide, newer) kept record is superseded by
///   it: the summary stands for it.
/// - Lost: with the floor and the stream's last seq known, the seqs between them that no restored
///   span covers; else, when redb read the whole outbox table, the records its accounting held
///   that did not come back; else unknown.
fn choose(
    stream: String,
    by_seq: BTreeMap<u64, Vec<Candidate>>,
    bounds: Bounds,
    table_complete: bool,
    usage: Option<&BTreeMap<&str, u64>>,
) -> StreamOutbox {
    let Bounds { floor, stale_below, last_seq } = bounds;
    let mut stale = 0;
    let mut conflicting = 0;
    let mut chosen: Vec<(u64, Candidate)> = Vec::new();
    for (seq, mut copies) in by_seq {
        if stale_below.is_some_and(|below| seq < below) {
            stale += 1;
            continue;
        }
        copies.retain(|(_, record, _, _)| last_seq.is_none_or(|last| record.span().last_seq <= last));
        copies.sort_by_key(|(_, record, through_redb, copies)| {
            let span = record.span();
            std::cmp::Reverse((span.last_seq, *copies, *through_redb, record.header.encoded_at))
        });
        let mut copies = copies.into_iter();
        if let Some(best) = copies.next() {
            let rival =
                |(_, record, _, n): &Candidate| record.span().last_seq == best.1.span().last_seq && *n == best.3;
            conflicting += u64::from(copies.any(|c| rival(&c)));
            chosen.push((seq, best));
        }
    }
    chosen.sort_by_key(|(_, (_, record, _, _))| {
        let span = record.span();
        std::cmp::Reverse((span.last_seq - span.first_seq, record.header.encoded_at))
    });
    let mut covered = RangeInclusiveSet::new();
    let mut records = Vec::new();
    let mut from_raw_bytes = 0;
    for (seq, (body, record, through_redb, _)) in chosen {
        let span = record.span();
        if covered.overlaps(&(span.first_seq..=span.last_seq)) {
            continue;
        }
        covered.insert(span.first_seq..=span.last_seq);
        from_raw_bytes += u64::from(!through_redb);
        records.push((seq, body, record));
    }
    records.sort_by_key(|(seq, _, _)| *seq);
    let (lost, basis) = match (floor, last_seq) {
        (Some(floor), Some(last)) if floor <= last => {
            let lost: Vec<(u64, u64)> = covered.gaps(&(floor..=last)).map(|r| (*r.start(), *r.end())).collect();
            (Some(lost), format!("seqs {floor}..={last} (outbox floor to last seq) not covered by a restored record"))
        }
        (Some(_), Some(_)) => (Some(Vec::new()), "the outbox held nothing (floor above the last seq)".to_owned()),
        _ if table_complete => (None, "redb read the whole outbox table".to_owned()),
        (None, _) => (None, "unknown: the stream's outbox floor was not read back".to_owned()),
        (_, None) => (None, "unknown: the stream's last seq was not read back".to_owned()),
    };
    let lost_records = match &lost {
        Some(ranges) => Some(ranges.iter().map(|(from, to)| to - from + 1).sum()),
        None if table_complete => {
            usage.map(|u| u.get(stream.as_str()).copied().unwrap_or(0).saturating_sub(records.len() as u64))
        }
        None => None,
    };
    let basis = match (&lost, lost_records, table_complete) {
        (None, Some(_), true) => "records counted by the outbox accounting that redb did not read back".to_owned(),
        (None, None, true) => "unknown: the outbox accounting was not read back".to_owned(),
        _ => basis,
    };
    StreamOutbox {
        lost_records,
        report: StreamSalvage {
            stream,
            records: records.len() as u64,
            from_raw_bytes,
            recovered: covered.iter().map(|r| (*r.start(), *r.end())).collect(),
            stale,
            conflicting,
            lost,
            loss_basis: basis,
        },
        records,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use weir_record::{Record, RecordHeader, Span};

    fn record(seq: u64, dropped_through: Option<u64>, encoded_at: i64) -> Record {
        let header = RecordHeader { gateway: "gw".into(), stream: "s".into(), seq, encoded_at };
        let dropped = dropped_through.map(|last| {
            let mut span = Span::of_record(seq, 1, None, 0);
            span.merge(&Span::of_record(last, 1, None, 0));
            span
        });
        Record { header, batch: Batch::new(), aggregates: Vec::new(), windows: Vec::new(), coarsened: None, dropped }
    }

    fn candidate(record: Record, copies: u32) -> Candidate {
        (format!("{record:?}").into_bytes(), record, false, copies)
    }

    /// Stale copies below the floor are not restored, the newest, widest drop marker supersedes
    /// its older copy and the records it covers, a differing copy seen more often wins, and the
    /// loss is the seqs from the floor to the last seq that nothing covers.
    #[test]
    fn stale_superseded_and_lost_records_are_told_apart() {
        let mut by_seq: BTreeMap<u64, Vec<Candidate>> = BTreeMap::new();
        by_seq.insert(3, vec![candidate(record(3, None, 3), 1)]);
        by_seq.insert(5, vec![candidate(record(5, Some(6), 9), 1), candidate(record(5, Some(7), 10), 1)]);
        by_seq.insert(6, vec![candidate(record(6, None, 6), 2)]);
        by_seq.insert(8, vec![candidate(record(8, None, 8), 1), candidate(record(8, None, 99), 3)]);
        by_seq.insert(11, vec![candidate(record(11, None, 11), 1)]);
        by_seq.insert(14, vec![candidate(record(14, None, 14), 1)]);
        let bounds = Bounds { floor: Some(4), stale_below: Some(4), last_seq: Some(12) };
        let outbox = choose("s".into(), by_seq, bounds, false, None);
        let restored: Vec<(u64, i64)> = outbox.records.iter().map(|(seq, _, r)| (*seq, r.header.encoded_at)).collect();
        assert_eq!(restored, vec![(5, 10), (8, 99), (11, 11)]);
        assert_eq!(outbox.report.stale, 1);
        assert_eq!(outbox.report.conflicting, 0);
        assert_eq!(outbox.report.recovered, vec![(5, 8), (11, 11)]);
        assert_eq!(outbox.report.lost, Some(vec![(4, 4), (9, 10), (12, 12)]));
        assert_eq!(outbox.lost_records, Some(4));
    }

    /// Without a floor, nothing is stale and the loss is unknown.
    #[test]
    fn without_a_floor_the_loss_is_unknown() {
        let mut by_seq: BTreeMap<u64, Vec<Candidate>> = BTreeMap::new();
        by_seq.insert(3, vec![candidate(record(3, None, 3), 1), candidate(record(3, None, 4), 1)]);
        let bounds = Bounds { floor: None, stale_below: None, last_seq: Some(12) };
        let outbox = choose("s".into(), by_seq, bounds, false, None);
        assert_eq!(outbox.records.len(), 1);
        assert_eq!(outbox.report.conflicting, 1, "equally likely copies differ");
        assert_eq!((outbox.report.lost, outbox.lost_records), (None, None));
    }
}
