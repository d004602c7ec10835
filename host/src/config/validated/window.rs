//! `[pipelines.<name>.window]`, validated: the event-time windows after a pipeline's operators.

use crate::config::FunctionUse;

/// `[pipelines.<name>.window]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// `kind = "sliding"`, `width = "1m"`, `slide = "15s"`, `gap = "30s"`,
    /// `allowed_lateness = "0s"`, `idle_timeout = "1m"` (default: the width or gap plus the
    /// lateness) — kind, sizes, lateness and idle timeout, in nanoseconds.
    pub spec: weir_window::event_time::WindowSpec,
    /// `keep_readings = false` — whether records carry the readings as well as the windows.
    pub keep_readings: bool,
    /// `[pipelines.<name>.window.aggregate]` — the custom aggregate's function (an
    /// `accumulator`), if any; its use is named `window-aggregate`.
    pub aggregate: Option<FunctionUse>,
}
