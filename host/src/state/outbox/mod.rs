//! The outbox inside one write transaction: records, their byte accounting, the sink's publish
//! reservations, per-stream counters, and what a full outbox does (`when_full`).
//!
//! **Invariants:**
//! - *exact usage*: `outbox_usage` holds, per stream, the number of records and the sum of their
//!   [`disk_bytes`] (what each occupies in the data file, at most) plus [`STREAM_BASE`] while it
//!   holds any; every insertion and removal goes
//!   through [`Outbox::put`] / [`Outbox::remove`], which keep it exact in the same transaction.
//! - *bounded*: a change set appends records to a stream only if its usage stays within
//!   `max_bytes` afterwards, or the stream held nothing before (so usage never exceeds the cap
//!   by more than one group). [`Outbox::make_room`] frees space first, as the policy says.
//! - *never touch what may be on the wire*: before publishing, a sink commits a *reservation*
//!   covering the seqs it will send. Coarsening and dropping only ever remove or rewrite
//!   records outside every reservation, so a record that may have reached the central broker is
//!   never replaced by a summary of itself (which would count its readings twice).
//! - *summaries are exact*: a coarsened record takes the seq of its first input and carries the
//!   merged span of its inputs; a drop marker takes the seq of the first record it stands for and
//!   is extended, not repeated, when the next record is dropped. `outbox_summaries` indexes both,
//!   so finding them needs no decoding.
//!
//! This file holds the tables, the disk accounting and the record operations; what a full outbox
//! does, in `full`.

mod full;

use std::ops::RangeInclusive;

use rangemap::RangeInclusiveSet;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::counter::Counter;
use super::{OrStore, StoreError};
use crate::config::{Encoding, WhenFull};
use weir_record::{Record, RecordKind};

pub(super) const OUTBOX: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("outbox");
/// (stream, seq) → (kind, window width, bytes, last seq of the span) of coarsened records and
/// drop markers.
pub(super) const OUTBOX_SUMMARIES: TableDefinition<'_, (&str, u64), (u8, u64, u64, u64)> =
    TableDefinition::new("outbox_summaries");
/// stream → (records, bytes).
pub(super) const OUTBOX_USAGE: TableDefinition<'_, &str, (u64, u64)> = TableDefinition::new("outbox_usage");
/// (stream, first seq) → last seq of a range the sink may be publishing.
pub(super) const PUBLISH_RESERVATIONS: TableDefinition<'_, (&str, u64), u64> =
    TableDefinition::new("publish_reservations");
/// (stream, counter name) → value.
pub(super) const STREAM_COUNTERS: TableDefinition<'_, (&str, &str), u64> = TableDefinition::new("stream_counters");

const COARSENED: u8 = 1;
const DROPPED: u8 = 2;

/// How full a stream's outbox may get, and what happens then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Disk bytes kept at most (see [`disk_bytes`]).
    pub max_bytes: u64,
    /// The policy when a new record does not fit.
    pub when_full: WhenFull,
    /// The stream's encoding (for the summaries the policy writes).
    pub encoding: Encoding,
}

impl OutboxLimits {
    /// The most input bytes merged by one coarsening step; coarsened records below half of it
    /// take the next records in (so the outbox keeps few, large summaries).
    fn chunk(&self) -> u64 {
        (self.max_bytes / 16).clamp(4 << 10, 1 << 20)
    }
}

/// Records and bytes of one stream's outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Records held.
    pub records: u64,
    /// The disk bytes they occupy (see [`disk_bytes`]).
    pub bytes: u64,
}

/// redb's page size (its default, which weir keeps).
const PAGE: u64 = 4096;
/// What a leaf page spends besides its entries: page type and entry count.
const LEAF_HEADER: u64 = 4;
/// What an outbox entry costs besides its key and value: their two `u32` end offsets.
const ENTRY_OFFSETS: u64 = 8;
/// What a child costs its parent branch besides the separator key: page number, checksum and
/// the key's end offset.
const BRANCH_CHILD: u64 = 8 + 16 + 4;
/// What the `(stream, seq)` key costs besides the stream's name: the seq and the name's length.
const KEY_OVERHEAD: u64 = 8 + 4;

/// The bytes a record of `body` bytes in `stream` occupies in the data file's `outbox` B-tree, at
/// most. The outbox's cap is counted in these, so that it bounds disk use, not just payload.
///
/// redb keeps entries in leaf pages of 4 KiB. An entry that fits one page shares its leaf with
/// its neighbours; redb splits full leaves evenly, so a shared leaf is at least about half used,
/// and the entry is charged twice its size. A larger entry gets a leaf of its own whose size is a
/// power of two pages; it is charged that, plus one page for the small neighbour it may leave
/// alone in a leaf. Either way the leaf's link in its parent branch is charged too. A stream that
/// holds records is charged [`STREAM_BASE`] on top (its partly used leaves at the edges of what
/// was appended and removed). `tests::the_outbox_on_disk_stays_within_the_bytes_charged_for_it`
/// checks the bound against redb's own page statistics.
pub fn disk_bytes(stream: &str, body: usize) -> u64 {
    let key = stream.len() as u64 + KEY_OVERHEAD;
    let entry = key + body as u64 + ENTRY_OFFSETS;
    let branch = 2 * (key + BRANCH_CHILD);
    if LEAF_HEADER + entry <= PAGE {
        2 * entry + branch
    } else {
        (LEAF_HEADER + entry).div_ceil(PAGE).next_power_of_two() * PAGE + PAGE + branch
    }
}

/// Charged to a stream while it holds any record, besides its records' [`disk_bytes`].
pub const STREAM_BASE: u64 = PAGE;

/// Gateway counter: how `outbox_usage` counts bytes; 2 = [`disk_bytes`] (1, or absent: encoded
/// bytes, before weir counted disk use).
pub(super) const USAGE_MODEL: &str = "outbox_usage_model";
const CURRENT_USAGE_MODEL: u64 = 2;

/// Recomputes every stream's usage from its records if the file counted them another way.
pub(super) fn recount_usage_if_stale(
    txn: &WriteTransaction,
    counters: &mut Table<'_, &str, u64>,
) -> Result<(), StoreError> {
    if counters.get(USAGE_MODEL).or_store("read counters")?.map(|v| v.value()) == Some(CURRENT_USAGE_MODEL) {
        return Ok(());
    }
    let mut recounted: Vec<(String, Usage)> = Vec::new();
    {
        let records = txn.open_table(OUTBOX).or_store("read outbox")?;
        for entry in records.iter().or_store("read outbox")? {
            let (key, value) = entry.or_store("read outbox")?;
            let (stream, _) = key.value();
            let bytes = disk_bytes(stream, value.value().len());
            match recounted.last_mut() {
                Some((last, usage)) if last == stream => {
                    usage.records += 1;
                    usage.bytes += bytes;
                }
                _ => recounted.push((stream.to_owned(), Usage { records: 1, bytes: STREAM_BASE + bytes })),
            }
        }
    }
    let mut usage = txn.open_table(OUTBOX_USAGE).or_store("write outbox usage")?;
    usage.retain(|_, _| false).or_store("write outbox usage")?;
    for (stream, counted) in &recounted {
        usage.insert(stream.as_str(), (counted.records, counted.bytes)).or_store("write outbox usage")?;
    }
    counters.insert(USAGE_MODEL, CURRENT_USAGE_MODEL).or_store("write counters")?;
    Ok(())
}

/// A coarsened record or drop marker, as indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Summary {
    coarsened: bool,
    width: u64,
    bytes: u64,
    last_seq: u64,
}

impl Summary {
    fn from_row((kind, width, bytes, last_seq): (u8, u64, u64, u64)) -> Self {
        Self { coarsened: kind == COARSENED, width, bytes, last_seq }
    }

    fn of(record: &Record, bytes: usize) -> Option<Self> {
        let span = record.span();
        match record.kind() {
            RecordKind::Readings => None,
            RecordKind::Coarsened { width } => {
                Some(Self { coarsened: true, width, bytes: bytes as u64, last_seq: span.last_seq })
            }
            RecordKind::Dropped => {
                Some(Self { coarsened: false, width: 0, bytes: bytes as u64, last_seq: span.last_seq })
            }
        }
    }

    fn row(self) -> (u8, u64, u64, u64) {
        (if self.coarsened { COARSENED } else { DROPPED }, self.width, self.bytes, self.last_seq)
    }
}

/// The outbox tables, open in one write transaction.
pub(super) struct Outbox<'txn> {
    records: Table<'txn, (&'static str, u64), &'static [u8]>,
    summaries: Table<'txn, (&'static str, u64), (u8, u64, u64, u64)>,
    usage: Table<'txn, &'static str, (u64, u64)>,
    reservations: Table<'txn, (&'static str, u64), u64>,
    counters: Table<'txn, (&'static str, &'static str), u64>,
}

impl<'txn> Outbox<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            records: txn.open_table(OUTBOX).or_store("write outbox")?,
            summaries: txn.open_table(OUTBOX_SUMMARIES).or_store("write outbox")?,
            usage: txn.open_table(OUTBOX_USAGE).or_store("write outbox")?,
            reservations: txn.open_table(PUBLISH_RESERVATIONS).or_store("write outbox")?,
            counters: txn.open_table(STREAM_COUNTERS).or_store("write counters")?,
        })
    }

    pub(super) fn usage(&self, stream: &str) -> Result<Usage, StoreError> {
        Ok(self
            .usage
            .get(stream)
            .or_store("read outbox usage")?
            .map_or(Usage::default(), |v| Usage { records: v.value().0, bytes: v.value().1 }))
    }

    fn set_usage(&mut self, stream: &str, usage: Usage) -> Result<(), StoreError> {
        self.usage.insert(stream, (usage.records, usage.bytes)).or_store("write outbox usage")?;
        Ok(())
    }

    /// Stores a record (replacing any at the same seq), keeping usage and the summary index exact.
    fn put(&mut self, stream: &str, seq: u64, body: &[u8], summary: Option<Summary>) -> Result<(), StoreError> {
        let replaced = self.records.insert((stream, seq), body).or_store("write outbox")?.map(|old| old.value().len());
        let mut usage = self.usage(stream)?;
        if usage.records == 0 {
            usage.bytes += STREAM_BASE;
        }
        usage.records += u64::from(replaced.is_none());
        usage.bytes = usage.bytes - replaced.map_or(0, |old| disk_bytes(stream, old)) + disk_bytes(stream, body.len());
        self.set_usage(stream, usage)?;
        match summary {
            Some(summary) => self.summaries.insert((stream, seq), summary.row()).or_store("write outbox")?,
            None => self.summaries.remove((stream, seq)).or_store("write outbox")?,
        };
        Ok(())
    }

    /// Appends a record of readings.
    pub(super) fn append(&mut self, stream: &str, seq: u64, body: &[u8]) -> Result<(), StoreError> {
        self.put(stream, seq, body, None)
    }

    /// Stores a record read back from a damaged file (see `salvage`), as it was.
    pub(super) fn restore(&mut self, stream: &str, seq: u64, body: &[u8], record: &Record) -> Result<(), StoreError> {
        self.put(stream, seq, body, Summary::of(record, body.len()))
    }

    /// Removes a record; returns its body if it was there.
    pub(super) fn remove(&mut self, stream: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let removed = self.records.remove((stream, seq)).or_store("write outbox")?.map(|old| old.value().to_vec());
        if let Some(body) = &removed {
            let mut usage = self.usage(stream)?;
            usage.records -= 1;
            usage.bytes -= disk_bytes(stream, body.len());
            if usage.records == 0 {
                usage.bytes -= STREAM_BASE;
            }
            self.set_usage(stream, usage)?;
            self.summaries.remove((stream, seq)).or_store("write outbox")?;
        }
        Ok(removed)
    }

    /// The lowest seq the stream's outbox holds.
    pub(super) fn first_seq(&self, stream: &str) -> Result<Option<u64>, StoreError> {
        match self.records.range((stream, 0)..=(stream, u64::MAX)).or_store("read outbox")?.next() {
            Some(entry) => Ok(Some(entry.or_store("read outbox")?.0.value().1)),
            None => Ok(None),
        }
    }

    /// Adds `by` to a stream's counter.
    pub(super) fn count(&mut self, stream: &str, counter: Counter, by: u64) -> Result<(), StoreError> {
        if by == 0 {
            return Ok(());
        }
        let key = (stream, counter.name());
        let value = self.counters.get(key).or_store("read counters")?.map_or(0, |v| v.value());
        self.counters.insert(key, value + by).or_store("write counters")?;
        Ok(())
    }

    fn reservation_set(&self, stream: &str) -> Result<RangeInclusiveSet<u64>, StoreError> {
        let mut set = RangeInclusiveSet::new();
        for entry in self.reservations.range((stream, 0)..=(stream, u64::MAX)).or_store("read reservations")? {
            let (from, through) = entry.or_store("read reservations")?;
            set.insert(from.value().1..=through.value());
        }
        Ok(set)
    }

    fn store_reservation_set(&mut self, stream: &str, set: &RangeInclusiveSet<u64>) -> Result<(), StoreError> {
        self.reservations.retain_in((stream, 0)..=(stream, u64::MAX), |_, _| false).or_store("write reservations")?;
        for range in set.iter() {
            self.reservations.insert((stream, *range.start()), *range.end()).or_store("write reservations")?;
        }
        Ok(())
    }

    /// Records that the sink may publish `seqs` from now on.
    pub(super) fn reserve(&mut self, stream: &str, seqs: RangeInclusive<u64>) -> Result<(), StoreError> {
        let mut set = self.reservation_set(stream)?;
        set.insert(seqs);
        self.store_reservation_set(stream, &set)
    }

    /// Forgets reservations whose records have all left the outbox. A range reaching beyond
    /// `last_seq` is kept: records yet to be appended there are already the sink's.
    pub(super) fn prune_reservations(&mut self, stream: &str, last_seq: u64) -> Result<(), StoreError> {
        let set = self.reservation_set(stream)?;
        let mut kept = RangeInclusiveSet::new();
        for range in set.iter() {
            let empty = self
                .records
                .range((stream, *range.start())..=(stream, *range.end()))
                .or_store("read outbox")?
                .next()
                .is_none();
            if !(empty && *range.end() <= last_seq) {
                kept.insert(range.clone());
            }
        }
        if kept != set {
            self.store_reservation_set(stream, &kept)?;
        }
        Ok(())
    }
}
