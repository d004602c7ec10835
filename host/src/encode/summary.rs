//! The parts of a record that summarise other records: aggregate windows (what a coarsened
//! record carries instead of readings) and spans (which original records a coarsened record or
//! a drop marker stands for).
//!
//! **Invariant (mergeable):** every statistic of a [`Window`] merges exactly, in any order and
//! grouping — count, min and max without rounding; sum and `m2` (the sum of squared deviations from the mean,
//! merged with Chan et al.'s parallel formula) with floating-point rounding only — so windows
//! coarsened once can be coarsened again, and a consumer can merge them further, with the same
//! results as aggregating the original readings (up to that rounding).

use serde::{Deserialize, Serialize};

use crate::batch::{Nanos, Series};

/// Which original records a coarsened record or a drop marker stands for, exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Seq of the first original record.
    pub first_seq: u64,
    /// Seq of the last original record.
    pub last_seq: u64,
    /// How many original records (seqs between the two that no record used are not counted).
    pub records: u64,
    /// How many readings the original records held.
    pub readings: u64,
    /// Earliest event time among those readings (none when there were none).
    pub earliest: Option<Nanos>,
    /// Latest event time among those readings.
    pub latest: Option<Nanos>,
    /// When the oldest of the original records was encoded (processing time).
    pub first_encoded_at: Nanos,
}

impl Span {
    /// The span of one original record.
    pub fn of_record(seq: u64, readings: u64, times: Option<(Nanos, Nanos)>, encoded_at: Nanos) -> Self {
        Self {
            first_seq: seq,
            last_seq: seq,
            records: 1,
            readings,
            earliest: times.map(|(earliest, _)| earliest),
            latest: times.map(|(_, latest)| latest),
            first_encoded_at: encoded_at,
        }
    }

    /// Extends this span by `later`, which follows it in seq order.
    pub fn merge(&mut self, later: &Span) {
        self.first_seq = self.first_seq.min(later.first_seq);
        self.last_seq = self.last_seq.max(later.last_seq);
        self.records += later.records;
        self.readings += later.readings;
        self.earliest = min_option(self.earliest, later.earliest);
        self.latest = self.latest.max(later.latest);
        self.first_encoded_at = self.first_encoded_at.min(later.first_encoded_at);
    }
}

fn min_option(a: Option<Nanos>, b: Option<Nanos>) -> Option<Nanos> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The readings of one series in one time window `[start, start + width)`, summarised.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Start of the window, ns since the Unix epoch; a multiple of the width.
    pub start: Nanos,
    /// Number of readings (NaN values are not counted in any statistic).
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Sum of squared deviations from the mean (variance = `m2 / count`).
    pub m2: f64,
}

impl Window {
    /// A window holding one reading.
    pub fn of(start: Nanos, value: f64) -> Self {
        Self { start, count: 1, sum: value, min: value, max: value, m2: 0.0 }
    }

    /// The mean of the values.
    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// Merges `other` (the same window's statistics over other readings) into this one.
    pub fn merge(&mut self, other: &Window) {
        let (n_a, n_b) = (self.count as f64, other.count as f64);
        let n = n_a + n_b;
        let delta = other.mean() - self.mean();
        self.m2 += other.m2 + delta * delta * n_a * n_b / n;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// One series' windows of one width, ascending by start, each start once.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateSeries {
    /// The series.
    pub series: Series,
    /// Width of every window, ns (a positive multiple of a second).
    pub width: u64,
    /// The windows.
    pub windows: Vec<Window>,
}

/// The start of the window of `width` ns holding event time `ts`.
pub fn window_start(ts: Nanos, width: u64) -> Nanos {
    let width = i64::try_from(width).unwrap_or(i64::MAX);
    ts.div_euclid(width) * width
}
