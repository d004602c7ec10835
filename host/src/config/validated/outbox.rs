//! `[pipelines.<name>.outbox]`, validated: how many records wait for the central broker, what a
//! full outbox does, and how the sink catches up.

use crate::config::WhenFull;

/// `[pipelines.<name>.outbox]`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    /// `max_bytes = "128MiB"` — encoded records kept at most (one group of new records may
    /// exceed it while the outbox is otherwise empty).
    pub max_bytes: u64,
    /// `when_full = "reaggregate"` — what happens to a new record when the outbox is full.
    pub when_full: WhenFull,
    /// `drain = "fifo"` — how the sink catches up after an outage.
    pub drain: Drain,
}

/// How a sink catches up after an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// `drain = "fifo"` — oldest records first.
    Fifo,
    /// `drain = "live_first"` — records committed after the (re)connection first; the backlog
    /// at a capped rate.
    LiveFirst {
        /// `backlog_rate = "256KiB/s"` — backlog bytes sent per second at most.
        backlog_bytes_per_second: u64,
    },
}
