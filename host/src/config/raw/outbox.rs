//! `[pipelines.<name>.outbox]` as written: the records waiting for the central broker.

use serde::Deserialize;
use toml::Spanned;

use crate::config::types::{ByteRate, KIB, SizeIn, TIB};

/// `[pipelines.<name>.outbox]` — the records waiting for the central broker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutbox {
    /// `max_bytes = "128MiB"` — encoded records kept at most; see `when_full` (64KiB, room for a
    /// window of in-flight records and a coarsened one, to 1TiB).
    pub max_bytes: Option<SizeIn<{ 64 * KIB }, TIB>>,
    /// `when_full = "reaggregate"` — `reaggregate` (merge the oldest records into coarser
    /// windows), `drop_oldest` or `block` (stop acknowledging input).
    pub when_full: Option<WhenFull>,
    /// `drain = "fifo"` — after an outage: `fifo` (oldest first) or `live_first` (new records
    /// first, the backlog at `backlog_rate`).
    pub drain: Option<DrainOrder>,
    /// `backlog_rate = "256KiB/s"` — with `live_first`: how fast the backlog is sent (up to
    /// 1GiB/s).
    pub backlog_rate: Option<Spanned<ByteRate>>,
}

/// What a full outbox does with a new record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Merge the oldest records into coarser aggregate windows (with an exact marker).
    #[default]
    Reaggregate,
    /// Drop the oldest records (counted, with a marker).
    DropOldest,
    /// Refuse the new record: input is no longer acknowledged until there is room.
    Block,
}

/// The order in which a sink sends what accumulated during an outage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainOrder {
    /// Oldest first.
    #[default]
    Fifo,
    /// New records first; the backlog at a capped rate.
    LiveFirst,
}
