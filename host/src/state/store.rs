//! Reading the store: [`StateStore`], cheap to clone, reads in redb's MVCC snapshots — function
//! state, stream positions, the outbox and its reservations and counters, dead letters, sink
//! positions and record limits, recent deliveries, recoveries. Reads see the latest committed
//! state and never block the committer; while it reopens the database after a failed commit, a
//! read waits a while, then fails with [`StoreError::Reopening`].

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::database::DatabaseSlot;
use super::outbox::{OUTBOX, OUTBOX_USAGE, PUBLISH_RESERVATIONS, STREAM_COUNTERS};
use super::{
    COUNTERS, Counter, DEAD_LETTERS, DEAD_LETTERS_EVICTED, DeadLetter, FLEET, FUNCTION_STATE, FUNCTION_STATE_USAGE,
    OrStore, RECENT_DELIVERIES, Recovery, SINK_POSITIONS, STREAM_SEQ, StoreError, Usage, create_tables, salvage,
    sink_record_limit_key, stats,
};

/// Key/value entries of a function's state.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Read access to the store. Cheap to clone; reads see the latest committed state.
#[derive(Clone, Debug)]
pub struct StateStore {
    pub(super) db: Arc<DatabaseSlot>,
    pub(super) path: PathBuf,
    /// Write transactions committed since open (one per group).
    pub(super) groups: Arc<std::sync::atomic::AtomicU64>,
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

    /// The fleet agent's record under `key`, if one was written.
    pub fn fleet_record(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.get()?.begin_read().or_store("read fleet records")?;
        let table = txn.open_table(FLEET).or_store("read fleet records")?;
        Ok(table.get(key).or_store("read fleet records")?.map(|v| v.value().to_vec()))
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
pub(super) fn newest_dead_letters(
    txn: &redb::ReadTransaction,
    limit: usize,
) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
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
pub(super) fn dead_letter_counts(txn: &redb::ReadTransaction) -> Result<(u64, u64), StoreError> {
    let kept = txn.open_table(DEAD_LETTERS).or_store("read dead letters")?.len().or_store("read dead letters")?;
    let counters = txn.open_table(COUNTERS).or_store("read counters")?;
    let evicted = counters.get(DEAD_LETTERS_EVICTED).or_store("read counters")?.map_or(0, |v| v.value());
    Ok((kept, evicted))
}
