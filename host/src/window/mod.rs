//! Window: the stage between the operators and the encoder that sends less than it receives —
//! event-time windows with mergeable aggregates, and downsampling. Pure: no I/O, no wall clock;
//! time comes in with the readings, and every piece of state is plain data the pipeline commits
//! with its group.
//!
//! - [`aggregate`]: the mergeable aggregate of one window (moments, first, last, quantile sketch);
//! - [`event_time`]: tumbling, sliding and session windows per series, watermark, corrections;
//! - [`downsample`]: deadband, swinging door, LTTB.
//!
//! Not wired into pipelines yet.

pub mod aggregate;
pub mod downsample;
pub mod event_time;
