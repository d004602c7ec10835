//! Downsampling of one series: deadband, swinging-door trending and LTTB. Pure: no I/O, no clock.
//!
//! Each downsampler keeps fewer points than it is given, with a stated guarantee that the tests
//! check:
//! - [`Deadband`] (streaming) keeps a reading when it leaves the band around the last kept value,
//!   and then also the reading before it, so a step is kept as a step. Every dropped reading is
//!   within the band of the last kept value before it (sample-and-hold), and within twice the band
//!   of the line through the kept readings around it (linear interpolation).
//! - [`SwingingDoor`] (streaming) keeps a reading only when no straight line from the last kept
//!   reading can pass within `max_error` of every reading since; every dropped reading is within
//!   `max_error` of the line through the kept readings around it.
//! - [`lttb`] (per window) keeps a fixed number of readings that preserve the shape of the
//!   series (largest-triangle-three-buckets), always including the first and the last;
//!   [`LttbWindows`] applies it streaming, per tumbling event-time window.
//!
//! **Invariants:** readings go in with non-decreasing event times (the window stage orders them);
//! kept readings come out unchanged and in order; a NaN value is kept as it is and changes no
//! state (it marks a sensor fault, which downsampling must not hide). The streaming state is
//! plain data (serde), so the window stage can commit it with each group.

use serde::{Deserialize, Serialize};

use crate::Nanos;

/// One reading of a series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Event time.
    pub ts: Nanos,
    /// Value.
    pub value: f64,
}

impl Point {
    /// A reading.
    pub fn new(ts: Nanos, value: f64) -> Self {
        Self { ts, value }
    }
}

/// How far a deadband lets values move before a reading is kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Band {
    /// Keep a reading when it differs from the last kept value by more than this.
    Absolute(f64),
    /// Keep a reading when it differs from the last kept value by more than this fraction of
    /// that value's magnitude.
    Relative(f64),
}

impl Band {
    /// The band's half-width around `kept`.
    pub fn width_around(self, kept: f64) -> f64 {
        match self {
            Band::Absolute(width) => width,
            Band::Relative(fraction) => fraction * kept.abs(),
        }
    }
}

/// Streaming deadband (exception reporting) of one series; see the module doc for its guarantee.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deadband {
    band: Band,
    /// The last kept reading.
    kept: Option<Point>,
    /// The last reading seen and dropped since, if any: kept too if the next one leaves the band.
    held: Option<Point>,
}

impl Deadband {
    /// A deadband that has seen nothing yet.
    pub fn new(band: Band) -> Self {
        Self { band, kept: None, held: None }
    }

    /// Takes the next reading; appends what it keeps to `out` (nothing, the reading, or the
    /// held reading before it and the reading).
    pub fn push(&mut self, point: Point, out: &mut Vec<Point>) {
        if point.value.is_nan() {
            out.push(point);
            return;
        }
        match self.kept {
            Some(kept) if (point.value - kept.value).abs() <= self.band.width_around(kept.value) => {
                self.held = Some(point);
            }
            _ => {
                if let Some(held) = self.held.take() {
                    out.push(held);
                }
                out.push(point);
                self.kept = Some(point);
            }
        }
    }

    /// Ends a stretch of input (a window closing, a flush): keeps the held reading, so the last
    /// reading of the stretch is always kept.
    pub fn finish(&mut self, out: &mut Vec<Point>) {
        if let Some(held) = self.held.take() {
            out.push(held);
            self.kept = Some(held);
        }
    }
}

/// Streaming swinging-door trending of one series; see the module doc for its guarantee.
///
/// Between the last kept reading and the newest one, the readings in between narrow a range of
/// slopes (the "doors") of lines from the kept reading that pass within `max_error` of each of
/// them. The newest reading extends the segment if the line to it has a slope inside the doors;
/// otherwise the reading before it is kept and a new segment starts there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwingingDoor {
    max_error: f64,
    /// The last kept reading: the start of the current segment.
    anchor: Option<Point>,
    /// The newest reading of the segment, not kept yet: its end if nothing follows.
    pending: Option<Point>,
    /// Slopes (value per ns) of lines from `anchor` within `max_error` of every reading after it
    /// up to and including `pending`; `None`: unbounded (no reading narrowed it yet).
    lower: Option<f64>,
    upper: Option<f64>,
}

impl SwingingDoor {
    /// Swinging door with a maximum error (in the series' unit) that has seen nothing yet.
    pub fn new(max_error: f64) -> Self {
        Self { max_error, anchor: None, pending: None, lower: None, upper: None }
    }

    /// Takes the next reading; appends what it keeps to `out`.
    pub fn push(&mut self, point: Point, out: &mut Vec<Point>) {
        if point.value.is_nan() {
            out.push(point);
            return;
        }
        let Some(anchor) = self.anchor else {
            out.push(point);
            self.start_segment(point);
            return;
        };
        if !self.extends(anchor, point) {
            match self.pending {
                Some(pending) => {
                    out.push(pending);
                    self.start_segment(pending);
                    if !self.extends(pending, point) {
                        // Same time as the new anchor and outside the error: keep it too.
                        out.push(point);
                        self.start_segment(point);
                        return;
                    }
                }
                None => {
                    out.push(point);
                    self.start_segment(point);
                    return;
                }
            }
        }
        self.narrow(point);
        self.pending = Some(point);
    }

    /// Ends a stretch of input: keeps the pending reading, so the last one is always kept.
    pub fn finish(&mut self, out: &mut Vec<Point>) {
        if let Some(pending) = self.pending.take() {
            out.push(pending);
            self.start_segment(pending);
        }
    }

    fn start_segment(&mut self, anchor: Point) {
        self.anchor = Some(anchor);
        self.pending = None;
        self.lower = None;
        self.upper = None;
    }

    /// Whether the line from `anchor` to `point` stays within the error of every reading since.
    fn extends(&self, anchor: Point, point: Point) -> bool {
        if point.ts <= anchor.ts {
            return (point.value - anchor.value).abs() <= self.max_error;
        }
        let slope = (point.value - anchor.value) / (point.ts - anchor.ts) as f64;
        self.lower.is_none_or(|lower| lower <= slope) && self.upper.is_none_or(|upper| slope <= upper)
    }

    /// Narrows the doors by `point`, which becomes a reading between the anchor and whatever
    /// ends the segment.
    fn narrow(&mut self, point: Point) {
        let anchor = self.anchor.expect("a segment has an anchor once a reading was seen");
        if point.ts <= anchor.ts {
            return;
        }
        let dt = (point.ts - anchor.ts) as f64;
        let (lower, upper) =
            ((point.value - self.max_error - anchor.value) / dt, (point.value + self.max_error - anchor.value) / dt);
        self.lower = Some(self.lower.map_or(lower, |l| l.max(lower)));
        self.upper = Some(self.upper.map_or(upper, |u| u.min(upper)));
    }
}

/// Largest-triangle-three-buckets: `threshold` readings of `points` (in time order) that keep
/// the series' shape, the first and the last among them. Fewer readings than `threshold`, or a
/// threshold below 3, keep everything (below 3 there is no shape to choose). NaN values are not
/// chosen between (they come through untouched, in place).
pub fn lttb(points: &[Point], threshold: usize) -> Vec<Point> {
    let finite: Vec<Point> = points.iter().copied().filter(|p| !p.value.is_nan()).collect();
    if threshold < 3 || finite.len() <= threshold {
        return points.to_vec();
    }
    let mut chosen = Vec::with_capacity(threshold);
    chosen.push(finite[0]);
    let inner = finite.len() - 2;
    let buckets = threshold - 2;
    // Bucket b holds inner points [start(b), start(b + 1)), offset by one for the first point.
    let start = |b: usize| 1 + b * inner / buckets;
    let mut previous = finite[0];
    for b in 0..buckets {
        let (from, to) = (start(b), start(b + 1));
        let next = if b + 1 < buckets { &finite[start(b + 1)..start(b + 2)] } else { &finite[finite.len() - 1..] };
        let (avg_ts, avg_value) = average(next);
        let mut best = (f64::NEG_INFINITY, finite[from]);
        for &candidate in &finite[from..to] {
            let area = ((previous.ts as f64 - avg_ts) * (candidate.value - previous.value)
                - (previous.ts as f64 - candidate.ts as f64) * (avg_value - previous.value))
                .abs();
            if area > best.0 {
                best = (area, candidate);
            }
        }
        chosen.push(best.1);
        previous = best.1;
    }
    chosen.push(finite[finite.len() - 1]);
    if finite.len() == points.len() {
        return chosen;
    }
    // Put the NaN readings back in time order.
    let mut merged: Vec<Point> =
        chosen.into_iter().chain(points.iter().copied().filter(|p| p.value.is_nan())).collect();
    merged.sort_by_key(|p| p.ts);
    merged
}

/// Streaming LTTB of one series: readings are collected per tumbling event-time window of
/// `width` (aligned to the Unix epoch), and when a reading of a later window arrives, the
/// window's readings go out reduced by [`lttb`] to `points` — the first and last of the window
/// among them. [`LttbWindows::finish`] sends the window in progress (a quiet series); readings
/// of that window arriving later then form a second part, reduced on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LttbWindows {
    width: Nanos,
    points: usize,
    /// Start of the window collected in `held`.
    start: Nanos,
    held: Vec<Point>,
}

impl LttbWindows {
    /// Windows of `width` ns (positive) reduced to `points` readings each (3 or more).
    pub fn new(width: Nanos, points: usize) -> Self {
        Self { width: width.max(1), points, start: Nanos::MIN, held: Vec::new() }
    }

    /// Takes the next reading; appends the previous window, reduced, to `out` when this reading
    /// starts a later one.
    pub fn push(&mut self, point: Point, out: &mut Vec<Point>) {
        let start = point.ts - point.ts.rem_euclid(self.width);
        if start != self.start {
            self.finish(out);
            self.start = start;
        }
        self.held.push(point);
    }

    /// Appends the window in progress, reduced, to `out`.
    pub fn finish(&mut self, out: &mut Vec<Point>) {
        if !self.held.is_empty() {
            out.extend(lttb(&self.held, self.points));
            self.held.clear();
        }
    }
}

fn average(points: &[Point]) -> (f64, f64) {
    let n = points.len() as f64;
    let ts = points.iter().map(|p| p.ts as f64).sum::<f64>() / n;
    let value = points.iter().map(|p| p.value).sum::<f64>() / n;
    (ts, value)
}

#[cfg(test)]
mod tests;
