//! The aggregate of one window: count, sum, min, max, mean, first, last, standard deviation and
//! a quantile sketch, kept as a mergeable accumulator.
//!
//! **Invariant (mergeable):** `merge(a, b)` equals adding `b`'s readings to `a`, in any order
//! and grouping. Exactly so for count, min, max, first, last and the sketch's bins (integer
//! counts); sum, mean and standard deviation up to floating-point rounding (the moments merge
//! with Chan et al.'s formula, through [`crate::moments::Window`], the same statistics a
//! coarsened outbox record carries).
//!
//! **Quantiles:** a DDSketch (`sketches-ddsketch`) with relative accuracy [`SKETCH_ALPHA`]: for
//! `q` in `[0, 1]`, `quantile(q)` is within `alpha × |x|` of `x`, the reading of rank
//! `⌊q·(n−1)⌋` in sorted order, provided `|x|` is above [`SKETCH_MIN_MAGNITUDE`] (smaller
//! magnitudes count as zero) and within the [`SKETCH_BINS`] bins the sketch keeps per sign (with
//! alpha = 1 %, about 17 decades; beyond that the smallest magnitudes collapse together).
//!
//! NaN readings are ignored by every statistic (they are still counted as points in by the
//! stage that feeds the aggregate).

use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config as SketchConfig, DDSketch};

use crate::Nanos;
use crate::moments::Window as Moments;

/// Relative accuracy of the quantile sketch.
pub const SKETCH_ALPHA: f64 = 0.01;
/// Bins the sketch keeps per sign.
pub const SKETCH_BINS: u32 = 2048;
/// Magnitudes at or below this count as zero in the sketch.
pub const SKETCH_MIN_MAGNITUDE: f64 = 1e-9;

/// A reading at an event time, as kept for first and last.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimedValue {
    /// Event time, ns since the Unix epoch.
    pub ts: Nanos,
    /// The value.
    pub value: f64,
}

impl TimedValue {
    /// Order by time, then by value (total order), so that first and last do not depend on the
    /// order readings arrive in.
    fn key(&self) -> (Nanos, OrderedValue) {
        (self.ts, OrderedValue(self.value))
    }
}

struct OrderedValue(f64);

impl PartialEq for OrderedValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrderedValue {}

impl PartialOrd for OrderedValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// The mergeable accumulator of one window.
#[derive(Clone, Serialize, Deserialize)]
pub struct Aggregate {
    /// Count, sum, min, max and the sum of squared deviations (`start` unused: 0). `None` until
    /// the first reading.
    moments: Option<Moments>,
    first: Option<TimedValue>,
    last: Option<TimedValue>,
    sketch: DDSketch,
}

impl std::fmt::Debug for Aggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregate")
            .field("moments", &self.moments)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("sketch_bins", &self.sketch.length())
            .finish()
    }
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            moments: None,
            first: None,
            last: None,
            sketch: DDSketch::new(SketchConfig::new(SKETCH_ALPHA, SKETCH_BINS, SKETCH_MIN_MAGNITUDE)),
        }
    }
}

/// What a window's aggregate reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Readings (NaN excluded).
    pub count: u64,
    /// Their sum.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Population standard deviation.
    pub stddev: f64,
    /// Earliest reading (by event time; ties broken by the smaller value).
    pub first: TimedValue,
    /// Latest reading (by event time; ties broken by the larger value).
    pub last: TimedValue,
}

impl Aggregate {
    /// Adds one reading (NaN is ignored).
    pub fn add(&mut self, ts: Nanos, value: f64) {
        if value.is_nan() {
            return;
        }
        let one = Moments::of(0, value);
        match &mut self.moments {
            Some(moments) => moments.merge(&one),
            None => self.moments = Some(one),
        }
        let reading = TimedValue { ts, value };
        self.take_first(reading);
        self.take_last(reading);
        self.sketch.add(value);
    }

    /// Merges `other` into this aggregate.
    pub fn merge(&mut self, other: &Aggregate) {
        if let Some(theirs) = &other.moments {
            match &mut self.moments {
                Some(moments) => moments.merge(theirs),
                None => self.moments = Some(*theirs),
            }
        }
        if let Some(first) = other.first {
            self.take_first(first);
        }
        if let Some(last) = other.last {
            self.take_last(last);
        }
        self.sketch.merge(&other.sketch).expect("every aggregate's sketch has the same configuration");
    }

    fn take_first(&mut self, reading: TimedValue) {
        if self.first.is_none_or(|first| reading.key() < first.key()) {
            self.first = Some(reading);
        }
    }

    fn take_last(&mut self, reading: TimedValue) {
        if self.last.is_none_or(|last| reading.key() > last.key()) {
            self.last = Some(reading);
        }
    }

    /// Count, sum, min, max and sum of squared deviations (`start` is 0), or `None` for an
    /// aggregate of no readings.
    pub fn moments(&self) -> Option<Moments> {
        self.moments
    }

    /// The earliest reading (ties: the smaller value).
    pub fn first(&self) -> Option<TimedValue> {
        self.first
    }

    /// The latest reading (ties: the larger value).
    pub fn last(&self) -> Option<TimedValue> {
        self.last
    }

    /// Readings added (NaN excluded).
    pub fn count(&self) -> u64 {
        self.moments.map_or(0, |m| m.count)
    }

    /// The statistics, or `None` for an aggregate of no readings.
    pub fn summary(&self) -> Option<Summary> {
        let moments = self.moments?;
        Some(Summary {
            count: moments.count,
            sum: moments.sum,
            min: moments.min,
            max: moments.max,
            mean: moments.mean(),
            stddev: (moments.m2 / moments.count as f64).max(0.0).sqrt(),
            first: self.first?,
            last: self.last?,
        })
    }

    /// The estimated value at quantile `q` (in `[0, 1]`; see the module doc for the guarantee),
    /// or `None` for an aggregate of no readings.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.quantile(q.clamp(0.0, 1.0)).ok().flatten()
    }

    /// The quantile sketch itself (the record format publishes its bins; see `weir-record`).
    pub fn sketch(&self) -> &DDSketch {
        &self.sketch
    }
}

#[cfg(test)]
mod tests;
