//! `[pipelines.<name>.window]` as written: event-time windows per series (docs/windows.md).

use serde::Deserialize;

use super::RawFunctionUse;
use crate::config::types::{DAY, DurationIn};

/// Width, slide, gap and idle timeout of a window: 1ms to 31 days.
pub type WindowLength = DurationIn<1, { 31 * DAY }>;

/// `[pipelines.<name>.window]` — event-time windows per series, after the operators
/// (docs/windows.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// `kind = "tumbling"` — `tumbling`, `sliding` or `session`.
    pub kind: WindowKindName,
    /// `width = "10s"` — length of tumbling and sliding windows (1ms to 31 days).
    pub width: Option<WindowLength>,
    /// `slide = "5s"` — sliding windows: how far apart they start (1ms to 31 days).
    pub slide: Option<WindowLength>,
    /// `gap = "30s"` — session windows: the silence that ends a session (1ms to 31 days).
    pub gap: Option<WindowLength>,
    /// `allowed_lateness = "5s"` — how far behind its series' newest reading a reading may
    /// arrive and still count (as a correction of a window already sent; 0s to 31 days).
    pub allowed_lateness: Option<DurationIn<0, { 31 * DAY }>>,
    /// `idle_timeout = "1m"` — a series quiet this long has its pending windows sent (1ms to 31
    /// days).
    pub idle_timeout: Option<WindowLength>,
    /// `keep_readings = false` — send the readings as well as the windows.
    #[serde(default)]
    pub keep_readings: bool,
    /// `[pipelines.<name>.window.aggregate]` — a custom aggregate: a function of the
    /// `accumulator` world, computed per window beside the built-in one.
    pub aggregate: Option<RawFunctionUse>,
}

/// The kinds of window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKindName {
    /// Back-to-back windows of `width`.
    Tumbling,
    /// Windows of `width` every `slide`.
    Sliding,
    /// Runs of readings closer than `gap`.
    Session,
}
