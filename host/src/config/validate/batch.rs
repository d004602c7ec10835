//! `[pipelines.<name>.batch]`: how messages are batched. Every value was checked against its
//! bounds when it was read (see `raw`), so nothing here can be refused.

use crate::config::BatchConfig;
use crate::config::defaults;
use crate::config::raw::RawBatch;
use crate::config::types::{CountIn, DurationIn, SizeIn};

/// A pipeline's batching, defaults filled in.
pub(super) fn batch(raw: &RawBatch) -> BatchConfig {
    BatchConfig {
        max_messages: raw.max_messages.map_or(defaults::MAX_MESSAGES, CountIn::as_usize),
        max_bytes: raw.max_bytes.map_or(defaults::MAX_BYTES, SizeIn::get),
        linger: raw.linger.map_or(defaults::LINGER, DurationIn::get),
        queue: raw.queue.map_or(defaults::QUEUE, CountIn::as_usize),
    }
}
