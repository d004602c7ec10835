//! The window stage's pure parts: what sends less than it receives — event-time windows with
//! mergeable aggregates, and downsampling. No I/O, no clock: time comes in with the readings and
//! as parameters, and every piece of state is plain data (serde) that the host commits with its
//! group.
//!
//! One crate for the host (`weir-host`, which wires it into pipelines) and for function authors
//! (re-exported by `weir-sdk` as `weir_sdk::window`), so both get the same code and the same
//! guarantees.
//!
//! - [`moments`]: count, sum, min, max and the sum of squared deviations, mergeable;
//! - [`aggregate`]: the aggregate of one window (moments, first, last, quantile sketch);
//! - [`accumulator`]: a custom aggregate's partial in a window (the `accumulator` world);
//! - [`event_time`]: tumbling, sliding and session windows per series, watermark, corrections;
//! - [`downsample`]: deadband, swinging door, LTTB.

pub mod accumulator;
pub mod aggregate;
pub mod downsample;
pub mod event_time;
pub mod moments;

/// Event time: nanoseconds since the Unix epoch.
pub type Nanos = i64;
