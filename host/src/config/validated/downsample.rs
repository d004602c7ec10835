//! `[pipelines.<name>.downsample]`, validated: which readings of a series are sent.

/// `[pipelines.<name>.downsample]`
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DownsampleConfig {
    /// `method = "deadband"` with its bound — the downsampler.
    pub method: DownsampleMethod,
    /// `idle_timeout = "1m"` — processing time after which a quiet series' held reading is
    /// sent, ns.
    pub idle_timeout: u64,
}

/// A streaming downsampler and its bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DownsampleMethod {
    /// `method = "deadband"` with `absolute = 0.1` — a band in the series' unit (positive).
    DeadbandAbsolute(f64),
    /// `method = "deadband"` with `relative = 0.01` — a band as a fraction of the last kept
    /// value (positive).
    DeadbandRelative(f64),
    /// `method = "swinging_door"` — swinging door with a maximum interpolation error.
    SwingingDoor {
        /// `max_error = 0.1` — in the series' unit (positive).
        max_error: f64,
    },
    /// `method = "lttb"` — largest-triangle-three-buckets per tumbling event-time window.
    Lttb {
        /// `points = 20` — readings kept per window (3 or more).
        points: usize,
        /// `window = "1m"` — the window's width, ns (positive).
        window: u64,
    },
}
