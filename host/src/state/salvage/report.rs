//! The report of a recovery from a damaged file ([`Recovery`]): what each table yielded, what
//! each stream's outbox came back with and which seqs were lost. Kept as JSON in the
//! `recoveries` table (one entry per recovery, never rewritten), logged, and shown by
//! `weir outbox stats`.

use std::path::PathBuf;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::RECOVERIES;
use crate::state::{OrStore, StoreError};

/// Every recovery report kept in the database, oldest first.
pub(in crate::state) fn recoveries(txn: &redb::ReadTransaction) -> Result<Vec<Recovery>, StoreError> {
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
