//! Sorting out a stream's outbox records among the candidates — those redb read back and those
//! the raw scan found — and working out what was lost (see the rules in the `salvage` module doc
//! and on [`choose`]).

use std::collections::BTreeMap;

use rangemap::RangeInclusiveSet;
use redb::TableHandle;

use super::StreamSalvage;
use super::copy::Salvaged;
use super::scan::Scanned;
use crate::state::STREAM_SEQ;
use crate::state::outbox::OUTBOX;

/// One stream's outbox as it will be restored.
pub(super) struct StreamOutbox {
    /// (seq, body, record), in seq order.
    pub(super) records: Vec<(u64, Vec<u8>, weir_record::Record)>,
    /// Records (counted in seqs: original records) lost, when known.
    pub(super) lost_records: Option<u64>,
    pub(super) report: StreamSalvage,
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

impl Salvaged {
    /// Decides, per stream, which records to restore — those redb read back, then those the
    /// raw scan found — and what was lost (see the module doc).
    pub(super) fn outbox_streams(&self, scanned: Scanned) -> Vec<StreamOutbox> {
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
