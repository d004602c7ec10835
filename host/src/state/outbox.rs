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

use std::ops::RangeInclusive;

use rangemap::RangeInclusiveSet;
use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::counter::Counter;
use super::{OrStore, StoreError};
use crate::batch::Nanos;
use crate::coarsen::{self, WIDTHS};
use crate::config::{Encoding, WhenFull};
use weir_record::{Record, RecordHeader, RecordKind, Span};

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

/// Coarsening candidates that did not shrink, tried per step at most before dropping instead.
const MAX_FRUITLESS_TRIES: usize = 8;

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

/// What lies in a stream's outbox outside the reservations, in seq order.
#[derive(Clone, Copy, Debug)]
enum Item {
    /// A coarsened record or drop marker.
    Summary(u64, Summary),
    /// Seqs `from..=to` hold plain records (at least one) and no summary.
    Plain { from: u64, to: u64 },
}

/// Records a coarsening step may merge.
#[derive(Clone, Debug)]
enum Candidate {
    /// Plain records from `from` on (as many as one step takes), after the small coarsened
    /// record `head` if there is one.
    Plain { head: Option<u64>, from: u64, to: u64 },
    /// These records.
    Seqs(Vec<u64>),
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

    /// Makes room for `incoming` more bytes in `stream`, as its policy says. Returns false when
    /// the records must be refused: the policy is `block`, or nothing more can be coarsened or
    /// dropped. Space freed stays freed either way.
    pub(super) fn make_room(
        &mut self,
        stream: &str,
        incoming: u64,
        limits: &OutboxLimits,
        now: Nanos,
    ) -> Result<bool, StoreError> {
        let fits = |usage: Usage| usage.bytes == 0 || usage.bytes + incoming <= limits.max_bytes;
        if fits(self.usage(stream)?) {
            return Ok(true);
        }
        if limits.when_full == WhenFull::Block {
            return Ok(false);
        }
        let unreserved: Vec<RangeInclusive<u64>> = {
            let reserved = self.reservation_set(stream)?;
            reserved.gaps(&(1..=u64::MAX)).collect()
        };
        loop {
            if fits(self.usage(stream)?) {
                return Ok(true);
            }
            let layout = self.layout(stream, &unreserved)?;
            let coarsened =
                limits.when_full == WhenFull::Reaggregate && self.coarsen_step(stream, &layout, limits, now)?;
            if !coarsened && !self.drop_step(stream, &layout, limits.encoding, now)? {
                return Ok(false);
            }
        }
    }

    /// The items of each unreserved segment.
    fn layout(&self, stream: &str, unreserved: &[RangeInclusive<u64>]) -> Result<Vec<Vec<Item>>, StoreError> {
        let mut segments = Vec::new();
        for segment in unreserved {
            let mut items = Vec::new();
            let mut cursor = *segment.start();
            let summaries: Vec<(u64, Summary)> = self
                .summaries
                .range((stream, *segment.start())..=(stream, *segment.end()))
                .or_store("read outbox")?
                .map(|entry| entry.map(|(k, v)| (k.value().1, Summary::from_row(v.value()))))
                .collect::<Result<_, _>>()
                .or_store("read outbox")?;
            for (seq, summary) in summaries {
                if seq > cursor && self.has_records(stream, cursor..=seq - 1)? {
                    items.push(Item::Plain { from: cursor, to: seq - 1 });
                }
                items.push(Item::Summary(seq, summary));
                cursor = seq.saturating_add(1);
            }
            if cursor <= *segment.end() && cursor > 0 && self.has_records(stream, cursor..=*segment.end())? {
                items.push(Item::Plain { from: cursor, to: *segment.end() });
            }
            if !items.is_empty() {
                segments.push(items);
            }
        }
        Ok(segments)
    }

    fn has_records(&self, stream: &str, seqs: RangeInclusive<u64>) -> Result<bool, StoreError> {
        Ok(self
            .records
            .range((stream, *seqs.start())..=(stream, *seqs.end()))
            .or_store("read outbox")?
            .next()
            .is_some())
    }

    /// Records with seqs in `seqs`, in order, until `max_bytes` is reached (at least one).
    fn read_run(
        &self,
        stream: &str,
        seqs: RangeInclusive<u64>,
        max_bytes: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut run = Vec::new();
        let mut bytes = 0;
        for entry in self.records.range((stream, *seqs.start())..=(stream, *seqs.end())).or_store("read outbox")? {
            let (key, value) = entry.or_store("read outbox")?;
            let body = value.value();
            if !run.is_empty() && bytes + body.len() as u64 > max_bytes {
                break;
            }
            bytes += body.len() as u64;
            run.push((key.value().1, body.to_vec()));
        }
        Ok(run)
    }

    fn read(&self, stream: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.records.get((stream, seq)).or_store("read outbox")?.map(|v| v.value().to_vec()))
    }

    /// Tries to merge some unreserved records into a smaller coarsened record, preferring (1)
    /// the oldest plain records (with the small coarsened record just before them, if any),
    /// then (2) two neighbouring coarsened records, then (3) one coarsened record at a wider
    /// width. Returns whether it freed space.
    fn coarsen_step(
        &mut self,
        stream: &str,
        layout: &[Vec<Item>],
        limits: &OutboxLimits,
        now: Nanos,
    ) -> Result<bool, StoreError> {
        let chunk = limits.chunk();
        let mut candidates: Vec<Candidate> = Vec::new();
        for items in layout {
            for (i, item) in items.iter().enumerate() {
                let Item::Plain { from, to } = *item else { continue };
                let head = match i.checked_sub(1).map(|p| items[p]) {
                    Some(Item::Summary(seq, summary)) if summary.coarsened && summary.bytes < chunk / 2 => Some(seq),
                    _ => None,
                };
                candidates.push(Candidate::Plain { head, from, to });
            }
        }
        for items in layout {
            for pair in items.windows(2) {
                if let [Item::Summary(a, sa), Item::Summary(b, sb)] = *pair
                    && sa.coarsened
                    && sb.coarsened
                {
                    candidates.push(Candidate::Seqs(vec![a, b]));
                }
            }
        }
        for items in layout {
            for item in items {
                if let Item::Summary(seq, summary) = *item
                    && summary.coarsened
                    && summary.width < WIDTHS[WIDTHS.len() - 1]
                {
                    candidates.push(Candidate::Seqs(vec![seq]));
                }
            }
        }
        for candidate in candidates.into_iter().take(MAX_FRUITLESS_TRIES) {
            let mut run = Vec::new();
            let seqs = match candidate {
                Candidate::Plain { head, from, to } => {
                    let mut budget = chunk;
                    if let Some(body) = head.map(|seq| self.read(stream, seq)).transpose()?.flatten() {
                        budget = budget.saturating_sub(body.len() as u64);
                        run.push((head.unwrap_or_default(), body));
                    }
                    run.extend(self.read_run(stream, from..=to, budget)?);
                    Vec::new()
                }
                Candidate::Seqs(seqs) => seqs,
            };
            for seq in seqs {
                run.extend(self.read(stream, seq)?.map(|body| (seq, body)));
            }
            if !run.is_empty() && self.coarsen_run(stream, &run, limits.encoding, now)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Replaces `run` by one coarsened record if that is smaller. Returns whether it did.
    fn coarsen_run(
        &mut self,
        stream: &str,
        run: &[(u64, Vec<u8>)],
        encoding: Encoding,
        now: Nanos,
    ) -> Result<bool, StoreError> {
        let mut records = Vec::with_capacity(run.len());
        for (seq, body) in run {
            match weir_record::read(body) {
                Ok(record) => records.push(record),
                Err(e) => {
                    tracing::error!(stage = "state", stream, seq, error = %e, "an outbox record does not decode; it is not coarsened");
                    return Ok(false);
                }
            }
        }
        let input_bytes = run.iter().map(|(_, body)| body.len()).sum();
        let Some(coarsening) = coarsen::coarsen(&records, input_bytes, encoding, now) else {
            return Ok(false);
        };
        let input_disk_bytes: u64 = run.iter().map(|(_, body)| disk_bytes(stream, body.len())).sum();
        if disk_bytes(stream, coarsening.body.len()) >= input_disk_bytes {
            return Ok(false);
        }
        let (mut newly_records, mut newly_readings) = (0, 0);
        for ((seq, _), record) in run.iter().zip(&records) {
            if record.kind() == RecordKind::Readings {
                newly_records += 1;
                newly_readings += record.batch.len() as u64;
            }
            self.remove(stream, *seq)?;
        }
        let summary = Summary::of(&coarsening.record, coarsening.body.len());
        self.put(stream, run[0].0, &coarsening.body, summary)?;
        self.count(stream, Counter::RecordsCoarsened, newly_records)?;
        self.count(stream, Counter::ReadingsCoarsened, newly_readings)?;
        tracing::debug!(
            stage = "state",
            stream,
            first_seq = run[0].0,
            inputs = run.len(),
            bytes_in = input_bytes,
            bytes_out = coarsening.body.len(),
            "coarsened outbox records"
        );
        Ok(true)
    }

    /// Drops the oldest unreserved record that is not a drop marker, folding it into the marker
    /// just before it or starting a marker at its seq. Returns false when there is none.
    fn drop_step(
        &mut self,
        stream: &str,
        layout: &[Vec<Item>],
        encoding: Encoding,
        now: Nanos,
    ) -> Result<bool, StoreError> {
        for items in layout {
            for (i, item) in items.iter().enumerate() {
                let victim = match *item {
                    Item::Summary(_, summary) if !summary.coarsened => continue,
                    Item::Summary(seq, _) => seq,
                    Item::Plain { from, to } => {
                        let first = self.records.range((stream, from)..=(stream, to)).or_store("read outbox")?.next();
                        match first {
                            Some(entry) => entry.or_store("read outbox")?.0.value().1,
                            None => continue,
                        }
                    }
                };
                let previous_marker = match i.checked_sub(1).map(|p| items[p]) {
                    Some(Item::Summary(seq, summary)) if !summary.coarsened => Some(seq),
                    _ => None,
                };
                self.drop_record(stream, victim, previous_marker, encoding, now)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn drop_record(
        &mut self,
        stream: &str,
        victim: u64,
        previous_marker: Option<u64>,
        encoding: Encoding,
        now: Nanos,
    ) -> Result<(), StoreError> {
        let body = self.remove(stream, victim)?.unwrap_or_default();
        let (header, span) = match weir_record::read(&body) {
            Ok(record) => (record.header.clone(), record.span()),
            Err(e) => {
                tracing::error!(stage = "state", stream, seq = victim, error = %e,
                    "an outbox record does not decode; dropped without knowing its readings");
                let header =
                    RecordHeader { gateway: String::new(), stream: stream.to_owned(), seq: victim, encoded_at: now };
                (header, Span::of_record(victim, 0, None, now))
            }
        };
        self.count(stream, Counter::RecordsDropped, span.records)?;
        self.count(stream, Counter::ReadingsDropped, span.readings)?;
        let marker = match previous_marker.map(|seq| self.read(stream, seq)).transpose()?.flatten() {
            Some(marker_body) => match weir_record::read(&marker_body) {
                Ok(mut marker) => {
                    if let Some(dropped) = &mut marker.dropped {
                        dropped.merge(&span);
                    }
                    marker.header.encoded_at = now;
                    marker
                }
                Err(_) => new_marker(header, span, now),
            },
            None => new_marker(header, span, now),
        };
        let body = weir_record::write(encoding, &marker).expect("a marker holds no readings to refuse");
        let summary = Summary::of(&marker, body.len());
        tracing::debug!(stage = "state", stream, seq = victim, marker = marker.header.seq, "dropped an outbox record");
        self.put(stream, marker.header.seq, &body, summary)
    }
}

fn new_marker(header: RecordHeader, span: Span, now: Nanos) -> Record {
    let header = RecordHeader { seq: span.first_seq, encoded_at: now, ..header };
    Record {
        header,
        batch: crate::batch::Batch::new(),
        aggregates: Vec::new(),
        windows: Vec::new(),
        coarsened: None,
        dropped: Some(span),
    }
}
