//! The per-stream counters kept in the store.
//!
//! **Invariant (exact):** a counter changes in the same commit as what it counts, so after any
//! crash it still matches the data — with one stated exception, `published`, which the sink
//! saves with the confirmations that follow its publishes.

use std::fmt;

/// One per-stream counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Input messages committed, and so acknowledged upstream (for sources that acknowledge).
    AckedIn,
    /// Readings decoded from them.
    ReadingsIn,
    /// Dead letters written (messages that did not decode, batches a function refused).
    DeadLettered,
    /// Records appended to the outbox.
    RecordsCommitted,
    /// Readings in those records.
    ReadingsCommitted,
    /// Encoded bytes of those records: divided by `readings_in`, what a reading costs to send.
    BytesCommitted,
    /// Publishes handed to the central broker (re-sends included).
    Published,
    /// Records the central broker confirmed (and that left the outbox).
    Confirmed,
    /// Original records merged into coarser records by a full outbox (counted once, when first
    /// merged).
    RecordsCoarsened,
    /// Readings in them.
    ReadingsCoarsened,
    /// Original records dropped by a full outbox (coarsened ones included).
    RecordsDropped,
    /// Readings in them.
    ReadingsDropped,
    /// Change sets refused because the outbox was full and nothing could make room (each once,
    /// however often it is retried).
    RefusedFull,
    /// Outbox records lost to a damaged database file (see `state::salvage`).
    RecordsUnrecovered,
    /// Window emissions committed (first emissions and corrections).
    WindowsEmitted,
    /// Readings that arrived after every window they belong to had closed (dead-lettered).
    ReadingsTooLate,
    /// Readings given to the downsampler.
    DownsampledIn,
    /// Readings it kept.
    DownsampledOut,
    /// Function calls that faulted (trap, limit, malformed result), decoders, operators and
    /// window aggregates together.
    FunctionFaults,
    /// Quarantines of this pipeline's functions.
    FunctionQuarantines,
    /// Readings that went past a quarantined operator unprocessed (`on_quarantine = "skip"`).
    ReadingsSkipped,
}

impl Counter {
    /// Every counter, in display order.
    pub const ALL: [Counter; 21] = [
        Self::AckedIn,
        Self::ReadingsIn,
        Self::DeadLettered,
        Self::RecordsCommitted,
        Self::ReadingsCommitted,
        Self::BytesCommitted,
        Self::Published,
        Self::Confirmed,
        Self::RecordsCoarsened,
        Self::ReadingsCoarsened,
        Self::RecordsDropped,
        Self::ReadingsDropped,
        Self::RefusedFull,
        Self::RecordsUnrecovered,
        Self::WindowsEmitted,
        Self::ReadingsTooLate,
        Self::DownsampledIn,
        Self::DownsampledOut,
        Self::FunctionFaults,
        Self::FunctionQuarantines,
        Self::ReadingsSkipped,
    ];

    /// Its name in the store, in `weir outbox stats` and in its JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::AckedIn => "acked_in",
            Self::ReadingsIn => "readings_in",
            Self::DeadLettered => "dead_lettered",
            Self::RecordsCommitted => "records_committed",
            Self::ReadingsCommitted => "readings_committed",
            Self::BytesCommitted => "bytes_committed",
            Self::Published => "published",
            Self::Confirmed => "confirmed",
            Self::RecordsCoarsened => "records_coarsened",
            Self::ReadingsCoarsened => "readings_coarsened",
            Self::RecordsDropped => "records_dropped",
            Self::ReadingsDropped => "readings_dropped",
            Self::RefusedFull => "refused_full",
            Self::RecordsUnrecovered => "records_unrecovered",
            Self::WindowsEmitted => "windows_emitted",
            Self::ReadingsTooLate => "readings_too_late",
            Self::DownsampledIn => "downsampled_in",
            Self::DownsampledOut => "downsampled_out",
            Self::FunctionFaults => "function_faults",
            Self::FunctionQuarantines => "function_quarantines",
            Self::ReadingsSkipped => "readings_skipped",
        }
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
