//! What the status page draws, kept in memory and bounded: a pipeline's flow in buckets over the
//! last minutes ([`Rates`]) and its recent series — raw readings, what was sent after
//! downsampling, the windows' min/mean/max band ([`SeriesRing`]). Pure: time arrives as a
//! parameter.
//!
//! **Invariants:** memory is bounded whatever the input: at most [`RATE_BUCKETS`] buckets, at
//! most [`SERIES_KEPT`] series per pipeline (later ones are counted, not kept), at most
//! [`POINTS_KEPT`] raw and sent points and [`BANDS_KEPT`] bands per series, and nothing older
//! than [`SERIES_SPAN`] before a series' newest reading. Nothing here is persisted.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::batch::{Batch, Nanos, Series};

/// Width of one rate bucket, seconds.
pub const RATE_BUCKET_SECONDS: i64 = 10;
/// Buckets kept: ten minutes.
pub const RATE_BUCKETS: usize = 60;
/// Series kept per pipeline.
pub const SERIES_KEPT: usize = 32;
/// Raw and sent points kept per series.
pub const POINTS_KEPT: usize = 600;
/// Window bands kept per series.
pub const BANDS_KEPT: usize = 120;
/// How far back a series is kept from its newest reading, ns (ten minutes).
pub const SERIES_SPAN: Nanos = 10 * 60 * 1_000_000_000;

/// What one batch moved through a pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Input messages.
    pub messages: u64,
    /// Readings decoded.
    pub readings_in: u64,
    /// Readings in the records committed (window emissions are not readings).
    pub readings_sent: u64,
    /// Records committed.
    pub records: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// Dead letters written.
    pub dead_letters: u64,
}

impl Flow {
    fn add(&mut self, other: &Flow) {
        self.messages += other.messages;
        self.readings_in += other.readings_in;
        self.readings_sent += other.readings_sent;
        self.records += other.records;
        self.bytes += other.bytes;
        self.dead_letters += other.dead_letters;
    }
}

/// One bucket of flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// Its start, seconds since the epoch (a multiple of [`RATE_BUCKET_SECONDS`]).
    pub start: i64,
    /// What flowed in it.
    pub flow: Flow,
}

/// A pipeline's flow in [`RATE_BUCKET_SECONDS`] buckets, the newest last.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    buckets: VecDeque<Bucket>,
}

impl Rates {
    /// Adds `flow` at `now`.
    pub fn add(&mut self, now: Nanos, flow: &Flow) {
        let start = bucket_of(now);
        match self.buckets.back_mut() {
            Some(last) if last.start == start => last.flow.add(flow),
            // A clock stepped back: the newest bucket takes it.
            Some(last) if last.start > start => last.flow.add(flow),
            _ => {
                self.buckets.push_back(Bucket { start, flow: *flow });
                while self.buckets.len() > RATE_BUCKETS {
                    self.buckets.pop_front();
                }
            }
        }
    }

    /// The last [`RATE_BUCKETS`] buckets up to `now`, oldest first, empty ones included.
    pub fn buckets(&self, now: Nanos) -> Vec<Bucket> {
        let newest = bucket_of(now);
        let oldest = newest - (RATE_BUCKETS as i64 - 1) * RATE_BUCKET_SECONDS;
        (0..RATE_BUCKETS as i64)
            .map(|i| {
                let start = oldest + i * RATE_BUCKET_SECONDS;
                let flow = self.buckets.iter().find(|b| b.start == start).map_or_else(Flow::default, |b| b.flow);
                Bucket { start, flow }
            })
            .collect()
    }

    /// What flowed per second over the last `seconds` before `now` (whole buckets).
    pub fn per_second(&self, now: Nanos, seconds: i64) -> (f64, f64, f64) {
        let since = bucket_of(now) - seconds + RATE_BUCKET_SECONDS;
        let mut sum = Flow::default();
        for bucket in self.buckets.iter().filter(|b| b.start >= since) {
            sum.add(&bucket.flow);
        }
        let per = |n: u64| n as f64 / seconds as f64;
        (per(sum.messages), per(sum.readings_in), per(sum.readings_sent))
    }
}

fn bucket_of(now: Nanos) -> i64 {
    (now / 1_000_000_000).div_euclid(RATE_BUCKET_SECONDS) * RATE_BUCKET_SECONDS
}

/// A window's band: its span and its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Band {
    /// First event time covered, ns.
    pub start: Nanos,
    /// End (exclusive), ns.
    pub end: Nanos,
    /// Readings in it.
    pub count: u64,
    /// Smallest value.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

/// One series' recent history.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trace {
    /// Its unit, if it has one.
    pub unit: Option<String>,
    /// Readings as decoded, `(event time ns, value)`, oldest first.
    pub raw: VecDeque<(Nanos, f64)>,
    /// Readings sent (after downsampling), oldest first.
    pub sent: VecDeque<(Nanos, f64)>,
    /// Window emissions, a later revision replacing an earlier one, oldest first.
    pub bands: VecDeque<Band>,
}

impl Trace {
    fn newest(&self) -> Nanos {
        let raw = self.raw.back().map(|p| p.0);
        let sent = self.sent.back().map(|p| p.0);
        let band = self.bands.back().map(|b| b.end);
        [raw, sent, band].into_iter().flatten().max().unwrap_or(Nanos::MIN)
    }

    fn trim(&mut self) {
        let since = self.newest().saturating_sub(SERIES_SPAN);
        while self.raw.len() > POINTS_KEPT || self.raw.front().is_some_and(|p| p.0 < since) {
            self.raw.pop_front();
        }
        while self.sent.len() > POINTS_KEPT || self.sent.front().is_some_and(|p| p.0 < since) {
            self.sent.pop_front();
        }
        while self.bands.len() > BANDS_KEPT || self.bands.front().is_some_and(|b| b.end < since) {
            self.bands.pop_front();
        }
    }
}

/// Which of a series' histories a batch feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Readings as decoded.
    Raw,
    /// Readings sent.
    Sent,
}

/// The recent history of a pipeline's series, by series key (see [`series_key`]).
#[derive(Clone, Debug, Default)]
pub struct SeriesRing {
    traces: BTreeMap<String, Trace>,
    /// Series seen beyond [`SERIES_KEPT`], not kept.
    pub untracked: u64,
}

impl SeriesRing {
    /// Adds the readings of `batch` to each series' `stage` history.
    pub fn add_batch(&mut self, stage: Stage, batch: &Batch) {
        let keys: Vec<Option<String>> = batch.series().iter().map(|s| self.admit(s)).collect();
        let mut touched = vec![false; keys.len()];
        for ((&index, &ts), &value) in batch.series_idx().iter().zip(batch.timestamps()).zip(batch.values()) {
            let Some(Some(key)) = keys.get(index as usize) else { continue };
            let Some(trace) = self.traces.get_mut(key) else { continue };
            let points = match stage {
                Stage::Raw => &mut trace.raw,
                Stage::Sent => &mut trace.sent,
            };
            // Kept in event-time order: a late reading goes in its place.
            let at = points.partition_point(|p| p.0 <= ts);
            points.insert(at, (ts, value));
            // A batch far larger than what is kept: drop the oldest as it goes, so memory stays
            // bounded by the ring, not by the batch.
            if points.len() >= 2 * POINTS_KEPT {
                points.drain(..points.len() - POINTS_KEPT);
            }
            touched[index as usize] = true;
        }
        for (key, _) in keys.iter().zip(touched).filter(|(_, touched)| *touched) {
            if let Some(trace) = key.as_ref().and_then(|key| self.traces.get_mut(key)) {
                trace.trim();
            }
        }
    }

    /// Adds a window emission of `series`; a later revision of the same window replaces the
    /// earlier one.
    pub fn add_band(&mut self, series: &Series, band: Band) {
        let Some(key) = self.admit(series) else { return };
        let Some(trace) = self.traces.get_mut(&key) else { return };
        match trace.bands.iter_mut().find(|b| b.start == band.start) {
            Some(earlier) => *earlier = band,
            None => {
                let at = trace.bands.partition_point(|b| b.start <= band.start);
                trace.bands.insert(at, band);
            }
        }
        trace.trim();
    }

    /// The keys of the series kept.
    pub fn keys(&self) -> Vec<String> {
        self.traces.keys().cloned().collect()
    }

    /// A series' history.
    pub fn trace(&self, key: &str) -> Option<&Trace> {
        self.traces.get(key)
    }

    /// The key of `series`, kept from now on if there is room.
    fn admit(&mut self, series: &Series) -> Option<String> {
        let key = series_key(series);
        if self.traces.contains_key(&key) {
            return Some(key);
        }
        if self.traces.len() >= SERIES_KEPT {
            self.untracked += 1;
            return None;
        }
        self.traces.insert(key.clone(), Trace { unit: series.unit.clone(), ..Trace::default() });
        Some(key)
    }
}

/// How a series is named on the page: its name, and its tags in braces.
pub fn series_key(series: &Series) -> String {
    if series.tags.is_empty() {
        return series.name.clone();
    }
    let tags: Vec<String> = series.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{}{{{}}}", series.name, tags.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchBuilder;

    const SECOND: Nanos = 1_000_000_000;

    fn batch(points: &[(&str, Nanos, f64)]) -> Batch {
        let mut builder = BatchBuilder::new();
        for (name, ts, value) in points {
            let index = builder.intern(&Series::named(*name));
            builder.push(index, *ts, *value);
        }
        builder.finish()
    }

    #[test]
    fn rates_fill_buckets_and_forget_the_oldest() {
        let mut rates = Rates::default();
        let t0 = 1_000_000 * SECOND;
        rates.add(t0, &Flow { messages: 10, readings_in: 20, ..Flow::default() });
        rates.add(t0 + SECOND, &Flow { messages: 5, ..Flow::default() });
        let buckets = rates.buckets(t0 + SECOND);
        assert_eq!(buckets.len(), RATE_BUCKETS);
        assert_eq!(buckets.last().expect("a bucket").flow.messages, 15);
        assert_eq!(rates.per_second(t0 + SECOND, 60).0, 0.25);
        // Eleven minutes later the first bucket is out of the window and out of memory.
        let later = t0 + 11 * 60 * SECOND;
        for i in 0..70 {
            rates.add(later + i * RATE_BUCKET_SECONDS * SECOND, &Flow { messages: 1, ..Flow::default() });
        }
        assert_eq!(rates.buckets.len(), RATE_BUCKETS);
        assert!(rates.buckets(later).iter().all(|b| b.flow.messages <= 1));
    }

    #[test]
    fn the_ring_keeps_a_bounded_recent_history_in_event_time_order() {
        let mut ring = SeriesRing::default();
        ring.add_batch(Stage::Raw, &batch(&[("t", 3 * SECOND, 3.0), ("t", SECOND, 1.0), ("t", 2 * SECOND, 2.0)]));
        let trace = ring.trace("t").expect("kept");
        assert_eq!(trace.raw.iter().map(|p| p.1).collect::<Vec<_>>(), [1.0, 2.0, 3.0]);
        // Beyond the span: older points go.
        ring.add_batch(Stage::Raw, &batch(&[("t", SERIES_SPAN + 2 * SECOND, 9.0)]));
        let trace = ring.trace("t").expect("kept");
        assert_eq!(trace.raw.iter().map(|p| p.1).collect::<Vec<_>>(), [2.0, 3.0, 9.0]);
        // Beyond the count: the oldest go.
        let many: Vec<(&str, Nanos, f64)> =
            (0..2 * POINTS_KEPT as i64).map(|i| ("t", SERIES_SPAN + 3 * SECOND + i, i as f64)).collect();
        ring.add_batch(Stage::Sent, &batch(&many));
        let trace = ring.trace("t").expect("kept");
        assert_eq!(trace.sent.len(), POINTS_KEPT);
        assert_eq!(trace.sent.back().map(|p| p.1), Some((2 * POINTS_KEPT - 1) as f64));
    }

    #[test]
    fn the_ring_keeps_a_bounded_number_of_series_and_counts_the_rest() {
        let mut ring = SeriesRing::default();
        let names: Vec<String> = (0..SERIES_KEPT + 5).map(|i| format!("s{i}")).collect();
        let points: Vec<(&str, Nanos, f64)> = names.iter().map(|n| (n.as_str(), SECOND, 1.0)).collect();
        ring.add_batch(Stage::Raw, &batch(&points));
        assert_eq!(ring.keys().len(), SERIES_KEPT);
        assert_eq!(ring.untracked, 5);
    }

    #[test]
    fn a_later_revision_replaces_the_band_of_its_window() {
        let mut ring = SeriesRing::default();
        let series = Series::named("t");
        let band = Band { start: 0, end: 10 * SECOND, count: 2, min: 1.0, mean: 1.5, max: 2.0 };
        ring.add_band(&series, band);
        ring.add_band(&series, Band { count: 3, max: 4.0, ..band });
        ring.add_band(&series, Band { start: 10 * SECOND, end: 20 * SECOND, ..band });
        let bands = &ring.trace("t").expect("kept").bands;
        assert_eq!(bands.len(), 2);
        assert_eq!((bands[0].count, bands[0].max), (3, 4.0));
    }

    #[test]
    fn a_series_key_shows_its_tags() {
        let mut series = Series::named("temp");
        assert_eq!(series_key(&series), "temp");
        series.tags = vec![("room".into(), "a".into())];
        assert_eq!(series_key(&series), "temp{room=a}");
    }
}
