//! What a full outbox does (`when_full`): making room for incoming records by coarsening
//! unreserved records into aggregate windows (`reaggregate`) or dropping the oldest into a drop
//! marker (`drop_oldest`, and `reaggregate` once nothing coarsens smaller), or refusing them
//! (`block`).
//!
//! **Invariant:** only seqs outside every publish reservation are rewritten or removed, and every
//! seq removed stays covered: by the span of the coarsened record that replaces it, or by the
//! span of a drop marker, whose dropped records and readings are counted.

use std::ops::RangeInclusive;

use redb::ReadableTable;

use super::{Outbox, OutboxLimits, Summary, Usage, disk_bytes};
use crate::batch::Nanos;
use crate::coarsen::{self, WIDTHS};
use crate::config::{Encoding, WhenFull};
use crate::state::{Counter, OrStore, StoreError};
use weir_record::{Record, RecordHeader, RecordKind, Span};

/// Coarsening candidates that did not shrink, tried per step at most before dropping instead.
const MAX_FRUITLESS_TRIES: usize = 8;

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

impl Outbox<'_> {
    /// Makes room for `incoming` more bytes in `stream`, as its policy says. Returns false when
    /// the records must be refused: the policy is `block`, or nothing more can be coarsened or
    /// dropped. Space freed stays freed either way.
    pub(in crate::state) fn make_room(
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
