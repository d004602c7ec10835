//! Coarsen: merges consecutive outbox records into one record of aggregate windows — what the
//! `reaggregate` policy of a full outbox does to its oldest records. Pure: no I/O, no clock.
//!
//! **Invariants:**
//! - the result stands for exactly its inputs: its span is the merge of theirs (first and last
//!   seq, number of original records and readings, earliest and latest event time);
//! - every non-NaN reading of the inputs is in exactly one window, and windows of coarsened
//!   inputs are merged whole (widths come from [`WIDTHS`], each dividing the next, and windows
//!   start at multiples of their width, so a window never straddles two coarser ones);
//! - drop markers are never inputs (their readings are gone; the caller keeps them apart).

use std::collections::{BTreeMap, HashMap};

use crate::batch::{Nanos, Series};
use crate::config::Encoding;
use weir_record::{
    AggregateSeries, Coarsened, Record, RecordHeader, RecordKind, Span, Window, WindowSeries, WindowValue, window_start,
};

const SECOND: u64 = 1_000_000_000;

/// Window widths, finest first: 1 s, 10 s, 1 min, 10 min, 1 h, 6 h, 1 day, 7 days, 28 days.
pub const WIDTHS: [u64; 9] = [
    SECOND,
    10 * SECOND,
    60 * SECOND,
    600 * SECOND,
    3_600 * SECOND,
    21_600 * SECOND,
    86_400 * SECOND,
    604_800 * SECOND,
    2_419_200 * SECOND,
];

/// A coarsened record and its encoding.
#[derive(Debug)]
pub struct Coarsening {
    /// The new record (seq: the first input's).
    pub record: Record,
    /// Its encoded body.
    pub body: Vec<u8>,
}

/// Merges `inputs` (consecutive outbox records, in seq order, `input_bytes` encoded) into one
/// coarsened record, at the finest width of [`WIDTHS`] — no finer than any input's — whose
/// encoding takes at most half the inputs' bytes, or else the widest. Returns `None` when even
/// the widest is not smaller than the inputs (nothing to gain), or when there are no inputs.
pub fn coarsen(inputs: &[Record], input_bytes: usize, encoding: Encoding, now: Nanos) -> Option<Coarsening> {
    let finest = inputs
        .iter()
        .map(|record| match record.kind() {
            RecordKind::Coarsened { width } => width,
            RecordKind::Readings | RecordKind::Dropped => 0,
        })
        .max()?;
    let mut best: Option<Coarsening> = None;
    for width in WIDTHS.into_iter().filter(|&w| w >= finest) {
        let record = merge(inputs, width, now);
        let Ok(body) = weir_record::write(encoding, &record) else { continue };
        let good_enough = body.len() <= input_bytes / 2;
        best = Some(Coarsening { record, body });
        if good_enough {
            break;
        }
    }
    best.filter(|c| c.body.len() < input_bytes)
}

/// Merges `inputs` into windows of `width` ns. The header is the first input's, with `now` as
/// its encode time.
pub fn merge(inputs: &[Record], width: u64, now: Nanos) -> Record {
    debug_assert!(inputs.iter().all(|r| r.kind() != RecordKind::Dropped), "drop markers are never coarsened");
    let first = &inputs[0].header;
    let header =
        RecordHeader { gateway: first.gateway.clone(), stream: first.stream.clone(), seq: first.seq, encoded_at: now };
    let mut span: Option<Span> = None;
    let mut order: Vec<Series> = Vec::new();
    let mut by_name: HashMap<String, BTreeMap<Nanos, Window>> = HashMap::new();
    let mut add = |series: &Series, window: Window| {
        let windows = by_name.entry(series.name.clone()).or_insert_with(|| {
            order.push(series.clone());
            BTreeMap::new()
        });
        let start = window_start(window.start, width);
        match windows.get_mut(&start) {
            Some(existing) => existing.merge(&window),
            None => {
                windows.insert(start, Window { start, ..window });
            }
        }
    };
    for record in inputs {
        match &mut span {
            Some(span) => span.merge(&record.span()),
            None => span = Some(record.span()),
        }
        for sample in record.batch.iter().filter(|s| !s.value.is_nan()) {
            add(sample.series, Window::of(sample.ts, sample.value));
        }
        for aggregate in &record.aggregates {
            for window in &aggregate.windows {
                add(&aggregate.series, *window);
            }
        }
    }
    let aggregates = order
        .into_iter()
        .map(|series| {
            let windows = by_name.remove(&series.name).unwrap_or_default().into_values().collect();
            AggregateSeries { series, width, windows }
        })
        .collect();
    let span = span.expect("at least one input");
    Record {
        header,
        batch: crate::batch::Batch::new(),
        aggregates,
        windows: latest_windows(inputs),
        coarsened: Some(Coarsened { span, width }),
        dropped: None,
    }
}

/// The window emissions of `inputs`, carried over whole (they are aggregates already): per
/// series and key only the latest revision, which supersedes the others.
fn latest_windows(inputs: &[Record]) -> Vec<WindowSeries> {
    let mut order: Vec<Series> = Vec::new();
    let mut by_name: HashMap<String, BTreeMap<Nanos, WindowValue>> = HashMap::new();
    for series in inputs.iter().flat_map(|record| &record.windows) {
        let latest = by_name.entry(series.series.name.clone()).or_insert_with(|| {
            order.push(series.series.clone());
            BTreeMap::new()
        });
        for window in &series.windows {
            if latest.get(&window.key).is_none_or(|kept| kept.revision <= window.revision) {
                latest.insert(window.key, window.clone());
            }
        }
    }
    order
        .into_iter()
        .map(|series| {
            let windows = by_name.remove(&series.name).unwrap_or_default().into_values().collect();
            WindowSeries { series, windows }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::batch::BatchBuilder;

    fn raw(seq: u64, readings: &[(&str, Nanos, f64)]) -> Record {
        let mut builder = BatchBuilder::new();
        for (name, ts, value) in readings {
            let index = builder.intern(&Series::named(*name));
            builder.push(index, *ts, *value);
        }
        let header = RecordHeader { gateway: "gw".into(), stream: "s".into(), seq, encoded_at: seq as i64 * 1000 };
        Record::of_readings(header, builder.finish())
    }

    fn window(record: &Record, series: &str, start: Nanos) -> Window {
        let aggregate = record.aggregates.iter().find(|a| a.series.name == series).expect("series present");
        *aggregate.windows.iter().find(|w| w.start == start).expect("window present")
    }

    #[test]
    fn readings_fall_into_aligned_windows_with_every_statistic() {
        let s = SECOND as i64;
        let inputs = [raw(3, &[("t", 0, 1.0), ("t", 5 * s, 3.0), ("p", 12 * s, 7.0)]), raw(4, &[("t", 9 * s, 2.0)])];
        let merged = merge(&inputs, 10 * SECOND, 99);
        assert_eq!(merged.header.seq, 3);
        assert_eq!(merged.header.encoded_at, 99);
        let t = window(&merged, "t", 0);
        assert_eq!((t.count, t.sum, t.min, t.max), (3, 6.0, 1.0, 3.0));
        assert!((t.m2 - 2.0).abs() < 1e-12, "variance of 1, 3, 2 is 2/3: m2 = 2, got {}", t.m2);
        assert_eq!(window(&merged, "p", 10 * s).count, 1);
        let coarsened = merged.coarsened.as_ref().expect("a coarsened record");
        assert_eq!(coarsened.width, 10 * SECOND);
        assert_eq!(
            coarsened.span,
            Span {
                first_seq: 3,
                last_seq: 4,
                records: 2,
                readings: 4,
                earliest: Some(0),
                latest: Some(12 * s),
                first_encoded_at: 3000
            }
        );
    }

    #[test]
    fn nan_readings_are_counted_in_the_span_but_in_no_window() {
        let merged = merge(&[raw(1, &[("t", 0, f64::NAN), ("t", 1, 4.0)])], SECOND, 0);
        assert_eq!(merged.coarsened.expect("coarsened").span.readings, 2);
        assert_eq!(merged.aggregates[0].windows[0].count, 1);
    }

    #[test]
    fn coarsen_picks_the_finest_width_that_halves_and_refuses_when_nothing_shrinks() {
        // One reading a second for ten minutes: 1 s windows are larger than the readings,
        // 10 s windows are not half, 1 min windows are.
        let readings: Vec<(&str, Nanos, f64)> =
            (0..600).map(|i| ("plant/boiler/temp", i * SECOND as i64, 20.0 + (i % 7) as f64 * 0.5)).collect();
        let input = raw(1, &readings);
        let bytes = weir_record::write(Encoding::Cbor, &input).expect("encodable").len();
        let coarsening = coarsen(std::slice::from_ref(&input), bytes, Encoding::Cbor, 0).expect("shrinks");
        assert!(coarsening.body.len() <= bytes / 2, "{} of {bytes}", coarsening.body.len());
        let width = coarsening.record.coarsened.as_ref().expect("coarsened").width;
        assert!(width > SECOND, "1 s windows do not shrink one reading a second");
        let decoded = weir_record::read(&coarsening.body).expect("decodable");
        assert_eq!(decoded, coarsening.record);
        // A lone reading cannot shrink: an aggregate window is larger than the reading.
        let tiny = raw(2, &[("t", 0, 1.0)]);
        let tiny_bytes = weir_record::write(Encoding::Cbor, &tiny).expect("encodable").len();
        assert!(coarsen(&[tiny], tiny_bytes, Encoding::Cbor, 0).is_none());
    }

    /// A naive reference: the statistics of a window recomputed from the readings.
    fn reference(values: &[f64]) -> (u64, f64, f64, f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let m2 = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (values.len() as u64, values.iter().sum(), min, max, m2)
    }

    proptest! {
        /// Coarsening in steps (records into fine windows, then those with more records into
        /// coarser ones) equals aggregating all readings at once, and each equals a naive
        /// recomputation.
        #[test]
        fn merging_coarsened_records_equals_aggregating_the_readings(
            readings in proptest::collection::vec((0u8..3, 0i64..7_200, -1e3f64..1e3), 1..200),
            split in 0usize..200,
        ) {
            let s = SECOND as i64;
            let named: Vec<(String, Nanos, f64)> =
                readings.iter().map(|(series, t, v)| (format!("s{series}"), t * s / 3, *v)).collect();
            let as_refs: Vec<(&str, Nanos, f64)> = named.iter().map(|(n, t, v)| (n.as_str(), *t, *v)).collect();
            let split = split.min(as_refs.len());
            let (a, b) = as_refs.split_at(split);
            let mut inputs = Vec::new();
            if !a.is_empty() { inputs.push(raw(1, a)); }
            if !b.is_empty() { inputs.push(raw(2, b)); }
            let fine = merge(&inputs[..1], 10 * SECOND, 0);
            let mut stepwise_inputs = vec![fine];
            stepwise_inputs.extend(inputs.iter().skip(1).cloned());
            let stepwise = merge(&stepwise_inputs, 600 * SECOND, 0);
            let direct = merge(&inputs, 600 * SECOND, 0);
            prop_assert_eq!(&stepwise.coarsened, &direct.coarsened);
            for aggregate in &direct.aggregates {
                for w in &aggregate.windows {
                    let values: Vec<f64> = as_refs.iter()
                        .filter(|(n, t, _)| *n == aggregate.series.name && window_start(*t, 600 * SECOND) == w.start)
                        .map(|(_, _, v)| *v).collect();
                    let (count, sum, min, max, m2) = reference(&values);
                    prop_assert_eq!((w.count, w.min, w.max), (count, min, max));
                    prop_assert!((w.sum - sum).abs() <= 1e-9 * (1.0 + sum.abs()));
                    prop_assert!((w.m2 - m2).abs() <= 1e-6 * (1.0 + m2.abs()));
                    let other = window(&stepwise, &aggregate.series.name, w.start);
                    prop_assert_eq!((other.count, other.min, other.max), (count, min, max));
                    prop_assert!((other.sum - sum).abs() <= 1e-9 * (1.0 + sum.abs()));
                    prop_assert!((other.m2 - m2).abs() <= 1e-6 * (1.0 + m2.abs()));
                }
            }
        }
    }

    /// One emission of a window of series `s` holding one reading.
    fn emission(key: Nanos, revision: u32) -> WindowValue {
        WindowValue {
            key,
            start: key,
            end: key + 5 * SECOND as i64,
            revision,
            stats: Window { start: key, count: 1, sum: 1.0, min: 1.0, max: 1.0, m2: 0.0 },
            first: None,
            last: None,
            sketch: weir_record::Sketch::None,
            custom: None,
        }
    }

    /// A record of window emissions of series `s`.
    fn emitted(seq: u64, emissions: &[(Nanos, u32)]) -> Record {
        let windows = emissions.iter().map(|&(key, revision)| emission(key, revision)).collect();
        Record { windows: vec![WindowSeries { series: Series::named("s"), windows }], ..raw(seq, &[]) }
    }

    #[test]
    fn coarsening_keeps_the_latest_revision_of_each_window() {
        let eight = 8 * SECOND as i64;
        let inputs = [emitted(5, &[(0, 0), (eight, 0)]), emitted(6, &[(0, 1)]), emitted(7, &[(eight, 2), (0, 1)])];
        let merged = merge(&inputs, 60 * SECOND, 7);
        let keys: Vec<(Nanos, u32)> = merged.windows[0].windows.iter().map(|w| (w.key, w.revision)).collect();
        assert_eq!(keys, [(0, 1), (eight, 2)]);
    }
}
