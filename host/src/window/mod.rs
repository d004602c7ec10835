//! Window: the stage between the operators and the encoder that sends less than it receives.
//! Its pure parts — event-time windows, mergeable aggregates, downsampling — are the
//! `weir-window` crate (`host/window/`), shared with the guest SDK; they are re-exported here.
//!
//! Not wired into pipelines yet.

pub use weir_window::{aggregate, downsample, event_time};
