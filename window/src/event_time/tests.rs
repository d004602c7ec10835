//! Windows against a naive recomputation: in-order input emits each window once with the right
//! aggregate; input shuffled within the allowed lateness ends with the same windows; readings
//! beyond it go to the side output; a checkpoint mid-stream changes nothing.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::accumulator::test_accumulator::{CountSum, decode};
use crate::aggregate::Summary;

const SECOND: i64 = 1_000_000_000;

fn spec(kind: WindowKind, lateness_s: i64) -> WindowSpec {
    WindowSpec {
        kind,
        allowed_lateness: (lateness_s * SECOND) as u64,
        idle_timeout: (3600 * SECOND) as u64,
        custom_aggregate: false,
    }
}

fn kinds() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        (1u64..20).prop_map(|w| WindowKind::Tumbling { width: w * SECOND as u64 }),
        (1u64..5, 1u64..5).prop_map(|(slide, n)| WindowKind::Sliding {
            width: slide * n * SECOND as u64,
            slide: slide * SECOND as u64
        }),
        (1u64..10).prop_map(|gap| WindowKind::Session { gap: gap * SECOND as u64 }),
    ]
}

/// Readings of up to three series, sorted by time: steps of 0–4 s (some equal times), integer
/// values so sums are exact whatever the order.
fn sorted_readings() -> impl Strategy<Value = Vec<(String, Nanos, f64)>> {
    prop::collection::vec((0usize..3, 0i64..4_000, -100i32..100), 1..200).prop_map(|steps| {
        let mut ts = 1_700_000_000 * SECOND;
        steps
            .into_iter()
            .map(|(series, step_ms, value)| {
                ts += step_ms * 1_000_000;
                (format!("s{series}"), ts, f64::from(value))
            })
            .collect()
    })
}

/// A window's series, start and end.
type Span = (String, Nanos, Nanos);

/// Final windows: the last revision of each key, retracted ones left out, with their statistics
/// and quantiles.
fn finals(results: &[WindowResult]) -> BTreeMap<Span, (Summary, Vec<Option<f64>>)> {
    let mut last: BTreeMap<(String, Nanos), &WindowResult> = BTreeMap::new();
    for result in results {
        let entry = last.entry((result.series.clone(), result.key)).or_insert(result);
        if result.revision >= entry.revision {
            *entry = result;
        }
    }
    last.into_values()
        .filter(|r| !r.retracted)
        .map(|r| {
            let quantiles = [0.5, 0.9, 0.99].iter().map(|q| r.aggregate.quantile(*q)).collect();
            ((r.series.clone(), r.start, r.end), (r.aggregate.summary().expect("non-empty"), quantiles))
        })
        .collect()
}

/// Feeds `readings` in the given order, flushing after each, then flushes with every series idle.
fn run(spec: &WindowSpec, readings: &[(String, Nanos, f64)]) -> (Vec<WindowResult>, Vec<TooLate>) {
    let mut windows = Windows::default();
    let (mut results, mut late) = (Vec::new(), Vec::new());
    for (i, (series, ts, value)) in readings.iter().enumerate() {
        if let Err(too_late) = windows.add(spec, series, *ts, *value, i as Nanos) {
            late.push(too_late);
        }
        results.extend(windows.flush(spec, i as Nanos));
    }
    results.extend(windows.flush(spec, Nanos::MAX / 2));
    (results, late)
}

/// The windows each reading belongs to, computed from scratch over the sorted readings.
fn naive(kind: WindowKind, readings: &[(String, Nanos, f64)]) -> BTreeMap<Span, Vec<(Nanos, f64)>> {
    let mut windows: BTreeMap<Span, Vec<(Nanos, f64)>> = BTreeMap::new();
    match kind {
        WindowKind::Session { gap } => {
            let mut by_series: BTreeMap<&str, Vec<(Nanos, f64)>> = BTreeMap::new();
            for (series, ts, value) in readings {
                by_series.entry(series).or_default().push((*ts, *value));
            }
            for (series, mut points) in by_series {
                points.sort_by_key(|(ts, _)| *ts);
                let mut session: Vec<(Nanos, f64)> = Vec::new();
                for point in points {
                    if session.last().is_some_and(|(last, _)| point.0 - last >= gap as i64) {
                        let (start, end) = (session[0].0, session.last().expect("not empty").0 + gap as i64);
                        windows.insert((series.to_owned(), start, end), std::mem::take(&mut session));
                    }
                    session.push(point);
                }
                let (start, end) = (session[0].0, session.last().expect("not empty").0 + gap as i64);
                windows.insert((series.to_owned(), start, end), session);
            }
        }
        kind => {
            for (series, ts, value) in readings {
                for (start, end) in kind.fixed_windows(*ts) {
                    windows.entry((series.clone(), start, end)).or_default().push((*ts, *value));
                }
            }
        }
    }
    windows
}

fn summary_of(points: &[(Nanos, f64)]) -> Summary {
    let mut aggregate = Aggregate::default();
    for (ts, value) in points {
        aggregate.add(*ts, *value);
    }
    aggregate.summary().expect("not empty")
}

/// Same statistics; integer inputs keep sums exact, the deviation is compared up to rounding.
fn same(a: &Summary, b: &Summary) -> bool {
    (a.count, a.sum, a.min, a.max, a.first, a.last) == (b.count, b.sum, b.min, b.max, b.first, b.last)
        && (a.stddev - b.stddev).abs() <= 1e-9 * a.stddev.abs().max(1.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn in_order_readings_emit_each_window_once_with_its_exact_aggregate(kind in kinds(), readings in sorted_readings()) {
        let spec = spec(kind, 0);
        let (results, late) = run(&spec, &readings);
        prop_assert!(late.is_empty());
        prop_assert!(results.iter().all(|r| r.revision == 0 && !r.retracted), "no corrections for in-order input");
        let want = naive(kind, &readings);
        prop_assert_eq!(results.len(), want.len());
        for result in &results {
            let points = want.get(&(result.series.clone(), result.start, result.end));
            prop_assert!(points.is_some(), "unexpected window {} [{}, {})", result.series, result.start, result.end);
            let want = summary_of(points.expect("checked"));
            prop_assert!(same(&result.aggregate.summary().expect("not empty"), &want));
        }
    }

    #[test]
    fn readings_shuffled_within_the_lateness_end_with_the_windows_of_sorted_input(
        kind in kinds(),
        readings in sorted_readings(),
        delays in prop::collection::vec(0i64..5_000, 200),
    ) {
        // Each reading arrives up to 5 s after its time: never more than 5 s behind the newest.
        let spec = spec(kind, 5);
        let mut shuffled: Vec<(Nanos, usize)> =
            readings.iter().enumerate().map(|(i, (_, ts, _))| (ts + delays[i] * 1_000_000, i)).collect();
        shuffled.sort();
        let shuffled: Vec<_> = shuffled.into_iter().map(|(_, i)| readings[i].clone()).collect();
        let (sorted_results, sorted_late) = run(&spec, &readings);
        let (shuffled_results, shuffled_late) = run(&spec, &shuffled);
        prop_assert!(sorted_late.is_empty() && shuffled_late.is_empty());
        let (want, got) = (finals(&sorted_results), finals(&shuffled_results));
        prop_assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
        for (key, (want, want_quantiles)) in &want {
            let (got, got_quantiles) = &got[key];
            prop_assert!(same(got, want), "{:?}: {:?} vs {:?}", key, got, want);
            prop_assert_eq!(got_quantiles, want_quantiles);
        }
    }

    #[test]
    fn a_checkpoint_mid_stream_changes_nothing(kind in kinds(), readings in sorted_readings(), cut in any::<prop::sample::Index>()) {
        let spec = spec(kind, 2);
        let cut = cut.index(readings.len());
        let (uninterrupted, _) = run(&spec, &readings);
        let mut windows = Windows::default();
        let mut results = Vec::new();
        for (i, (series, ts, value)) in readings.iter().enumerate() {
            if i == cut {
                let saved = serde_json::to_vec(&windows).expect("serialises");
                windows = serde_json::from_slice(&saved).expect("deserialises");
            }
            windows.add(&spec, series, *ts, *value, i as Nanos).expect("in order");
            results.extend(windows.flush(&spec, i as Nanos));
        }
        results.extend(windows.flush(&spec, Nanos::MAX / 2));
        let (got, want) = (finals(&results), finals(&uninterrupted));
        prop_assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
        prop_assert_eq!(results.len(), uninterrupted.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Shuffled within the lateness, with session joins and a checkpoint mid-stream: every
    /// emission's custom partial holds exactly the readings of its built-in aggregate.
    #[test]
    fn a_custom_aggregate_holds_exactly_the_readings_of_its_window(
        kind in kinds(),
        readings in sorted_readings(),
        delays in prop::collection::vec(0i64..5_000, 200),
        cut in any::<prop::sample::Index>(),
    ) {
        let spec = WindowSpec { custom_aggregate: true, ..spec(kind, 5) };
        let mut arrival: Vec<(Nanos, usize)> =
            readings.iter().enumerate().map(|(i, (_, ts, _))| (ts + delays[i] * 1_000_000, i)).collect();
        arrival.sort();
        let cut = cut.index(readings.len());
        let mut accumulator = CountSum::default();
        let mut windows = Windows::default();
        let mut results = Vec::new();
        for (n, (_, i)) in arrival.iter().enumerate() {
            if n == cut {
                let saved = serde_json::to_vec(&windows).expect("serialises");
                windows = serde_json::from_slice(&saved).expect("deserialises");
            }
            let (series, ts, value) = &readings[*i];
            windows.add(&spec, series, *ts, *value, n as Nanos).expect("within the lateness");
            // Fold every other reading, so some folds see several readings and joined sessions.
            if n % 2 == 1 {
                prop_assert!(windows.fold_custom(&mut accumulator).is_empty());
                results.extend(windows.flush(&spec, n as Nanos));
            }
        }
        prop_assert!(windows.fold_custom(&mut accumulator).is_empty());
        results.extend(windows.flush(&spec, Nanos::MAX / 2));
        prop_assert!(!results.is_empty());
        for result in &results {
            if result.retracted {
                prop_assert!(result.custom.is_none());
                continue;
            }
            let custom = result.custom.as_ref().expect("custom aggregation is on");
            prop_assert_eq!(custom.missing(), 0);
            let summary = result.aggregate.summary().expect("not empty");
            prop_assert_eq!(decode(custom.partial().expect("folded")), (summary.count, summary.sum));
            prop_assert_eq!(custom.folded(), summary.count);
        }
    }
}

#[test]
fn readings_a_custom_aggregate_refuses_are_missing_from_it_and_given_back() {
    let spec = WindowSpec { custom_aggregate: true, ..spec(WindowKind::Tumbling { width: 10 * SECOND as u64 }, 0) };
    let mut windows = Windows::default();
    for (ts, value) in [(1, 1.0), (2, 666.0), (3, 2.0)] {
        windows.add(&spec, "t", ts * SECOND, value, 0).expect("accepted");
    }
    windows.add(&spec, "u", SECOND, 5.0, 0).expect("accepted");
    let failures = windows.fold_custom(&mut CountSum::default());
    assert_eq!(failures.len(), 1);
    assert_eq!((failures[0].series.as_str(), failures[0].key, failures[0].missing), ("t", 0, 3));
    assert_eq!(failures[0].values, [1.0, 666.0, 2.0], "the refused readings come back");
    let emitted = windows.flush(&spec, Nanos::MAX / 2);
    let t = emitted.iter().find(|r| r.series == "t").and_then(|r| r.custom.clone()).expect("t emitted");
    assert_eq!((t.folded(), t.missing(), t.partial().map(decode)), (0, 3, Some((0, 0.0))));
    assert_eq!(t.missing() + t.folded(), 3, "every reading is either in the partial or missing");
    let u = emitted.iter().find(|r| r.series == "u").and_then(|r| r.custom.clone()).expect("u emitted");
    assert_eq!((u.folded(), u.missing()), (1, 0));
}

#[test]
fn a_late_reading_within_the_lateness_gives_a_correction() {
    let spec = spec(WindowKind::Tumbling { width: 10 * SECOND as u64 }, 30);
    let mut windows = Windows::default();
    windows.add(&spec, "t", SECOND, 1.0, 0).expect("accepted");
    windows.add(&spec, "t", 12 * SECOND, 2.0, 0).expect("accepted");
    let first = windows.flush(&spec, 0);
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].start, first[0].revision, first[0].aggregate.count()), (0, 0, 1));

    windows.add(&spec, "t", 5 * SECOND, 3.0, 1).expect("accepted");
    windows.add(&spec, "t", 6 * SECOND, 4.0, 1).expect("accepted");
    let correction = windows.flush(&spec, 1);
    assert_eq!(correction.len(), 1, "one correction however many late readings");
    let summary = correction[0].aggregate.summary().expect("not empty");
    assert_eq!((correction[0].start, correction[0].revision, summary.count, summary.sum), (0, 1, 3, 8.0));
}

#[test]
fn a_reading_beyond_the_lateness_goes_to_the_side_output() {
    let spec = spec(WindowKind::Tumbling { width: 10 * SECOND as u64 }, 5);
    let mut windows = Windows::default();
    windows.add(&spec, "t", SECOND, 1.0, 0).expect("accepted");
    windows.add(&spec, "t", 30 * SECOND, 2.0, 0).expect("accepted");
    let emitted = windows.flush(&spec, 0);
    assert_eq!(emitted.len(), 1);
    let late = windows.add(&spec, "t", 2 * SECOND, 9.0, 1).expect_err("too late");
    assert_eq!(late, TooLate { series: "t".into(), ts: 2 * SECOND, value: 9.0, watermark: 25 * SECOND });
    assert_eq!(windows.too_late, 1);
    assert!(windows.flush(&spec, 1).is_empty(), "nothing changes");
    // Still within the lateness of the newest reading: accepted.
    windows.add(&spec, "t", 26 * SECOND, 3.0, 2).expect("accepted");
}

#[test]
fn a_quiet_series_is_emitted_after_the_idle_timeout_and_then_forgotten() {
    let mut spec = spec(WindowKind::Tumbling { width: 10 * SECOND as u64 }, 5);
    spec.idle_timeout = 60 * SECOND as u64;
    let mut windows = Windows::default();
    windows.add(&spec, "quiet", SECOND, 1.0, 0).expect("accepted");
    assert!(windows.flush(&spec, 59 * SECOND).is_empty());
    let emitted = windows.flush(&spec, 60 * SECOND);
    assert_eq!((emitted.len(), emitted[0].revision), (1, 0));
    assert!(windows.flush(&spec, 61 * SECOND).is_empty(), "emitted once");
    windows.flush(&spec, 65 * SECOND);
    assert!(windows.series.is_empty(), "forgotten after the idle timeout plus the lateness");
}

#[test]
fn a_late_reading_joining_two_sessions_retracts_the_later_one() {
    let spec = spec(WindowKind::Session { gap: 5 * SECOND as u64 }, 60);
    let mut windows = Windows::default();
    windows.add(&spec, "s", 0, 1.0, 0).expect("accepted");
    windows.add(&spec, "s", 8 * SECOND, 2.0, 0).expect("accepted");
    windows.add(&spec, "s", 20 * SECOND, 3.0, 0).expect("accepted");
    let emitted = windows.flush(&spec, 0);
    assert_eq!(
        emitted.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>(),
        [(0, 5 * SECOND), (8 * SECOND, 13 * SECOND)]
    );

    windows.add(&spec, "s", 4 * SECOND, 4.0, 1).expect("accepted");
    let joined = windows.flush(&spec, 1);
    assert_eq!(joined.len(), 2);
    let (kept, retracted) = (&joined[0], &joined[1]);
    assert_eq!((kept.key, kept.start, kept.end, kept.revision, kept.retracted), (0, 0, 13 * SECOND, 1, false));
    assert_eq!(kept.aggregate.summary().expect("not empty").sum, 7.0);
    assert_eq!((retracted.key, retracted.revision, retracted.retracted), (8 * SECOND, 1, true));
}
