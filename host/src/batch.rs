//! The data model every stage shares: [`Series`] and the columnar [`Batch`] (from the record
//! format's crate, `weir-record`, so that a central consumer reads what the gateway builds), the
//! raw [`Message`] a source hands on, and the [`CallContext`] a function is called with.

use bytes::Bytes;

pub use weir_record::batch::{Batch, BatchBuilder, InvalidBatch, Nanos, Sample, Series};

/// What the host tells a function about the call it is making.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallContext {
    /// Processing time at the start of the batch.
    pub processing_time: Nanos,
    /// The pipeline's watermark: the highest event time seen so far.
    pub watermark: Nanos,
}

/// One raw message as received from a broker or simulator, before decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// MQTT topic or NATS subject.
    pub topic: String,
    /// The payload, unchanged.
    pub payload: Bytes,
    /// Processing time at which the host received it.
    pub received_at: Nanos,
}
