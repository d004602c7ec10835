//! Window: the stage between the operators and the encoder that sends less than it receives —
//! event-time windows with mergeable aggregates, and downsampling. Pure: no I/O, no wall clock;
//! time comes in with the readings, and every piece of state is plain data the pipeline commits
//! with its group.
//!
//! So far: [`downsample`] (deadband, swinging door, LTTB).

pub mod downsample;
