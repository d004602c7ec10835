//! Count, sum, min, max and the sum of squared deviations of a set of readings in one time
//! window — the statistics a window aggregate and a coarsened outbox record carry.
//!
//! **Invariant (mergeable):** every statistic of a [`Window`] merges exactly, in any order and
//! grouping — count, min and max without rounding; sum and `m2` (the sum of squared deviations
//! from the mean, merged with Chan et al.'s parallel formula, numerically stable) with
//! floating-point rounding only.

use serde::{Deserialize, Serialize};

use crate::Nanos;

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

/// The start of the window of `width` ns holding event time `ts`.
pub fn window_start(ts: Nanos, width: u64) -> Nanos {
    let width = i64::try_from(width).unwrap_or(i64::MAX);
    ts.div_euclid(width) * width
}
