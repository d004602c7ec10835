//! The aggregate's guarantees against a naive recomputation over the same readings.

use proptest::prelude::*;

use super::*;

/// Readings at times within a minute, values across several magnitudes and both signs, a few NaN.
fn readings() -> impl Strategy<Value = Vec<(Nanos, f64)>> {
    let value = prop_oneof![
        8 => -1000.0f64..1000.0,
        2 => (-6i32..7, 1.0f64..10.0, any::<bool>()).prop_map(|(exp, m, neg)| if neg { -m } else { m } * 10f64.powi(exp)),
        1 => Just(0.0),
        1 => Just(f64::NAN),
    ];
    prop::collection::vec((0i64..60_000_000_000, value), 0..400)
}

fn aggregate_of(readings: &[(Nanos, f64)]) -> Aggregate {
    let mut aggregate = Aggregate::default();
    for (ts, value) in readings {
        aggregate.add(*ts, *value);
    }
    aggregate
}

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-9 * scale.max(1.0)
}

/// The exact statistics must match; the floating-point ones up to rounding relative to the
/// largest magnitude involved.
fn assert_same(got: &Summary, want: &Summary, scale: f64) {
    assert_eq!(
        (got.count, got.min, got.max, got.first, got.last),
        (want.count, want.min, want.max, want.first, want.last)
    );
    assert!(close(got.sum, want.sum, scale * got.count as f64), "sum {} vs {}", got.sum, want.sum);
    assert!(close(got.mean, want.mean, scale), "mean {} vs {}", got.mean, want.mean);
    assert!(close(got.stddev, want.stddev, scale), "stddev {} vs {}", got.stddev, want.stddev);
}

fn naive(readings: &[(Nanos, f64)]) -> Option<Summary> {
    let kept: Vec<(Nanos, f64)> = readings.iter().copied().filter(|(_, v)| !v.is_nan()).collect();
    if kept.is_empty() {
        return None;
    }
    let count = kept.len() as f64;
    let sum: f64 = kept.iter().map(|(_, v)| v).sum();
    let mean = sum / count;
    let variance = kept.iter().map(|(_, v)| (v - mean) * (v - mean)).sum::<f64>() / count;
    let by_time = |(ts, v): &(Nanos, f64)| (*ts, OrderedValue(*v));
    let first = kept.iter().min_by_key(|r| by_time(r)).expect("not empty");
    let last = kept.iter().max_by_key(|r| by_time(r)).expect("not empty");
    Some(Summary {
        count: kept.len() as u64,
        sum,
        min: kept.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min),
        max: kept.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max),
        mean,
        stddev: variance.sqrt(),
        first: TimedValue { ts: first.0, value: first.1 },
        last: TimedValue { ts: last.0, value: last.1 },
    })
}

fn magnitude(readings: &[(Nanos, f64)]) -> f64 {
    readings.iter().map(|(_, v)| v.abs()).filter(|v| !v.is_nan()).fold(0.0, f64::max)
}

/// The value of rank `⌊q·(n−1)⌋` among the non-NaN readings.
fn true_quantile(readings: &[(Nanos, f64)], q: f64) -> f64 {
    let mut values: Vec<f64> = readings.iter().map(|(_, v)| *v).filter(|v| !v.is_nan()).collect();
    values.sort_by(f64::total_cmp);
    values[(q * (values.len() - 1) as f64) as usize]
}

const QUANTILES: [f64; 7] = [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_aggregate_equals_a_naive_recomputation(readings in readings()) {
        let aggregate = aggregate_of(&readings);
        match (aggregate.summary(), naive(&readings)) {
            (Some(got), Some(want)) => assert_same(&got, &want, magnitude(&readings)),
            (got, want) => prop_assert_eq!(got, want),
        }
    }

    #[test]
    fn merging_equals_aggregating_the_union(readings in readings(), cut in any::<prop::sample::Index>(), order in any::<bool>()) {
        let cut = if readings.is_empty() { 0 } else { cut.index(readings.len() + 1) };
        let (a, b) = readings.split_at(cut);
        let mut merged = aggregate_of(if order { a } else { b });
        merged.merge(&aggregate_of(if order { b } else { a }));
        let whole = aggregate_of(&readings);
        match (merged.summary(), whole.summary()) {
            (Some(got), Some(want)) => assert_same(&got, &want, magnitude(&readings)),
            (got, want) => prop_assert_eq!(got, want),
        }
        for q in QUANTILES {
            prop_assert_eq!(merged.quantile(q), whole.quantile(q), "quantile {}", q);
        }
    }

    #[test]
    fn sketch_quantiles_are_within_the_stated_relative_error(readings in readings()) {
        let aggregate = aggregate_of(&readings);
        if aggregate.count() == 0 {
            prop_assert_eq!(aggregate.quantile(0.5), None);
            return Ok(());
        }
        for q in QUANTILES {
            let want = true_quantile(&readings, q);
            let got = aggregate.quantile(q).expect("not empty");
            let allowed = if want.abs() <= SKETCH_MIN_MAGNITUDE { SKETCH_MIN_MAGNITUDE } else { SKETCH_ALPHA * want.abs() };
            // A hair of slack for the logarithm's own rounding at bin edges.
            prop_assert!((got - want).abs() <= allowed * (1.0 + 1e-9), "q {}: {} vs {}", q, got, want);
        }
    }
}

#[test]
fn an_empty_aggregate_reports_nothing() {
    let aggregate = Aggregate::default();
    assert_eq!(aggregate.summary(), None);
    assert_eq!(aggregate.quantile(0.99), None);
    let mut only_nan = Aggregate::default();
    only_nan.add(1, f64::NAN);
    assert_eq!(only_nan.count(), 0);
}

#[test]
fn first_and_last_break_ties_by_value_whatever_the_arrival_order() {
    let mut forward = Aggregate::default();
    let mut backward = Aggregate::default();
    for (ts, value) in [(5, 2.0), (5, 1.0), (9, 3.0), (9, 4.0)] {
        forward.add(ts, value);
    }
    for (ts, value) in [(9, 4.0), (9, 3.0), (5, 1.0), (5, 2.0)] {
        backward.add(ts, value);
    }
    let (forward, backward) = (forward.summary().expect("not empty"), backward.summary().expect("not empty"));
    assert_eq!(forward.first, TimedValue { ts: 5, value: 1.0 });
    assert_eq!(forward.last, TimedValue { ts: 9, value: 4.0 });
    assert_eq!((forward.first, forward.last), (backward.first, backward.last));
}

#[test]
fn the_sketch_holds_every_reading_with_its_sign() {
    let mut aggregate = Aggregate::default();
    for value in [1.0, 10.0, 100.0, -5.0, 0.0] {
        aggregate.add(0, value);
    }
    assert_eq!(aggregate.sketch().count(), 5);
    assert_eq!(aggregate.sketch().quantile(1.0).ok().flatten(), aggregate.quantile(1.0));
    assert!(aggregate.quantile(0.0).is_some_and(|low| low < 0.0));
}
