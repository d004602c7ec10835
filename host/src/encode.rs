//! Encode: the stage that turns what a batch produced (readings, window emissions) into record
//! bodies in the record format (`weir-record`), sized to what the sink can publish: a record
//! whose body would exceed the sink's limit is split into several records (readings apart from window emissions, then halves), each
//! with its own seq; only a single reading or window emission that is too large by itself cannot
//! be sent, and it is handed back alone so the caller dead-letters exactly that.
//!
//! Pure: no I/O, no clock.

use weir_record::{Encoding, Record, RecordHeader, WindowSeries, WriteError};

use crate::batch::{Batch, BatchBuilder};

/// An encoded record body and its seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fitted {
    /// Its seq.
    pub seq: u64,
    /// Its body, at most the limit.
    pub body: Vec<u8>,
    /// Readings in it.
    pub readings: usize,
}

/// A part of the record that cannot be sent: one reading or one window emission whose record
/// alone exceeds the limit, or one the format cannot encode.
#[derive(Debug)]
pub struct Unfit {
    /// The readings of that part (empty for a window emission).
    pub batch: Batch,
    /// Window emissions in it.
    pub windows: usize,
    /// Why it cannot be sent.
    pub reason: String,
}

/// What [`fit`] made of a record.
#[derive(Debug, Default)]
pub struct FitOutcome {
    /// Records to commit, with consecutive seqs from the record's own.
    pub records: Vec<Fitted>,
    /// What cannot be sent.
    pub unfit: Vec<Unfit>,
}

/// Encodes `record` as one or more bodies of at most `max_bytes`, numbered from its header's seq.
pub fn fit(encoding: Encoding, record: Record, max_bytes: u64) -> FitOutcome {
    let first_seq = record.header.seq;
    let mut outcome = FitOutcome::default();
    // The common case: one encoding, with the real seq.
    match weir_record::write(encoding, &record) {
        Ok(body) if body.len() as u64 <= max_bytes => {
            let readings = record.batch.len();
            outcome.records.push(Fitted { seq: first_seq, body, readings });
            return outcome;
        }
        Ok(_) => {}
        Err(error) => return unfit_whole(record, &error),
    }
    let header = record.header.clone();
    let mut pieces = Vec::new();
    split_until_fit(encoding, record, max_bytes, &mut pieces, &mut outcome.unfit);
    let mut seq = first_seq;
    for piece in pieces {
        let record = Record { header: RecordHeader { seq, ..header.clone() }, ..piece };
        // A piece fitted with the largest seq, so with its own it fits too.
        match weir_record::write(encoding, &record) {
            Ok(body) => {
                outcome.records.push(Fitted { seq, body, readings: record.batch.len() });
                seq += 1;
            }
            Err(error) => outcome.unfit.extend(unfit_whole(record, &error).unfit),
        }
    }
    outcome
}

fn unfit_whole(record: Record, error: &WriteError) -> FitOutcome {
    let windows = record.windows.iter().map(|series| series.windows.len()).sum();
    FitOutcome { records: Vec::new(), unfit: vec![Unfit { batch: record.batch, windows, reason: error.to_string() }] }
}

/// Splits `record` until every piece encodes (with the largest possible seq) within `max_bytes`;
/// pieces go to `fitting` in order, single items too large by themselves to `unfit`.
fn split_until_fit(
    encoding: Encoding,
    record: Record,
    max_bytes: u64,
    fitting: &mut Vec<Record>,
    unfit: &mut Vec<Unfit>,
) {
    let probe = Record { header: RecordHeader { seq: u64::MAX, ..record.header.clone() }, ..record };
    let size = match weir_record::write(encoding, &probe) {
        Ok(body) => body.len() as u64,
        Err(error) => {
            unfit.extend(unfit_whole(probe, &error).unfit);
            return;
        }
    };
    let record = probe;
    if size <= max_bytes {
        fitting.push(record);
        return;
    }
    match halve(record) {
        Ok((first, second)) => {
            split_until_fit(encoding, first, max_bytes, fitting, unfit);
            split_until_fit(encoding, second, max_bytes, fitting, unfit);
        }
        Err(alone) => {
            let windows = alone.windows.iter().map(|series| series.windows.len()).sum();
            let what = if windows > 0 { "one window emission" } else { "one reading" };
            unfit.push(Unfit {
                reason: format!(
                    "a record of {what} alone takes {size} bytes, more than the sink accepts ({max_bytes} bytes)"
                ),
                batch: alone.batch,
                windows,
            });
        }
    }
}

/// Two records holding `record`'s readings and window emissions between them, in order; or the
/// record back when it holds a single item.
fn halve(record: Record) -> Result<(Record, Record), Box<Record>> {
    let empty = |from: &Record| Record {
        header: from.header.clone(),
        batch: Batch::new(),
        aggregates: Vec::new(),
        windows: Vec::new(),
        coarsened: None,
        dropped: None,
    };
    if !record.batch.is_empty() && !record.windows.is_empty() {
        let mut windows = empty(&record);
        windows.windows = record.windows;
        let readings = Record { windows: Vec::new(), ..record };
        return Ok((readings, windows));
    }
    if record.batch.len() >= 2 {
        let (first, second) = split_batch(&record.batch);
        let mut head = empty(&record);
        head.batch = first;
        let tail = Record { batch: second, ..record };
        return Ok((head, tail));
    }
    if record.windows.len() >= 2 {
        let mut head = empty(&record);
        let mut windows = record.windows;
        let second = windows.split_off(windows.len() / 2);
        head.windows = windows;
        let tail = Record { windows: second, ..head.clone() };
        return Ok((head, tail));
    }
    if let [series] = record.windows.as_slice()
        && series.windows.len() >= 2
    {
        let mut first = series.windows.clone();
        let second = first.split_off(first.len() / 2);
        let mut head = empty(&record);
        head.windows = vec![WindowSeries { series: series.series.clone(), windows: first }];
        let tail = Record { windows: vec![WindowSeries { series: series.series.clone(), windows: second }], ..record };
        return Ok((head, tail));
    }
    Err(Box::new(record))
}

/// The first and second half of `batch`'s readings, in order.
fn split_batch(batch: &Batch) -> (Batch, Batch) {
    let middle = batch.len() / 2;
    let mut halves = [BatchBuilder::new(), BatchBuilder::new()];
    for (i, sample) in batch.iter().enumerate() {
        let half = &mut halves[usize::from(i >= middle)];
        let series = half.intern(sample.series);
        half.push(series, sample.ts, sample.value);
    }
    let [first, second] = halves;
    (first.finish(), second.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Series;

    fn record(readings: &[(&str, f64)]) -> Record {
        let mut batch = BatchBuilder::new();
        for (i, (name, value)) in readings.iter().enumerate() {
            let series = batch.intern(&Series::named(*name));
            batch.push(series, i as i64 * 1_000_000_000, *value);
        }
        Record {
            header: RecordHeader { gateway: "gw".into(), stream: "s".into(), seq: 7, encoded_at: 0 },
            batch: batch.finish(),
            aggregates: Vec::new(),
            windows: Vec::new(),
            coarsened: None,
            dropped: None,
        }
    }

    #[test]
    fn a_record_within_the_limit_is_encoded_once_with_its_seq() {
        let outcome = fit(Encoding::Cbor, record(&[("a", 1.0), ("b", 2.0)]), 10_000);
        assert!(outcome.unfit.is_empty());
        let [only] = outcome.records.as_slice() else { panic!("one record") };
        assert_eq!((only.seq, only.readings), (7, 2));
    }

    #[test]
    fn a_large_record_is_split_into_consecutive_seqs_keeping_every_reading_in_order() {
        let readings: Vec<(String, f64)> = (0..300).map(|i| (format!("series/{}", i % 7), f64::from(i))).collect();
        let borrowed: Vec<(&str, f64)> = readings.iter().map(|(s, v)| (s.as_str(), *v)).collect();
        let outcome = fit(Encoding::Cbor, record(&borrowed), 512);
        assert!(outcome.unfit.is_empty());
        assert!(outcome.records.len() > 2, "{} records", outcome.records.len());
        let mut values = Vec::new();
        for (i, fitted) in outcome.records.iter().enumerate() {
            assert!(fitted.body.len() <= 512, "record {i}: {} bytes", fitted.body.len());
            assert_eq!(fitted.seq, 7 + i as u64);
            let decoded = weir_record::read(&fitted.body).expect("decodes");
            assert_eq!(decoded.header.seq, fitted.seq);
            assert_eq!(decoded.batch.len(), fitted.readings);
            values.extend(decoded.batch.iter().map(|s| s.value));
        }
        // Grouped per series within each record, so compare as sets.
        values.sort_by(f64::total_cmp);
        assert_eq!(values, (0..300).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn only_the_reading_too_large_alone_is_unfit() {
        let giant = "g".repeat(5000);
        let outcome = fit(Encoding::Cbor, record(&[("a", 1.0), (&giant, 2.0), ("b", 3.0)]), 1024);
        let [unfit] = outcome.unfit.as_slice() else { panic!("one unfit part: {:?}", outcome.unfit) };
        assert_eq!(unfit.batch.len(), 1);
        assert_eq!(unfit.batch.values(), [2.0]);
        assert!(unfit.reason.contains("one reading alone"), "{}", unfit.reason);
        let sent: Vec<f64> = outcome
            .records
            .iter()
            .flat_map(|r| weir_record::read(&r.body).expect("decodes").batch.values().to_vec())
            .collect();
        assert_eq!(sent, [1.0, 3.0]);
        let seqs: Vec<u64> = outcome.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (7..7 + seqs.len() as u64).collect::<Vec<_>>(), "seqs stay consecutive");
    }
}
