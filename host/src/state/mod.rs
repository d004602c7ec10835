//! State: the data directory's redb database — function state, dead letters, the outbox and
//! stream sequence numbers — and its single writer.
//!
//! **Boundary:** this is the only module that imports redb.
//!
//! **Invariant (one writer):** every write goes through the [`Committer`], a dedicated thread that
//! owns all write transactions. It takes every [`ChangeSet`] waiting in its queue, applies them in
//! arrival order in *one* write transaction and commits once (group commit), then answers each
//! sender. A change set is therefore all-or-nothing: the function state written while processing a
//! batch, the batch's outbox record, its dead letters and its stream position become durable
//! together or not at all. Callers acknowledge input upstream, and the sink publishes a record,
//! only once the commit is *durable* ([`Applied::is_durable`]): under `durability = "sync"` every
//! group is; under `relaxed` a group committed while more work waits is left without an fsync and
//! made durable by a following group (at the latest [`RELAXED_SYNC_INTERVAL`] later, at once when
//! the queue is empty), so a crash can undo only what never left the process.
//!
//! Reads ([`StateStore`]) use redb's MVCC snapshots and never block the writer.
//!
//! On-disk layout (`<data_dir>/weir.redb`), all tables created at open:
//!
//! | table                  | key                    | value                                        |
//! |------------------------|------------------------|----------------------------------------------|
//! | `function_state`       | (namespace, key bytes) | value bytes                                  |
//! | `function_state_usage` | namespace              | key and value bytes held (checked against `state_quota`; recounted at open) |
//! | `outbox`               | (stream, seq)          | record body (see `encode`)                   |
//! | `outbox_summaries`     | (stream, seq)          | kind, width, bytes, last seq of coarsened records and drop markers |
//! | `outbox_usage`         | stream                 | (records, bytes) held                        |
//! | `publish_reservations` | (stream, first seq)    | last seq of a range the sink may be publishing |
//! | `stream_seq`           | stream                 | highest seq ever assigned                    |
//! | `stream_counters`      | (stream, counter)      | u64 (see [`Counter`])                        |
//! | `dead_letters`         | id (monotonic)         | [`DeadLetter`] as CBOR; bounded by count and bytes, payloads over 64 KiB kept as a prefix |
//! | `counters`             | name                   | u64 (gateway-wide bookkeeping: dead-letter ids, bytes and evictions, delivery order, sink record limits, outbox floors) |
//! | `recent_deliveries`    | (source, commit order) | identity of a committed delivery (see [`DeliveryRecord`]) |
//! | `sink_positions`       | stream                 | the central broker's position of the stream's last confirmed record |
//! | `recoveries`           | id                     | report of a recovery from a damaged file, JSON (see `salvage`) |
//!
//! The outbox's accounting, reservations and full-outbox policies live in `outbox`; opening a
//! damaged file in `salvage`; what `weir outbox stats` reads in `stats`; reading the file from
//! another process without changing it (also after a crash) in `inspect`.

mod counter;
mod dead_letter;
pub mod inspect;
mod outbox;
mod salvage;
pub mod stats;

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability as RedbDurability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use tokio::sync::{oneshot, watch};

pub use counter::Counter;
pub use dead_letter::{DeadLetter, DeadLetterContent, DeadLetterStage, PAYLOAD_PREFIX as DEAD_LETTER_PAYLOAD_PREFIX};
pub use outbox::{OutboxLimits, Usage};
pub use salvage::{DAMAGED_DIR, DAMAGED_KEPT, Recovery, TableSalvage};

use crate::config::Durability;
use outbox::{OUTBOX, OUTBOX_SUMMARIES, OUTBOX_USAGE, Outbox, PUBLISH_RESERVATIONS, STREAM_COUNTERS};

const FUNCTION_STATE: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("function_state");
/// Per namespace, the bytes (keys and values) its function state holds; kept in the same
/// transactions as `function_state`, and recounted at every open.
const FUNCTION_STATE_USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("function_state_usage");
const STREAM_SEQ: TableDefinition<'_, &str, u64> = TableDefinition::new("stream_seq");
const DEAD_LETTERS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("dead_letters");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
const RECENT_DELIVERIES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("recent_deliveries");
const SINK_POSITIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("sink_positions");

/// Counter: dead letters removed to respect the capacity.
pub const DEAD_LETTERS_EVICTED: &str = "dead_letters_evicted";
/// Counter: id the next dead letter gets.
const DEAD_LETTERS_NEXT_ID: &str = "dead_letters_next_id";
/// Counter: bytes the kept dead letters take (their stored form); recounted at every open.
const DEAD_LETTERS_BYTES: &str = "dead_letters_bytes";

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "weir.redb";
/// Page cache of the database. Gateways are small; the hot set (recent outbox pages, state) is too.
const CACHE_BYTES: usize = 32 * 1024 * 1024;
/// Change sets taken into one transaction at most.
const MAX_GROUP: usize = 256;
/// In `relaxed` mode, the longest time a commit stays non-durable while the committer is busy
/// (when it is idle, it makes every commit durable at once).
const RELAXED_SYNC_INTERVAL: Duration = Duration::from_millis(200);
/// Exit status of a process whose `relaxed` store lost commits it had not made durable yet
/// (nothing acknowledged was lost: acknowledgements wait for durability).
pub const EXIT_DURABILITY_LOST: i32 = 75;
/// How long a reopening committer waits for readers to let go of the database.
const REOPEN_WAIT: Duration = Duration::from_secs(2);
/// Change sets waiting for the committer at most.
const QUEUE: usize = 1024;

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error("data dir {path} is in use by another weir process (only one may open it)")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The data directory cannot be created or read.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// redb reported an error.
    #[error("state database {operation} failed: {source}")]
    Database {
        /// What was being done.
        operation: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A stored value could not be decoded.
    #[error("stored {what} is unreadable: {reason}")]
    Unreadable {
        /// Which kind of entry.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The commit of a change set failed; nothing of it was applied.
    #[error("commit failed: {reason}")]
    CommitFailed {
        /// Why.
        reason: String,
    },
    /// The change set's records do not fit in their stream's outbox and its policy could not
    /// make room (`block`, or nothing left to coarsen or drop); nothing of it was applied.
    #[error("the outbox of {stream} is full ({max_bytes} bytes)")]
    OutboxFull {
        /// The stream.
        stream: String,
        /// Its cap.
        max_bytes: u64,
    },
    /// The committer thread is gone (the store is shutting down or crashed).
    #[error("the state committer has stopped")]
    CommitterStopped,
    /// The database is being reopened after a failed commit (a full disk, an I/O error).
    #[error("the state database is being reopened after a failed commit")]
    Reopening,
}

fn db_error(operation: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Database { operation, source: Box::new(source) }
}

/// Shorthand: convert any redb error type into [`StoreError`].
trait OrStore<T> {
    fn or_store(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrStore<T> for Result<T, E> {
    fn or_store(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| db_error(operation)(e.into()))
    }
}

/// One write to a function's state namespace; `value: None` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// The namespace (`<pipeline>/<operator name>`).
    pub namespace: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// A record for the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Its stream (pipeline name).
    pub stream: String,
    /// Its position in the stream; must be above every seq assigned before.
    pub seq: u64,
    /// The encoded record body.
    pub body: Vec<u8>,
}

/// Everything one unit of work changes, committed atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Function state writes, applied in order.
    pub state_writes: Vec<StateWrite>,
    /// Records to append to the outbox.
    pub records: Vec<OutboxRecord>,
    /// Records the central broker confirmed: removed from the outbox.
    pub confirmed: Vec<(String, u64)>,
    /// Per stream, the central broker's position (JetStream stream sequence) of the last
    /// confirmed record; kept as the highest ever given.
    pub sink_positions: Vec<(String, u64)>,
    /// Dead letters to keep.
    pub dead_letters: Vec<DeadLetter>,
    /// Identities of the deliveries this change set consumed (source positions).
    pub deliveries: Vec<DeliveryRecord>,
    /// Per stream, the largest record its sink's broker accepts, as it last announced it.
    pub sink_record_limits: Vec<(String, u64)>,
    /// Seqs the sink is about to publish: from now on they are never coarsened or dropped.
    pub reservations: Vec<(String, RangeInclusive<u64>)>,
    /// Counter increments.
    pub counts: Vec<(String, Counter, u64)>,
    /// Set by the committer on a change set it hands back because an outbox was full, so that
    /// retrying it does not count as another refusal.
    pub refused_before: bool,
}

/// The identity of a delivery whose derived data this change set commits.
///
/// After a crash between a commit and the acknowledgements that follow it, the broker delivers
/// the same messages again; the source recognises them by these identities and acknowledges them
/// without processing them twice. Only the newest `window` identities per source are kept: what
/// comes back is what was committed but not acknowledged — the acknowledgements queued or in the
/// connection when it failed — so the sources choose a window well above that (MQTT: at least
/// 32 768, see `source::mqtt`). An MQTT identity includes a digest of topic and payload, so a
/// recycled packet id is not mistaken for an older delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The source (`mqtt/<client id>`, `jetstream/<stream>/<consumer>`).
    pub source: String,
    /// Protocol-specific identity bytes.
    pub identity: Vec<u8>,
    /// How many of the newest identities of this source to keep.
    pub window: u32,
}

impl ChangeSet {
    /// True when committing would change nothing.
    pub fn is_empty(&self) -> bool {
        self.state_writes.is_empty()
            && self.records.is_empty()
            && self.confirmed.is_empty()
            && self.sink_positions.is_empty()
            && self.sink_record_limits.is_empty()
            && self.dead_letters.is_empty()
            && self.deliveries.is_empty()
            && self.reservations.is_empty()
            && self.counts.is_empty()
    }
}

/// Key/value entries of a function's state.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The open database, shared by readers and the committer. The committer replaces it when it
/// reopens the file after a failed commit (redb refuses every transaction after an I/O error
/// until the database is closed and opened again); meanwhile a read waits up to
/// [`REOPEN_WAIT`] for it and then fails with [`StoreError::Reopening`], which its caller retries.
#[derive(Debug, Default)]
struct DatabaseSlot {
    db: std::sync::Mutex<Option<Arc<Database>>>,
    reopened: std::sync::Condvar,
}

impl DatabaseSlot {
    fn new(db: Database) -> Self {
        Self { db: std::sync::Mutex::new(Some(Arc::new(db))), reopened: std::sync::Condvar::new() }
    }

    /// The database, waiting a while if it is being reopened.
    fn get(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (slot, _) = self
            .reopened
            .wait_timeout_while(slot, REOPEN_WAIT, |db| db.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.clone().ok_or(StoreError::Reopening)
    }

    /// The database as it is now, without waiting.
    fn current(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Takes the database out (readers wait from now on).
    fn take(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn put(&self, db: Database) {
        *self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(db));
        self.reopened.notify_all();
    }
}

/// Read access to the store. Cheap to clone; reads see the latest committed state.
#[derive(Clone, Debug)]
pub struct StateStore {
    db: Arc<DatabaseSlot>,
    path: PathBuf,
    /// Write transactions committed since open (one per group).
    groups: Arc<std::sync::atomic::AtomicU64>,
}

/// Settings of the store.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How commits reach the disk.
    pub durability: Durability,
    /// Dead letters kept.
    pub dead_letter_capacity: u64,
    /// Bytes the kept dead letters may take (their stored form).
    pub dead_letter_max_bytes: u64,
    /// Per stream, the outbox's cap and policy (streams not listed are unbounded).
    pub outboxes: HashMap<String, OutboxLimits>,
}

impl Default for StoreOptions {
    /// Durable commits, 10 000 dead letters in at most 32 MiB, unbounded outboxes.
    fn default() -> Self {
        Self {
            durability: Durability::Sync,
            dead_letter_capacity: 10_000,
            dead_letter_max_bytes: 32 * 1024 * 1024,
            outboxes: HashMap::new(),
        }
    }
}

/// Hands change sets to the committer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Committer {
    queue: flume::Sender<Request>,
    /// The newest group (write transaction) known to be durable.
    durable: watch::Receiver<u64>,
}

impl Committer {
    /// Commits `changes` (grouped with whatever else is waiting) and returns once they are
    /// durable: at once under `sync`, after the next durable flush under `relaxed`.
    ///
    /// On failure nothing of `changes` was applied, and they come back with the error so the
    /// caller can retry without having kept a copy.
    pub async fn commit(&self, changes: ChangeSet) -> Result<(), CommitError> {
        let applied = self.commit_applied(changes).await?;
        applied.durable().await.map_err(|error| CommitError { error, changes: ChangeSet::default() })
    }

    /// Commits `changes` and returns as soon as they are applied — visible to readers and to
    /// later change sets — with a handle that tells when they are durable. Under `sync` they
    /// already are; under `relaxed` a crash before the next durable flush undoes them, so
    /// nothing that depends on them may leave the process (an acknowledgement upstream, a
    /// publish) before [`Applied::is_durable`].
    pub async fn commit_applied(&self, changes: ChangeSet) -> Result<Applied, CommitError> {
        let (reply, answer) = oneshot::channel();
        if let Err(flume::SendError((changes, _))) = self.queue.send_async((changes, reply)).await {
            return Err(CommitError { error: StoreError::CommitterStopped, changes });
        }
        match answer.await {
            Ok(Ok(group)) => Ok(Applied { group, durable: self.durable.clone() }),
            Ok(Err((Refusal::Failed(reason), changes))) => {
                Err(CommitError { error: StoreError::CommitFailed { reason }, changes })
            }
            Ok(Err((Refusal::Full { stream, max_bytes }, changes))) => {
                Err(CommitError { error: StoreError::OutboxFull { stream, max_bytes }, changes })
            }
            Err(_) => Err(CommitError { error: StoreError::CommitterStopped, changes: ChangeSet::default() }),
        }
    }

    /// The newest group known to be durable; changes whenever a durable commit completes.
    pub fn durable_groups(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }
}

/// A change set applied by the committer, in write transaction (group) `group`.
#[derive(Clone, Debug)]
pub struct Applied {
    group: u64,
    durable: watch::Receiver<u64>,
}

impl Applied {
    /// The write transaction that applied it.
    pub fn group(&self) -> u64 {
        self.group
    }

    /// True once a durable commit covers it.
    pub fn is_durable(&self) -> bool {
        *self.durable.borrow() >= self.group
    }

    /// Waits until a durable commit covers it.
    pub async fn durable(mut self) -> Result<(), StoreError> {
        let group = self.group;
        self.durable.wait_for(|durable| *durable >= group).await.map(|_| ()).map_err(|_| StoreError::CommitterStopped)
    }
}

/// A commit that did not happen, with the change set that was not applied.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CommitError {
    /// Why.
    pub error: StoreError,
    /// The changes, unapplied (empty when the committer vanished while holding them).
    pub changes: ChangeSet,
}

/// Opens (or creates) the database in `data_dir` and starts its committer thread.
///
/// The thread ends when every [`Committer`] clone is dropped; join the handle to know that the last
/// commit finished.
pub fn open(data_dir: &Path, options: StoreOptions) -> Result<(StateStore, Committer, JoinHandle<()>), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
    let path = data_dir.join(DATABASE_FILE);
    let (db, _recovery) = salvage::open_database(&path)?;

    let db = Arc::new(DatabaseSlot::new(db));
    let (queue, requests) = flume::bounded(QUEUE);
    let groups = Arc::default();
    let (durable_tx, durable) = watch::channel(0);
    let writer = Writer {
        db: Arc::clone(&db),
        path: path.clone(),
        groups: Arc::clone(&groups),
        options,
        last_durable: Instant::now(),
        pending_non_durable: false,
        durable: durable_tx,
    };
    let thread = std::thread::Builder::new()
        .name("weir-committer".into())
        .spawn(move || writer.run(requests))
        .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
    Ok((StateStore { db, path, groups }, Committer { queue, durable }, thread))
}

/// Creates every table that does not exist yet, and brings the outbox's usage to the current
/// way of counting it (files written by an earlier weir counted encoded bytes).
fn create_tables(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().or_store("create tables")?;
    {
        txn.open_table(FUNCTION_STATE).or_store("create tables")?;
        txn.open_table(FUNCTION_STATE_USAGE).or_store("create tables")?;
        txn.open_table(OUTBOX).or_store("create tables")?;
        txn.open_table(OUTBOX_SUMMARIES).or_store("create tables")?;
        txn.open_table(OUTBOX_USAGE).or_store("create tables")?;
        txn.open_table(PUBLISH_RESERVATIONS).or_store("create tables")?;
        txn.open_table(STREAM_COUNTERS).or_store("create tables")?;
        txn.open_table(STREAM_SEQ).or_store("create tables")?;
        txn.open_table(DEAD_LETTERS).or_store("create tables")?;
        txn.open_table(COUNTERS).or_store("create tables")?;
        txn.open_table(RECENT_DELIVERIES).or_store("create tables")?;
        txn.open_table(SINK_POSITIONS).or_store("create tables")?;
        txn.open_table(salvage::RECOVERIES).or_store("create tables")?;
        let mut counters = txn.open_table(COUNTERS).or_store("create tables")?;
        outbox::recount_usage_if_stale(&txn, &mut counters)?;
        recount_function_state_usage(&txn)?;
    }
    recount_dead_letter_bytes(&txn)?;
    txn.commit().or_store("create tables")
}

/// Counts the bytes each namespace's function state holds, from scratch: whatever the file
/// held before (an earlier weir kept no count; a salvaged file may have lost entries).
fn recount_function_state_usage(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let state = txn.open_table(FUNCTION_STATE).or_store("count function state")?;
    let mut usage: HashMap<String, u64> = HashMap::new();
    for entry in state.iter().or_store("count function state")? {
        let (key, value) = entry.or_store("count function state")?;
        let (namespace, key) = key.value();
        *usage.entry(namespace.to_owned()).or_default() += state_entry_bytes(key, value.value());
    }
    let mut table = txn.open_table(FUNCTION_STATE_USAGE).or_store("count function state")?;
    table.retain(|_, _| false).or_store("count function state")?;
    for (namespace, bytes) in usage {
        table.insert(namespace.as_str(), bytes).or_store("count function state")?;
    }
    Ok(())
}

/// The `counters` entry holding a stream's sink record limit.
fn sink_record_limit_key(stream: &str) -> String {
    format!("sink_record_limit/{stream}")
}

/// Counter key: the stream's *outbox floor*, the lowest seq its outbox may still hold. Every
/// seq below it has left the outbox (confirmed); set when the stream's first record is
/// appended and raised after confirmations. Salvage uses it to tell stale copies of confirmed
/// records from lost ones.
fn outbox_floor_key(stream: &str) -> String {
    format!("outbox_floor/{stream}")
}

/// Adds `by` to a gateway-wide counter.
fn add_to_counter(counters: &mut redb::Table<'_, &str, u64>, name: &str, by: u64) -> Result<(), StoreError> {
    let value = counters.get(name).or_store("write counters")?.map_or(0, |v| v.value());
    counters.insert(name, value.saturating_add(by)).or_store("write counters")?;
    Ok(())
}

/// Counts the bytes the dead letters take, from scratch (an earlier weir kept no count; a
/// salvaged file may have lost entries).
fn recount_dead_letter_bytes(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let letters = txn.open_table(DEAD_LETTERS).or_store("count dead letters")?;
    let mut bytes = 0;
    for entry in letters.iter().or_store("count dead letters")? {
        bytes += entry.or_store("count dead letters")?.1.value().len() as u64;
    }
    txn.open_table(COUNTERS)
        .or_store("count dead letters")?
        .insert(DEAD_LETTERS_BYTES, bytes)
        .or_store("count dead letters")?;
    Ok(())
}

/// What a function state entry counts against its namespace's quota: its key and value bytes.
pub fn state_entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl StateStore {
    /// An empty store held in memory, with no committer: for starting function instances where
    /// no data directory may be touched (`weir check` calls every use's `init` with it). Nothing
    /// is ever written to it.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .or_store("create an in-memory store")?;
        create_tables(&db)?;
        Ok(Self { db: Arc::new(DatabaseSlot::new(db)), path: PathBuf::from("<memory>"), groups: Arc::default() })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value of `key` in `namespace`.
    pub fn function_state_get(&self, namespace: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read function state")?;
        let table = txn.open_table(FUNCTION_STATE).or_store("read function state")?;
        Ok(table.get((namespace, key)).or_store("read function state")?.map(|v| v.value().to_vec()))
    }

    /// The bytes (keys and values) `namespace`'s committed function state holds.
    pub fn function_state_usage(&self, namespace: &str) -> Result<u64, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read function state")?;
        let table = txn.open_table(FUNCTION_STATE_USAGE).or_store("read function state")?;
        Ok(table.get(namespace).or_store("read function state")?.map_or(0, |v| v.value()))
    }

    /// Up to `limit` entries of `namespace` with `start <= key < end`, ascending.
    pub fn function_state_range(
        &self,
        namespace: &str,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read function state")?;
        let table = txn.open_table(FUNCTION_STATE).or_store("read function state")?;
        let range = match end {
            Some(end) => table.range((namespace, start)..(namespace, end)),
            // Every key of this namespace: up to the first key of the next possible namespace.
            None => table.range((namespace, start)..),
        }
        .or_store("read function state")?;
        let mut entries = Vec::new();
        for entry in range {
            let (key, value) = entry.or_store("read function state")?;
            let (entry_namespace, entry_key) = key.value();
            if entry_namespace != namespace || entries.len() == limit {
                break;
            }
            entries.push((entry_key.to_vec(), value.value().to_vec()));
        }
        Ok(entries)
    }

    /// Highest seq ever assigned in `stream` (0 when none), or the seq floor a recovery set
    /// if that is higher (see `salvage`).
    pub fn last_seq(&self, stream: &str) -> Result<u64, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read stream position")?;
        let table = txn.open_table(STREAM_SEQ).or_store("read stream position")?;
        let last = table.get(stream).or_store("read stream position")?.map_or(0, |v| v.value());
        let counters = txn.open_table(COUNTERS).or_store("read stream position")?;
        let floor = counters.get(salvage::SEQ_FLOOR).or_store("read stream position")?.map_or(0, |v| v.value());
        Ok(last.max(floor))
    }

    /// Write transactions (groups of change sets) committed since the store was opened.
    pub fn commit_groups(&self) -> u64 {
        self.groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Outbox depth, bytes, oldest age and counters of every stream, and more (see [`stats`]).
    pub fn stats(&self) -> Result<stats::Stats, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read stats")?;
        stats::collect(&txn)
    }

    /// Recoveries from damaged database files, oldest first.
    pub fn recoveries(&self) -> Result<Vec<Recovery>, StoreError> {
        salvage::recoveries(&self.db.get()?.begin_read().or_store("read recoveries")?)
    }

    /// Up to `limit` outbox records of `stream` with seq above `after`, in seq order.
    pub fn outbox_after(&self, stream: &str, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read outbox")?;
        let table = txn.open_table(OUTBOX).or_store("read outbox")?;
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        table
            .range((stream, first)..=(stream, u64::MAX))
            .or_store("read outbox")?
            .take(limit)
            .map(|entry| {
                let (key, value) = entry.or_store("read outbox")?;
                Ok((key.value().1, value.value().to_vec()))
            })
            .collect()
    }

    /// Number of outbox records of `stream`.
    pub fn outbox_len(&self, stream: &str) -> Result<u64, StoreError> {
        Ok(self.outbox_usage(stream)?.records)
    }

    /// Records and bytes in `stream`'s outbox.
    pub fn outbox_usage(&self, stream: &str) -> Result<Usage, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read outbox")?;
        let table = txn.open_table(OUTBOX_USAGE).or_store("read outbox")?;
        Ok(table
            .get(stream)
            .or_store("read outbox")?
            .map_or(Usage::default(), |v| Usage { records: v.value().0, bytes: v.value().1 }))
    }

    /// The value of a stream's counter.
    pub fn counter(&self, stream: &str, counter: Counter) -> Result<u64, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read counters")?;
        let table = txn.open_table(STREAM_COUNTERS).or_store("read counters")?;
        Ok(table.get((stream, counter.name())).or_store("read counters")?.map_or(0, |v| v.value()))
    }

    /// The seqs of `stream` its sink reserved for publishing.
    pub fn reservations(&self, stream: &str) -> Result<Vec<RangeInclusive<u64>>, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read reservations")?;
        let table = txn.open_table(PUBLISH_RESERVATIONS).or_store("read reservations")?;
        let mut ranges = Vec::new();
        for entry in table.range((stream, 0)..=(stream, u64::MAX)).or_store("read reservations")? {
            let (from, through) = entry.or_store("read reservations")?;
            ranges.push(from.value().1..=through.value());
        }
        Ok(ranges)
    }

    /// The newest `limit` dead letters, oldest first, with their ids.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        newest_dead_letters(&self.db.get()?.begin_read().or_store("read dead letters")?, limit)
    }

    /// The central broker's position of `stream`'s last confirmed record (0: none known).
    pub fn sink_position(&self, stream: &str) -> Result<u64, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read sink position")?;
        let table = txn.open_table(SINK_POSITIONS).or_store("read sink position")?;
        Ok(table.get(stream).or_store("read sink position")?.map_or(0, |v| v.value()))
    }

    /// The largest record `stream`'s sink can publish, as its broker last announced it.
    pub fn sink_record_limit(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read counters")?;
        let table = txn.open_table(COUNTERS).or_store("read counters")?;
        Ok(table.get(sink_record_limit_key(stream).as_str()).or_store("read counters")?.map(|v| v.value()))
    }

    /// Identities of the newest committed deliveries of `source`.
    pub fn recent_deliveries(&self, source: &str) -> Result<std::collections::HashSet<Vec<u8>>, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read recent deliveries")?;
        let table = txn.open_table(RECENT_DELIVERIES).or_store("read recent deliveries")?;
        let mut identities = std::collections::HashSet::new();
        for entry in table.range((source, 0)..=(source, u64::MAX)).or_store("read recent deliveries")? {
            let (_, identity) = entry.or_store("read recent deliveries")?;
            identities.insert(identity.value().to_vec());
        }
        Ok(identities)
    }

    /// Number of dead letters kept, and number evicted to respect the capacity.
    pub fn dead_letter_counts(&self) -> Result<(u64, u64), StoreError> {
        dead_letter_counts(&self.db.get()?.begin_read().or_store("read dead letters")?)
    }
}

/// The newest `limit` dead letters with their ids, oldest first.
fn newest_dead_letters(txn: &redb::ReadTransaction, limit: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
    let table = txn.open_table(DEAD_LETTERS).or_store("read dead letters")?;
    let mut newest = Vec::new();
    for entry in table.iter().or_store("read dead letters")?.rev().take(limit) {
        let (id, bytes) = entry.or_store("read dead letters")?;
        newest.push((id.value(), DeadLetter::from_bytes(bytes.value())?));
    }
    newest.reverse();
    Ok(newest)
}

/// Dead letters kept and evicted.
fn dead_letter_counts(txn: &redb::ReadTransaction) -> Result<(u64, u64), StoreError> {
    let kept = txn.open_table(DEAD_LETTERS).or_store("read dead letters")?.len().or_store("read dead letters")?;
    let counters = txn.open_table(COUNTERS).or_store("read counters")?;
    let evicted = counters.get(DEAD_LETTERS_EVICTED).or_store("read counters")?.map_or(0, |v| v.value());
    Ok((kept, evicted))
}

/// The committer thread's state.
struct Writer {
    db: Arc<DatabaseSlot>,
    /// The database file, to reopen after a failed commit.
    path: PathBuf,
    groups: Arc<std::sync::atomic::AtomicU64>,
    options: StoreOptions,
    last_durable: Instant,
    /// A non-durable commit happened since the last durable one.
    pending_non_durable: bool,
    /// The newest group made durable, for those waiting on it.
    durable: watch::Sender<u64>,
}

/// Why the committer did not apply a change set.
#[derive(Clone, Debug)]
enum Refusal {
    /// The transaction failed.
    Failed(String),
    /// The change set's records did not fit in this stream's outbox.
    Full { stream: String, max_bytes: u64 },
}

/// A change set and where to answer: the group that applied it, or why it was not applied.
type Request = (ChangeSet, oneshot::Sender<Result<u64, (Refusal, ChangeSet)>>);

impl Writer {
    #[allow(clippy::needless_pass_by_value)] // the thread owns its end of the queue
    fn run(mut self, requests: flume::Receiver<Request>) {
        loop {
            // Under `relaxed`, a non-durable commit is made durable at the latest when the
            // interval has passed, even if nothing else arrives.
            let wait = if self.pending_non_durable {
                RELAXED_SYNC_INTERVAL.saturating_sub(self.last_durable.elapsed())
            } else {
                Duration::from_secs(3600)
            };
            let first = match requests.recv_timeout(wait) {
                Ok(request) => request,
                Err(flume::RecvTimeoutError::Timeout) => {
                    self.flush_if_relaxed();
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match requests.try_recv() {
                    Ok(request) => group.push(request),
                    Err(_) => break,
                }
            }
            // Under `relaxed`, a group is left non-durable only while more work is already
            // waiting (the next group's durable commit will cover it) and the interval allows.
            let durable = match self.options.durability {
                Durability::Sync => true,
                Durability::Relaxed => requests.is_empty() || self.last_durable.elapsed() >= RELAXED_SYNC_INTERVAL,
            };
            let (changes, replies): (Vec<ChangeSet>, Vec<_>) = group.into_iter().unzip();
            let outcomes: Vec<Result<u64, Refusal>> = match self.apply(&changes, durable) {
                Ok((group, refused)) => refused.into_iter().map(|r| r.map_or(Ok(group), Err)).collect(),
                Err(e) => {
                    tracing::error!(stage = "state", error = %e, change_sets = changes.len(), "commit failed");
                    self.abort_if_undone();
                    self.reopen();
                    vec![Err(Refusal::Failed(e.to_string())); changes.len()]
                }
            };
            // A sender that stopped waiting (shutdown) does not need the answer.
            for ((mut changes, reply), outcome) in changes.into_iter().zip(replies).zip(outcomes) {
                if let Err(Refusal::Full { .. }) = outcome {
                    changes.refused_before = true;
                }
                let _ = reply.send(outcome.map_err(|refusal| (refusal, changes)));
            }
        }
        self.flush_if_relaxed();
    }

    /// In relaxed mode, makes earlier non-durable commits durable with an empty durable commit.
    fn flush_if_relaxed(&mut self) {
        if self.pending_non_durable
            && let Err(e) = self.apply(&[], true)
        {
            tracing::error!(stage = "state", error = %e, "durable flush failed");
            self.abort_if_undone();
        }
    }

    /// After a failed commit: closes the database and opens it again, which is the only way on
    /// after an I/O error — redb refuses every later transaction until then — and brings it back
    /// to its last durable commit. If the file cannot be opened yet (the disk is still full),
    /// the next commit tries again; senders retry theirs with backoff, so the pipelines resume
    /// by themselves once the cause is gone. Readers see [`StoreError::Reopening`] meanwhile.
    fn reopen(&mut self) {
        if let Some(old) = self.db.take() {
            // Readers hold the database only for one read; give them a moment to finish, or the
            // file stays locked (then the next attempt opens it).
            let deadline = Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        match salvage::reopen(&self.path) {
            Ok(db) => {
                tracing::warn!(stage = "state", file = %self.path.display(), "state database reopened after a failed commit");
                self.db.put(db);
            }
            Err(e) => {
                tracing::error!(stage = "state", file = %self.path.display(), error = %e,
                    "cannot reopen the state database yet; trying again at the next commit");
            }
        }
    }

    /// After a failed commit under `relaxed`: commits that were applied but not yet durable may
    /// be undone, while the pipelines that made them have moved on (their seqs, their state).
    /// Nothing that depends on them was acknowledged or published, so the safe way on is a
    /// restart from the last durable state: the brokers deliver that input again.
    fn abort_if_undone(&self) {
        if self.pending_non_durable {
            tracing::error!(
                stage = "state",
                "a commit failed while earlier commits were not durable yet (durability = \"relaxed\"); \
                 exiting so that a restart resumes from the last durable state (nothing acknowledged is lost)"
            );
            std::process::exit(EXIT_DURABILITY_LOST);
        }
    }

    /// Applies every change set in one transaction, except those whose records do not fit in
    /// their outbox: those are left out entirely, and their refusal is returned in their place.
    /// Returns the number of the group (write transaction) that applied them.
    fn apply(&mut self, changes: &[ChangeSet], durable: bool) -> Result<(u64, Vec<Option<Refusal>>), StoreError> {
        let db = self.db.current().ok_or(StoreError::Reopening)?;
        let mut txn = db.begin_write().or_store("begin commit")?;
        txn.set_durability(if durable { RedbDurability::Immediate } else { RedbDurability::None })
            .or_store("begin commit")?;
        let now = crate::telemetry::now_nanos();
        let mut refused = Vec::with_capacity(changes.len());
        {
            let mut state = txn.open_table(FUNCTION_STATE).or_store("write function state")?;
            let mut state_usage = txn.open_table(FUNCTION_STATE_USAGE).or_store("write function state")?;
            let mut outbox = Outbox::open(&txn)?;
            let mut stream_seq = txn.open_table(STREAM_SEQ).or_store("write stream position")?;
            let mut dead_letters = txn.open_table(DEAD_LETTERS).or_store("write dead letters")?;
            let mut counters = txn.open_table(COUNTERS).or_store("write counters")?;
            let mut recent = txn.open_table(RECENT_DELIVERIES).or_store("write recent deliveries")?;
            let mut positions = txn.open_table(SINK_POSITIONS).or_store("write sink position")?;
            for change in changes {
                if let Some(refusal) = self.make_room(&mut outbox, change, now)? {
                    refused.push(Some(refusal));
                    continue;
                }
                refused.push(None);
                for write in &change.state_writes {
                    let key = (write.namespace.as_str(), write.key.as_slice());
                    let previous = match &write.value {
                        Some(value) => state.insert(key, value.as_slice()).or_store("write function state")?,
                        None => state.remove(key).or_store("write function state")?,
                    };
                    let removed = previous.map_or(0, |old| state_entry_bytes(&write.key, old.value()));
                    let added = write.value.as_deref().map_or(0, |value| state_entry_bytes(&write.key, value));
                    if added != removed {
                        let namespace = write.namespace.as_str();
                        let held =
                            state_usage.get(namespace).or_store("write function state")?.map_or(0, |v| v.value());
                        let held = (held + added).saturating_sub(removed);
                        if held == 0 {
                            state_usage.remove(namespace).or_store("write function state")?;
                        } else {
                            state_usage.insert(namespace, held).or_store("write function state")?;
                        }
                    }
                }
                for (stream, seqs) in &change.reservations {
                    outbox.reserve(stream, seqs.clone())?;
                }
                for record in &change.records {
                    outbox.append(&record.stream, record.seq, &record.body)?;
                    let previous = stream_seq
                        .get(record.stream.as_str())
                        .or_store("write stream position")?
                        .map_or(0, |v| v.value());
                    if record.seq > previous {
                        stream_seq.insert(record.stream.as_str(), record.seq).or_store("write stream position")?;
                    }
                    if previous == 0 {
                        let floor = outbox_floor_key(&record.stream);
                        if counters.get(floor.as_str()).or_store("read counters")?.is_none() {
                            counters.insert(floor.as_str(), record.seq).or_store("write counters")?;
                        }
                    }
                }
                let mut confirmed_streams: Vec<&str> = Vec::new();
                for (stream, seq) in &change.confirmed {
                    outbox.remove(stream, *seq)?;
                    if !confirmed_streams.contains(&stream.as_str()) {
                        confirmed_streams.push(stream);
                    }
                }
                for stream in confirmed_streams {
                    let last_seq = stream_seq.get(stream).or_store("read stream position")?.map_or(0, |v| v.value());
                    outbox.prune_reservations(stream, last_seq)?;
                    let floor = outbox_floor_key(stream);
                    let previous = counters.get(floor.as_str()).or_store("read counters")?.map_or(0, |v| v.value());
                    let held_from = outbox.first_seq(stream)?.unwrap_or(last_seq + 1);
                    if held_from > previous {
                        counters.insert(floor.as_str(), held_from).or_store("write counters")?;
                    }
                }
                for (stream, position) in &change.sink_positions {
                    let previous =
                        positions.get(stream.as_str()).or_store("write sink position")?.map_or(0, |v| v.value());
                    if *position > previous {
                        positions.insert(stream.as_str(), *position).or_store("write sink position")?;
                    }
                }
                for (stream, limit) in &change.sink_record_limits {
                    counters.insert(sink_record_limit_key(stream).as_str(), *limit).or_store("write counters")?;
                }
                for (stream, counter, by) in &change.counts {
                    outbox.count(stream, *counter, *by)?;
                }
                for delivery in &change.deliveries {
                    let counter = format!("delivery_order/{}", delivery.source);
                    let order = counters.get(counter.as_str()).or_store("write counters")?.map_or(0, |v| v.value()) + 1;
                    counters.insert(counter.as_str(), order).or_store("write counters")?;
                    let source = delivery.source.as_str();
                    recent.insert((source, order), delivery.identity.as_slice()).or_store("write recent deliveries")?;
                    if let Some(oldest_dropped) = order.checked_sub(u64::from(delivery.window)) {
                        recent
                            .retain_in((source, 0)..=(source, oldest_dropped), |_, _| false)
                            .or_store("write recent deliveries")?;
                    }
                }
                for letter in &change.dead_letters {
                    let id = counters.get(DEAD_LETTERS_NEXT_ID).or_store("write counters")?.map_or(0, |v| v.value());
                    let bytes = letter.to_bytes();
                    dead_letters.insert(id, bytes.as_slice()).or_store("write dead letters")?;
                    counters.insert(DEAD_LETTERS_NEXT_ID, id + 1).or_store("write counters")?;
                    add_to_counter(&mut counters, DEAD_LETTERS_BYTES, bytes.len() as u64)?;
                }
            }
            self.evict_dead_letters(&mut dead_letters, &mut counters)?;
        }
        txn.commit().or_store("commit")?;
        let group = self.groups.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if durable {
            self.last_durable = Instant::now();
            self.pending_non_durable = false;
            self.durable.send_replace(group);
        } else {
            self.pending_non_durable = true;
        }
        Ok((group, refused))
    }

    /// Removes the oldest dead letters until both the count and the byte cap hold, counting
    /// them as evicted.
    fn evict_dead_letters(
        &self,
        dead_letters: &mut redb::Table<'_, u64, &[u8]>,
        counters: &mut redb::Table<'_, &str, u64>,
    ) -> Result<(), StoreError> {
        let mut held = dead_letters.len().or_store("write dead letters")?;
        let mut bytes = counters.get(DEAD_LETTERS_BYTES).or_store("write counters")?.map_or(0, |v| v.value());
        let mut evicted = 0;
        while held > self.options.dead_letter_capacity || (held > 0 && bytes > self.options.dead_letter_max_bytes) {
            let Some((_, letter)) = dead_letters.pop_first().or_store("evict dead letters")? else { break };
            bytes = bytes.saturating_sub(letter.value().len() as u64);
            held -= 1;
            evicted += 1;
        }
        if evicted > 0 {
            counters.insert(DEAD_LETTERS_BYTES, bytes).or_store("write counters")?;
            add_to_counter(counters, DEAD_LETTERS_EVICTED, evicted)?;
        }
        Ok(())
    }

    /// Makes room for a change set's records in their outboxes; the refusal if there is none.
    fn make_room(&self, outbox: &mut Outbox<'_>, change: &ChangeSet, now: i64) -> Result<Option<Refusal>, StoreError> {
        let mut incoming: Vec<(&str, u64)> = Vec::new();
        for record in &change.records {
            let bytes = outbox::disk_bytes(&record.stream, record.body.len());
            match incoming.iter_mut().find(|(stream, _)| *stream == record.stream) {
                Some((_, held)) => *held += bytes,
                None => incoming.push((&record.stream, bytes)),
            }
        }
        for (stream, bytes) in incoming {
            let Some(limits) = self.options.outboxes.get(stream) else { continue };
            if !outbox.make_room(stream, bytes, limits, now)? {
                if !change.refused_before {
                    outbox.count(stream, Counter::RefusedFull, 1)?;
                }
                return Ok(Some(Refusal::Full { stream: stream.to_owned(), max_bytes: limits.max_bytes }));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;
