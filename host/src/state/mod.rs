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
//! made durable by a following group (see `committer`), so a crash can undo only what never left the process.
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
//! | `fleet`                | key                    | the fleet agent's records: trusted root, accepted documents, floors, the update under way (see `fleet`) |
//!
//! Where the parts live: change sets in `change`; the committer thread and its handle in
//! `committer`; the shared open database and its reopening after a failed commit in `database`;
//! reads in `store`; errors in `error`; the outbox's accounting, reservations and full-outbox
//! policies in `outbox`; opening a damaged file in `salvage`; what `weir outbox stats` reads in
//! `stats`; reading the file from another process without changing it (also after a crash) in
//! `inspect`. This file holds the tables, opening the store and the counts recomputed at open.

mod change;
mod committer;
mod counter;
mod database;
mod dead_letter;
mod error;
pub mod inspect;
mod outbox;
mod salvage;
pub mod stats;
mod store;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, ReadableTable, TableDefinition};

pub use change::{ChangeSet, DeliveryRecord, OutboxRecord, StateWrite};
pub use committer::{Applied, CommitError, Committer, EXIT_DURABILITY_LOST};
pub use counter::Counter;
pub use dead_letter::{DeadLetter, DeadLetterContent, DeadLetterStage, PAYLOAD_PREFIX as DEAD_LETTER_PAYLOAD_PREFIX};
pub use error::StoreError;
pub use outbox::{OutboxLimits, Usage};
pub use salvage::{DAMAGED_DIR, DAMAGED_KEPT, Recovery, TableSalvage};
pub use store::{Entries, StateStore};

use crate::config::Durability;
use database::DatabaseSlot;
use error::OrStore;
use outbox::{OUTBOX, OUTBOX_SUMMARIES, OUTBOX_USAGE, PUBLISH_RESERVATIONS, STREAM_COUNTERS};
use store::{dead_letter_counts, newest_dead_letters};

const FUNCTION_STATE: TableDefinition<'_, (&str, &[u8]), &[u8]> = TableDefinition::new("function_state");
/// Per namespace, the bytes (keys and values) its function state holds; kept in the same
/// transactions as `function_state`, and recounted at every open.
const FUNCTION_STATE_USAGE: TableDefinition<'_, &str, u64> = TableDefinition::new("function_state_usage");
const STREAM_SEQ: TableDefinition<'_, &str, u64> = TableDefinition::new("stream_seq");
const DEAD_LETTERS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("dead_letters");
const COUNTERS: TableDefinition<'_, &str, u64> = TableDefinition::new("counters");
const RECENT_DELIVERIES: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("recent_deliveries");
const SINK_POSITIONS: TableDefinition<'_, &str, u64> = TableDefinition::new("sink_positions");
/// The fleet agent's records, opaque to the store (the agent owns their format).
const FLEET: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("fleet");

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

/// Opens (or creates) the database in `data_dir` and starts its committer thread.
///
/// The thread ends when every [`Committer`] clone is dropped; join the handle to know that the last
/// commit finished.
pub fn open(data_dir: &Path, options: StoreOptions) -> Result<(StateStore, Committer, JoinHandle<()>), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
    let path = data_dir.join(DATABASE_FILE);
    let (db, _recovery) = salvage::open_database(&path)?;

    let db = Arc::new(DatabaseSlot::new(db));
    let groups = Arc::default();
    let (committer, thread) = committer::start(Arc::clone(&db), path.clone(), Arc::clone(&groups), options)
        .map_err(|source| StoreError::DataDir { path: data_dir.to_owned(), source })?;
    Ok((StateStore { db, path, groups }, committer, thread))
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
        txn.open_table(FLEET).or_store("create tables")?;
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

#[cfg(test)]
mod tests;
