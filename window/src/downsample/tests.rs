//! The downsamplers' guarantees, checked on random series against the readings they dropped.

use proptest::prelude::*;

use super::*;

/// Runs a streaming downsampler over `points` and finishes it.
fn run<D>(
    points: &[Point],
    mut state: D,
    push: impl Fn(&mut D, Point, &mut Vec<Point>),
    finish: impl Fn(&mut D, &mut Vec<Point>),
) -> Vec<Point> {
    let mut out = Vec::new();
    for point in points {
        push(&mut state, *point, &mut out);
    }
    finish(&mut state, &mut out);
    out
}

fn deadband(points: &[Point], band: Band) -> Vec<Point> {
    run(points, Deadband::new(band), Deadband::push, Deadband::finish)
}

fn swinging_door(points: &[Point], max_error: f64) -> Vec<Point> {
    run(points, SwingingDoor::new(max_error), SwingingDoor::push, SwingingDoor::finish)
}

/// Whether `kept` is `points` with some left out, order unchanged.
fn is_subsequence(kept: &[Point], points: &[Point]) -> bool {
    let mut rest = points.iter();
    kept.iter().all(|k| rest.any(|p| p == k))
}

/// For each reading of `points` left out of `kept`: the kept readings just before and after it.
fn dropped_between<'a>(points: &'a [Point], kept: &'a [Point]) -> Vec<(Point, Point, Point)> {
    let mut result = Vec::new();
    let mut next_kept = 0;
    for point in points {
        if next_kept < kept.len() && kept[next_kept] == *point {
            next_kept += 1;
            continue;
        }
        assert!(next_kept > 0 && next_kept < kept.len(), "the first and last readings are kept");
        result.push((kept[next_kept - 1], *point, kept[next_kept]));
    }
    result
}

fn interpolate(a: Point, b: Point, ts: Nanos) -> f64 {
    if b.ts == a.ts {
        return a.value;
    }
    a.value + (b.value - a.value) * (ts - a.ts) as f64 / (b.ts - a.ts) as f64
}

/// Strictly increasing times (1 ms – 10 s apart) and a random walk with occasional jumps.
fn series() -> impl Strategy<Value = Vec<Point>> {
    prop::collection::vec((1i64..10_000, -5.0f64..5.0, prop::bool::weighted(0.05)), 2..300).prop_map(|steps| {
        let (mut ts, mut value) = (1_700_000_000_000_000_000i64, 20.0);
        steps
            .into_iter()
            .map(|(gap_ms, step, jump)| {
                ts += gap_ms * 1_000_000;
                value += if jump { step * 40.0 } else { step };
                Point::new(ts, value)
            })
            .collect()
    })
}

/// Slack for floating-point rounding in the bound checks.
fn slack(bound: f64, value: f64) -> f64 {
    bound + 1e-9 * (1.0 + value.abs())
}

proptest! {
    #[test]
    fn deadband_keeps_every_dropped_reading_within_its_band(points in series(), width in 0.0f64..20.0) {
        let kept = deadband(&points, Band::Absolute(width));
        prop_assert!(is_subsequence(&kept, &points));
        prop_assert_eq!(kept.first(), points.first());
        prop_assert_eq!(kept.last(), points.last());
        for (before, dropped, after) in dropped_between(&points, &kept) {
            // Sample and hold: within the band of the last kept value before it.
            prop_assert!((dropped.value - before.value).abs() <= slack(width, dropped.value));
            // Linear interpolation: within twice the band.
            let line = interpolate(before, after, dropped.ts);
            prop_assert!((dropped.value - line).abs() <= slack(2.0 * width, dropped.value), "{dropped:?} vs line {line}");
        }
    }

    #[test]
    fn relative_deadband_keeps_every_dropped_reading_within_its_fraction(points in series(), fraction in 0.0f64..0.5) {
        let kept = deadband(&points, Band::Relative(fraction));
        prop_assert!(is_subsequence(&kept, &points));
        prop_assert_eq!(kept.last(), points.last());
        for (before, dropped, _) in dropped_between(&points, &kept) {
            prop_assert!((dropped.value - before.value).abs() <= slack(fraction * before.value.abs(), dropped.value));
        }
    }

    #[test]
    fn swinging_door_keeps_every_dropped_reading_within_the_error_of_the_line(points in series(), max_error in 0.0f64..20.0) {
        let kept = swinging_door(&points, max_error);
        prop_assert!(is_subsequence(&kept, &points));
        prop_assert_eq!(kept.first(), points.first());
        prop_assert_eq!(kept.last(), points.last());
        for (before, dropped, after) in dropped_between(&points, &kept) {
            let line = interpolate(before, after, dropped.ts);
            prop_assert!((dropped.value - line).abs() <= slack(max_error, dropped.value), "{dropped:?} vs line {line}");
        }
    }

    #[test]
    fn swinging_door_state_survives_a_round_trip_mid_series(points in series(), max_error in 0.0f64..5.0, cut in 0usize..300) {
        let cut = cut.min(points.len());
        let whole = swinging_door(&points, max_error);
        let mut door = SwingingDoor::new(max_error);
        let mut out = Vec::new();
        for point in &points[..cut] {
            door.push(*point, &mut out);
        }
        let mut door: SwingingDoor = serde_json::from_str(&serde_json::to_string(&door).expect("serialises")).expect("parses");
        for point in &points[cut..] {
            door.push(*point, &mut out);
        }
        door.finish(&mut out);
        prop_assert_eq!(out, whole, "a checkpoint in between changes nothing");
    }

    #[test]
    fn lttb_keeps_the_first_the_last_and_the_requested_count(points in series(), threshold in 0usize..100) {
        let kept = lttb(&points, threshold);
        prop_assert!(is_subsequence(&kept, &points));
        if threshold >= 3 && points.len() > threshold {
            prop_assert_eq!(kept.len(), threshold);
        } else {
            prop_assert_eq!(&kept, &points);
        }
        prop_assert_eq!(kept.first(), points.first());
        prop_assert_eq!(kept.last(), points.last());
    }

    #[test]
    fn lttb_windows_keep_each_window_reduced_on_its_own_even_across_a_checkpoint(
        points in series(),
        width_s in 1i64..60,
        threshold in 3usize..20,
        cut in 0usize..300,
    ) {
        let width = width_s * 1_000_000_000;
        let mut windows = LttbWindows::new(width, threshold);
        let mut out = Vec::new();
        for (i, point) in points.iter().enumerate() {
            if i == cut {
                let saved = serde_json::to_string(&windows).expect("serialises");
                windows = serde_json::from_str(&saved).expect("deserialises");
            }
            windows.push(*point, &mut out);
        }
        windows.finish(&mut out);
        let mut want = Vec::new();
        for chunk in points.chunk_by(|a, b| a.ts.div_euclid(width) == b.ts.div_euclid(width)) {
            let kept = lttb(chunk, threshold);
            prop_assert!(kept.len() == chunk.len().min(threshold));
            prop_assert!(kept.first() == chunk.first() && kept.last() == chunk.last(), "each window's ends are kept");
            want.extend(kept);
        }
        prop_assert_eq!(out, want);
    }
}

#[test]
fn a_straight_line_is_kept_as_its_two_ends() {
    let points: Vec<Point> = (0..100).map(|i| Point::new(i * 1_000, 3.0 + 0.5 * i as f64)).collect();
    assert_eq!(swinging_door(&points, 0.01), vec![points[0], points[99]]);
}

#[test]
fn a_step_is_kept_as_a_step() {
    let points: Vec<Point> = (0..10).map(|i| Point::new(i, if i < 5 { 1.0 } else { 9.0 })).collect();
    assert_eq!(deadband(&points, Band::Absolute(0.5)), vec![points[0], points[4], points[5], points[9]]);
    assert_eq!(swinging_door(&points, 0.5), vec![points[0], points[4], points[5], points[9]]);
}

#[test]
fn nan_readings_come_through_and_change_nothing() {
    let nan = Point::new(2, f64::NAN);
    let points = [Point::new(1, 1.0), nan, Point::new(3, 1.1), Point::new(4, 1.2)];
    let kept = deadband(&points, Band::Absolute(0.5));
    assert_eq!(kept.len(), 3);
    assert!(kept[1].value.is_nan());
    assert_eq!((kept[0], kept[2]), (points[0], points[3]));
    let kept = swinging_door(&points, 0.5);
    assert_eq!(kept.len(), 3);
    let kept = lttb(&[Point::new(1, 1.0), nan, Point::new(3, 5.0), Point::new(4, 1.0), Point::new(5, 2.0)], 3);
    assert_eq!(kept.len(), 4, "three finite readings chosen, the NaN kept in place");
    assert!(kept[1].value.is_nan());
}

#[test]
fn readings_at_the_same_time_outside_the_error_are_kept() {
    let points = [Point::new(1, 1.0), Point::new(1, 5.0), Point::new(2, 5.0)];
    let kept = swinging_door(&points, 0.5);
    assert_eq!(kept, points.to_vec());
}
