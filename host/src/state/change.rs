//! Change sets: everything one unit of work changes in the store — function state writes,
//! outbox records, confirmations, dead letters, the deliveries it consumed, reservations and
//! counters — handed to the committer and applied all-or-nothing (see `committer`).

use std::ops::RangeInclusive;

use super::{Counter, DeadLetter};

/// One write to a function's state namespace; `value: None` deletes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// The namespace (`<pipeline>/<operator name>`).
    pub namespace: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// A record for the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Its stream (pipeline name).
    pub stream: String,
    /// Its position in the stream; must be above every seq assigned before.
    pub seq: u64,
    /// The encoded record body.
    pub body: Vec<u8>,
}

/// Everything one unit of work changes, committed atomically.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Function state writes, applied in order.
    pub state_writes: Vec<StateWrite>,
    /// Records to append to the outbox.
    pub records: Vec<OutboxRecord>,
    /// Records the central broker confirmed: removed from the outbox.
    pub confirmed: Vec<(String, u64)>,
    /// Per stream, the central broker's position (JetStream stream sequence) of the last
    /// confirmed record; kept as the highest ever given.
    pub sink_positions: Vec<(String, u64)>,
    /// Dead letters to keep.
    pub dead_letters: Vec<DeadLetter>,
    /// Identities of the deliveries this change set consumed (source positions).
    pub deliveries: Vec<DeliveryRecord>,
    /// Per stream, the largest record its sink's broker accepts, as it last announced it.
    pub sink_record_limits: Vec<(String, u64)>,
    /// Seqs the sink is about to publish: from now on they are never coarsened or dropped.
    pub reservations: Vec<(String, RangeInclusive<u64>)>,
    /// Counter increments.
    pub counts: Vec<(String, Counter, u64)>,
    /// The fleet agent's records (see `fleet`), by key: written, or removed when `None`.
    pub fleet: Vec<(String, Option<Vec<u8>>)>,
    /// Set by the committer on a change set it hands back because an outbox was full, so that
    /// retrying it does not count as another refusal.
    pub refused_before: bool,
}

/// The identity of a delivery whose derived data this change set commits.
///
/// After a crash between a commit and the acknowledgements that follow it, the broker delivers
/// the same messages again; the source recognises them by these identities and acknowledges them
/// without processing them twice. Only the newest `dedup_horizon` identities per source are kept: what
/// comes back is what was committed but not acknowledged — the acknowledgements queued or in the
/// connection when it failed — so the sources choose a horizon well above that (MQTT: at least
/// 32 768, see `source::mqtt`). An MQTT identity includes a digest of topic and payload, so a
/// recycled packet id is not mistaken for an older delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The source (`mqtt/<client id>`, `jetstream/<stream>/<consumer>`).
    pub source: String,
    /// Protocol-specific identity bytes.
    pub identity: Vec<u8>,
    /// How many of the newest identities of this source to keep.
    pub dedup_horizon: u32,
}

impl ChangeSet {
    /// True when committing would change nothing.
    pub fn is_empty(&self) -> bool {
        self.state_writes.is_empty()
            && self.records.is_empty()
            && self.confirmed.is_empty()
            && self.sink_positions.is_empty()
            && self.sink_record_limits.is_empty()
            && self.dead_letters.is_empty()
            && self.deliveries.is_empty()
            && self.reservations.is_empty()
            && self.counts.is_empty()
            && self.fleet.is_empty()
    }
}
