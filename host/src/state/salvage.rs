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
//! **Invariants:**
//! - *never reuse a seq*: if the stream positions could not all be read back, a gateway-wide
//!   *seq floor* (the current time in microseconds since the Unix epoch) is stored; new seqs of
//!   every stream start above it, so no new record takes the id of one the central broker may
//!   already hold.
//! - *only whole records*: a salvaged outbox record is kept only if it decodes and names the
//!   stream and seq it is stored under; the others count as lost.
//! - *errors that are not damage are not treated as such*: a file another process holds, or one
//!   the OS refuses to read, is reported, never moved.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::{Deserialize, Serialize};

use super::outbox::{OUTBOX, OUTBOX_USAGE, Outbox, PUBLISH_RESERVATIONS, STREAM_COUNTERS};
use super::{
    CACHE_BYTES, COUNTERS, Counter, DEAD_LETTERS, FUNCTION_STATE, OrStore, RECENT_DELIVERIES, SINK_POSITIONS,
    STREAM_SEQ, StoreError, create_tables, recount_function_state_usage,
};
use crate::encode;

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
    /// Per stream: outbox records held before the damage that could not be recovered (from
    /// the outbox's own accounting; absent when that could not be read).
    pub outbox_records_lost: Vec<(String, u64)>,
    /// Whether the outbox accounting was readable (else records lost are unknown).
    pub outbox_loss_known: bool,
    /// The seq floor set because stream positions were lost.
    pub seq_floor: Option<u64>,
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

    let txn = db.begin_write().or_store("write recovered state")?;
    let mut recovery = Recovery {
        at: now,
        damaged_file: damaged.to_owned(),
        reason,
        tables: salvaged.tables.clone(),
        outbox_records_lost: Vec::new(),
        outbox_loss_known: salvaged.usage.is_some(),
        seq_floor: None,
    };
    {
        let mut state = txn.open_table(FUNCTION_STATE).or_store("write recovered state")?;
        for ((namespace, key), value) in &salvaged.function_state {
            state.insert((namespace.as_str(), key.as_slice()), value.as_slice()).or_store("write recovered state")?;
        }
        drop(state);
        recount_function_state_usage(&txn)?;
        let mut outbox = Outbox::open(&txn)?;
        let mut highest: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        let mut held: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for ((stream, seq), body, record) in &salvaged.outbox {
            outbox.restore(stream, *seq, body, record)?;
            let last = record.span().last_seq;
            highest.entry(stream).and_modify(|h| *h = (*h).max(last)).or_insert(last);
            *held.entry(stream).or_default() += 1;
        }
        for ((stream, from), through) in &salvaged.reservations {
            outbox.reserve(stream, *from..=*through)?;
        }
        for ((stream, counter), value) in &salvaged.stream_counters {
            if let Some(counter) = Counter::ALL.iter().find(|c| c.name() == counter) {
                outbox.count(stream, *counter, *value)?;
            }
        }
        if let Some(usage) = &salvaged.usage {
            for (stream, records) in usage {
                let lost = records.saturating_sub(held.get(stream.as_str()).copied().unwrap_or(0));
                if lost > 0 {
                    outbox.count(stream, Counter::RecordsUnrecovered, lost)?;
                    recovery.outbox_records_lost.push((stream.clone(), lost));
                }
            }
        }
        let mut seqs = txn.open_table(STREAM_SEQ).or_store("write recovered state")?;
        for (stream, seq) in &salvaged.stream_seq {
            let seq = (*seq).max(highest.get(stream.as_str()).copied().unwrap_or(0));
            seqs.insert(stream.as_str(), seq).or_store("write recovered state")?;
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
    txn.commit().or_store("write recovered state")?;
    tracing::error!(stage = "state", damaged_file = %recovery.damaged_file.display(),
        salvaged = ?recovery.tables.iter().map(|t| (t.table.as_str(), t.salvaged, t.complete)).collect::<Vec<_>>(),
        outbox_records_lost = ?recovery.outbox_records_lost, outbox_loss_known = recovery.outbox_loss_known,
        seq_floor = recovery.seq_floor, "recovered from a damaged state database; ingesting again");
    Ok(recovery)
}

/// (namespace, key) of a function state entry.
type StateKey = (String, Vec<u8>);

/// Entries read back from a damaged file.
#[derive(Default)]
struct Salvaged {
    tables: Vec<TableSalvage>,
    function_state: Vec<(StateKey, Vec<u8>)>,
    outbox: Vec<((String, u64), Vec<u8>, encode::Record)>,
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
        self.outbox = self.table(source, OUTBOX, |(stream, seq), body| {
            let record = encode::decode(body).ok()?;
            (record.header.stream == stream && record.header.seq == seq)
                .then(|| ((stream.to_owned(), seq), body.to_vec(), record))
        });
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
