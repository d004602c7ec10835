//! `[pipelines.<name>.downsample]`: a method with exactly the settings it takes, each bound a
//! positive number; and readings to downsample — a pipeline whose window drops its readings
//! (`keep_readings = false`) has none.

use toml::Spanned;

use super::{Validator, nanos};
use crate::config::defaults;
use crate::config::raw::{DownsampleMethodName, RawDownsample};
use crate::config::types::DurationIn;
use crate::config::{DownsampleConfig, DownsampleMethod, WindowConfig};

impl Validator<'_> {
    /// The downsampling of a pipeline with `window`, or `None` when it is wrong; `field` is
    /// `pipelines.<name>.downsample`.
    pub(super) fn downsample(
        &mut self,
        raw: &Spanned<RawDownsample>,
        field: &str,
        window: Option<&WindowConfig>,
    ) -> Option<DownsampleConfig> {
        let downsample = raw.get_ref();
        if window.is_some_and(|w| !w.keep_readings) {
            self.problem(
                Some(raw.span()),
                field,
                "the pipeline sends windows, not readings: downsampling needs `keep_readings = true` in its window",
            );
            return None;
        }
        let bounds =
            [("absolute", downsample.absolute), ("relative", downsample.relative), ("max_error", downsample.max_error)];
        if let Some((name, _)) = bounds.iter().find(|(_, value)| value.is_some_and(|v| !(v.is_finite() && v > 0.0))) {
            self.problem(Some(raw.span()), format!("{field}.{name}"), format!("`{name}` must be a positive number"));
            return None;
        }
        let method = match method(downsample) {
            Ok(method) => method,
            Err(message) => {
                self.problem(Some(raw.span()), format!("{field}.method"), message);
                return None;
            }
        };
        let idle_timeout = nanos(downsample.idle_timeout.map_or(defaults::DOWNSAMPLE_IDLE, DurationIn::get));
        Some(DownsampleConfig { method, idle_timeout })
    }
}

/// The downsampler `raw` describes, its bounds already known to be positive; else what the method
/// needs.
fn method(raw: &RawDownsample) -> Result<DownsampleMethod, &'static str> {
    let lttb_fields = raw.points.is_some() || raw.window.is_some();
    match (raw.method, raw.absolute, raw.relative, raw.max_error) {
        (DownsampleMethodName::Deadband, Some(band), None, None) if !lttb_fields => {
            Ok(DownsampleMethod::DeadbandAbsolute(band))
        }
        (DownsampleMethodName::Deadband, None, Some(fraction), None) if !lttb_fields => {
            Ok(DownsampleMethod::DeadbandRelative(fraction))
        }
        (DownsampleMethodName::Deadband, _, _, _) => {
            Err("a deadband needs exactly one of `absolute` and `relative` (and no `max_error`, `points` or `window`)")
        }
        (DownsampleMethodName::SwingingDoor, None, None, Some(max_error)) if !lttb_fields => {
            Ok(DownsampleMethod::SwingingDoor { max_error })
        }
        (DownsampleMethodName::SwingingDoor, _, _, _) => {
            Err("a swinging door needs `max_error` (and no `absolute`, `relative`, `points` or `window`)")
        }
        (DownsampleMethodName::Lttb, None, None, None) => match (raw.points, raw.window) {
            (Some(points), Some(window)) => {
                Ok(DownsampleMethod::Lttb { points: points.as_usize(), window: nanos(window.get()) })
            }
            _ => Err("LTTB needs `points` and `window`"),
        },
        (DownsampleMethodName::Lttb, _, _, _) => {
            Err("LTTB needs `points` and `window` (and no `absolute`, `relative` or `max_error`)")
        }
    }
}
