//! `[pipelines.<name>.downsample]` as written: fewer readings per series, within a stated error
//! (docs/downsampling.md).

use serde::Deserialize;

use crate::config::types::{CountIn, DAY, DurationIn};

/// `[pipelines.<name>.downsample]` — fewer readings per series, within a stated error
/// (docs/downsampling.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDownsample {
    /// `method = "deadband"` — `deadband`, `swinging_door` or `lttb`.
    pub method: DownsampleMethodName,
    /// `absolute = 0.1` — deadband: the band in the series' unit.
    pub absolute: Option<f64>,
    /// `relative = 0.01` — deadband: the band as a fraction of the last kept value.
    pub relative: Option<f64>,
    /// `max_error = 0.1` — swinging door: the largest error of linear interpolation.
    pub max_error: Option<f64>,
    /// `points = 20` — LTTB: readings kept per window (3 to 100 000: LTTB always keeps a
    /// window's first and last reading).
    pub points: Option<CountIn<3, 100_000>>,
    /// `window = "1m"` — LTTB: the tumbling event-time window each `points` are chosen from
    /// (1ms to 31 days).
    pub window: Option<DurationIn<1, { 31 * DAY }>>,
    /// `idle_timeout = "1m"` — a series quiet this long has its held reading sent (1ms to 31
    /// days).
    pub idle_timeout: Option<DurationIn<1, { 31 * DAY }>>,
}

/// The streaming downsamplers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownsampleMethodName {
    /// Keep a reading when it leaves a band around the last kept value.
    Deadband,
    /// Keep the readings that bound straight segments within an error.
    SwingingDoor,
    /// Keep a fixed number of readings per window that preserve the shape.
    Lttb,
}
