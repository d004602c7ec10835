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
//!
//! Where the parts live: opening, moving aside and writing what was recovered into the fresh
//! file here; the table-by-table copy in `copy`; the raw-byte scan in `scan`; choosing among
//! copies and working out the loss in `choose`; the report in `report`.

mod choose;
mod copy;
mod report;
mod scan;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{Database, TableDefinition, TableHandle};

pub use report::{Recovery, StreamSalvage, TableSalvage};

use super::outbox::Outbox;
use super::{
    CACHE_BYTES, COUNTERS, Counter, DEAD_LETTERS, FLEET, FUNCTION_STATE, OrStore, RECENT_DELIVERIES, SINK_POSITIONS,
    STREAM_SEQ, StoreError, create_tables, recount_dead_letter_bytes, recount_function_state_usage,
};
use copy::Salvaged;
pub(super) use report::recoveries;
use scan::Scanned;

/// Damaged files kept in `<data_dir>/damaged`, newest first; older ones are deleted.
pub const DAMAGED_KEPT: usize = 2;
/// Directory (inside the data dir) damaged files are moved to.
pub const DAMAGED_DIR: &str = "damaged";
/// Counter (gateway-wide): every stream's seqs continue above this after a recovery.
pub(super) const SEQ_FLOOR: &str = "seq_floor";
/// id → [`Recovery`] as JSON.
pub(super) const RECOVERIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("recoveries");

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
        let mut fleet = txn.open_table(FLEET).or_store("write recovered state")?;
        for (key, value) in &salvaged.fleet {
            fleet.insert(key.as_str(), value.as_slice()).or_store("write recovered state")?;
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
