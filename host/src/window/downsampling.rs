//! The downsampling stage: per series, a streaming downsampler (deadband, swinging door, or LTTB
//! per tumbling event-time window) over the readings a pipeline sends, so records carry fewer
//! readings with a stated bound (docs/downsampling.md).
//!
//! Like the window stage, its state (one downsampler per series) commits in the batch's change
//! set, under the namespace `<pipeline>/$downsample`, so a crash neither repeats nor loses a
//! kept reading. A series quiet for the idle timeout has its held reading sent (the end of a
//! stretch is always kept). A reading older than its series' newest one is passed through
//! unchanged: the downsamplers need time order, and a reading is never dropped without a bound.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::downsample::{Band, Deadband, LttbWindows, Point, SwingingDoor};
use super::{load_state, state_write};
use crate::batch::{Batch, BatchBuilder, Nanos, Series};
use crate::config::{DownsampleConfig, DownsampleMethod};
use crate::state::{StateStore, StateWrite, StoreError};

const STATE_KEY: &[u8] = b"downsamplers";

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Downsampler {
    Deadband(Deadband),
    SwingingDoor(SwingingDoor),
    Lttb(LttbWindows),
}

impl Downsampler {
    fn new(method: DownsampleMethod) -> Self {
        match method {
            DownsampleMethod::DeadbandAbsolute(band) => Self::Deadband(Deadband::new(Band::Absolute(band))),
            DownsampleMethod::DeadbandRelative(fraction) => Self::Deadband(Deadband::new(Band::Relative(fraction))),
            DownsampleMethod::SwingingDoor { max_error } => Self::SwingingDoor(SwingingDoor::new(max_error)),
            DownsampleMethod::Lttb { points, window } => {
                Self::Lttb(LttbWindows::new(Nanos::try_from(window).unwrap_or(Nanos::MAX), points))
            }
        }
    }

    fn push(&mut self, point: Point, out: &mut Vec<Point>) {
        match self {
            Self::Deadband(d) => d.push(point, out),
            Self::SwingingDoor(d) => d.push(point, out),
            Self::Lttb(d) => d.push(point, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<Point>) {
        match self {
            Self::Deadband(d) => d.finish(out),
            Self::SwingingDoor(d) => d.finish(out),
            Self::Lttb(d) => d.finish(out),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SeriesState {
    downsampler: Downsampler,
    unit: Option<String>,
    tags: Vec<(String, String)>,
    newest: Nanos,
    /// Processing time of its last reading.
    last_seen: Nanos,
    /// Whether readings since the last idle flush are held.
    holding: bool,
}

/// One pipeline's downsampling stage.
#[derive(Debug)]
pub struct DownsampleStage {
    config: DownsampleConfig,
    namespace: String,
    series: BTreeMap<String, SeriesState>,
}

/// What one batch (or tick) produced.
#[derive(Debug, Default)]
pub struct DownsampleOutput {
    /// The readings kept.
    pub kept: Batch,
    /// Readings in.
    pub points_in: usize,
    /// The state after this batch, to commit with the record (none when nothing changed).
    pub checkpoint: Option<StateWrite>,
}

impl DownsampleStage {
    /// The stage of `pipeline` with the state it last committed (an unreadable state is reported
    /// and replaced: downsampling restarts, keeping the next reading of each series).
    pub fn load(config: DownsampleConfig, pipeline: &str, store: &StateStore) -> Result<Self, StoreError> {
        let namespace = format!("{pipeline}/$downsample");
        let series = load_state(store, &namespace, STATE_KEY, "downsample", pipeline)?;
        Ok(Self { config, namespace, series })
    }

    /// How often the pipeline should call [`Self::process`] without input.
    pub fn tick(&self) -> std::time::Duration {
        let quarter = std::time::Duration::from_nanos(self.config.idle_timeout / 4);
        quarter.clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(1))
    }

    /// Downsamples `batch` (possibly empty: a tick) at processing time `now`.
    pub fn process(&mut self, batch: &Batch, now: Nanos) -> DownsampleOutput {
        let mut kept: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for sample in batch.iter() {
            let method = self.config.method;
            let state = self.series.entry(sample.series.name.clone()).or_insert_with(|| SeriesState {
                downsampler: Downsampler::new(method),
                unit: sample.series.unit.clone(),
                tags: sample.series.tags.clone(),
                newest: Nanos::MIN,
                last_seen: now,
                holding: false,
            });
            let out = kept.entry(sample.series.name.clone()).or_default();
            let point = Point::new(sample.ts, sample.value);
            if sample.ts < state.newest {
                out.push(point);
            } else {
                state.newest = sample.ts;
                state.downsampler.push(point, out);
            }
            state.last_seen = now;
            state.holding = true;
        }
        let idle_timeout = Nanos::try_from(self.config.idle_timeout).unwrap_or(Nanos::MAX);
        let mut flushed = false;
        for (name, state) in &mut self.series {
            if state.holding && now.saturating_sub(state.last_seen) >= idle_timeout {
                state.downsampler.finish(kept.entry(name.clone()).or_default());
                state.holding = false;
                flushed = true;
            }
        }
        let mut builder = BatchBuilder::new();
        for (name, points) in &kept {
            let Some(state) = self.series.get(name) else { continue };
            let series = Series { name: name.clone(), unit: state.unit.clone(), tags: state.tags.clone() };
            let index = builder.intern(&series);
            let mut points = points.clone();
            points.sort_by_key(|p| p.ts);
            for p in points {
                builder.push(index, p.ts, p.value);
            }
        }
        let changed = !batch.is_empty() || flushed;
        let checkpoint = changed.then(|| state_write(&self.namespace, STATE_KEY, &self.series));
        DownsampleOutput { kept: builder.finish(), points_in: batch.len(), checkpoint }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn batch(points: &[(i64, f64)]) -> Batch {
        let mut builder = BatchBuilder::new();
        let index = builder.intern(&Series::named("t").with_unit("Cel"));
        for (s, v) in points {
            builder.push(index, s * SECOND, *v);
        }
        builder.finish()
    }

    fn values(batch: &Batch) -> Vec<(Nanos, f64)> {
        batch.iter().map(|s| (s.ts / SECOND, s.value)).collect()
    }

    #[test]
    fn a_deadband_keeps_steps_and_the_end_of_a_quiet_series() {
        let config =
            DownsampleConfig { method: DownsampleMethod::DeadbandAbsolute(0.5), idle_timeout: 10 * SECOND as u64 };
        let mut stage = DownsampleStage { config, namespace: "p/$downsample".into(), series: BTreeMap::new() };
        let first = stage.process(&batch(&[(0, 20.0), (1, 20.1), (2, 20.2), (3, 21.0), (4, 21.1)]), 0);
        assert_eq!(values(&first.kept), [(0, 20.0), (2, 20.2), (3, 21.0)], "the step and the reading before it");
        assert!(first.checkpoint.is_some());
        assert!(stage.process(&Batch::new(), 5 * SECOND).kept.is_empty(), "not idle yet");
        let idle = stage.process(&Batch::new(), 10 * SECOND);
        assert_eq!(values(&idle.kept), [(4, 21.1)], "the last reading is sent once the series is quiet");
        assert_eq!(stage.series["t"].unit.as_deref(), Some("Cel"));
    }

    #[test]
    fn lttb_sends_each_window_reduced_once_the_next_begins_or_the_series_is_quiet() {
        let config = DownsampleConfig {
            method: DownsampleMethod::Lttb { points: 3, window: 10 * SECOND as u64 },
            idle_timeout: 30 * SECOND as u64,
        };
        let mut stage = DownsampleStage { config, namespace: "p/$downsample".into(), series: BTreeMap::new() };
        let window_0: Vec<(i64, f64)> = (0..10).map(|s| (s, if s == 4 { 9.0 } else { 1.0 })).collect();
        assert!(stage.process(&batch(&window_0), 0).kept.is_empty(), "the window is still open");
        let next = stage.process(&batch(&[(10, 2.0), (12, 3.0), (19, 2.0)]), SECOND);
        assert_eq!(values(&next.kept), [(0, 1.0), (4, 9.0), (9, 1.0)], "first, peak, last of [0 s, 10 s)");
        // A crash here: the next stage starts from the committed state.
        let saved = next.checkpoint.expect("state changed").value.expect("a value");
        let series = minicbor_serde::from_slice(&saved).expect("the state reads back");
        let mut stage = DownsampleStage { config, namespace: "p/$downsample".into(), series };
        assert!(stage.process(&Batch::new(), 20 * SECOND).kept.is_empty(), "not idle yet");
        let idle = stage.process(&Batch::new(), 31 * SECOND);
        assert_eq!(values(&idle.kept), [(10, 2.0), (12, 3.0), (19, 2.0)], "the quiet series' window is sent");
    }

    #[test]
    fn a_reading_older_than_its_series_newest_passes_through() {
        let config =
            DownsampleConfig { method: DownsampleMethod::SwingingDoor { max_error: 1.0 }, idle_timeout: u64::MAX };
        let mut stage = DownsampleStage { config, namespace: "p/$downsample".into(), series: BTreeMap::new() };
        stage.process(&batch(&[(10, 1.0), (11, 1.0)]), 0);
        let late = stage.process(&batch(&[(5, 7.0)]), 0);
        assert_eq!(values(&late.kept), [(5, 7.0)]);
    }
}
