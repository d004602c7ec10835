//! Dead letters: input the host could not process, kept with the reason so nothing is lost.
//!
//! Stored as CBOR (`minicbor` derive, integer keys); the layout below is the on-disk format and
//! only grows new optional fields.

use minicbor::{Decode, Encode};

use super::StoreError;

/// Most payload bytes a message dead letter keeps; of a larger payload, only this prefix is
/// kept, with the payload's size.
pub const PAYLOAD_PREFIX: usize = 64 * 1024;

/// What could not be processed.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum DeadLetterContent {
    /// A raw message (for example, one that failed to decode).
    #[n(0)]
    Message {
        /// Topic or subject it arrived on.
        #[n(0)]
        topic: String,
        /// The payload, or its first [`PAYLOAD_PREFIX`] bytes when `size` is set.
        #[cbor(n(1), with = "minicbor::bytes")]
        payload: Vec<u8>,
        /// Processing time it was received at (ns since the epoch).
        #[n(2)]
        received_at: i64,
        /// The payload's size when only a prefix of it is kept (`None`: kept whole).
        #[n(3)]
        size: Option<u64>,
    },
    /// A decoded batch (for example, the input of an operator that failed), encoded as a record
    /// with seq 0 (see `encode`).
    #[n(1)]
    Batch {
        /// The record bytes.
        #[cbor(n(0), with = "minicbor::bytes")]
        record: Vec<u8>,
        /// Number of readings in it.
        #[n(1)]
        readings: u64,
    },
}

impl DeadLetterContent {
    /// A message received at `received_at`: its payload whole, or its first
    /// [`PAYLOAD_PREFIX`] bytes and its size if it is larger (of a payload `size` bytes long of
    /// which only `payload` reached the host, at most that prefix of it).
    pub fn message(topic: &str, payload: &[u8], size: u64, received_at: i64) -> Self {
        let kept = payload.len().min(PAYLOAD_PREFIX);
        let whole = kept as u64 == size;
        Self::Message {
            topic: topic.to_owned(),
            payload: payload[..kept].to_vec(),
            received_at,
            size: (!whole).then_some(size),
        }
    }
}

/// One dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub struct DeadLetter {
    /// Pipeline it belongs to.
    #[n(0)]
    pub pipeline: String,
    /// Stage that refused it: `decode`, `operator <name>`, `encode`.
    #[n(1)]
    pub stage: String,
    /// Why, in words.
    #[n(2)]
    pub reason: String,
    /// Processing time at which it was dead-lettered (ns since the epoch).
    #[n(3)]
    pub at: i64,
    /// The input itself.
    #[n(4)]
    pub content: DeadLetterContent,
    /// The function version that refused or faulted (`<id>@<digest prefix>`), when one did.
    #[n(5)]
    pub function: Option<String>,
}

impl DeadLetter {
    /// The stored form.
    pub fn to_bytes(&self) -> Vec<u8> {
        minicbor::to_vec(self).expect("encoding into a Vec cannot fail")
    }

    /// Parses the stored form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        minicbor::decode(bytes).map_err(|e| StoreError::Unreadable { what: "dead letter", reason: e.to_string() })
    }
}
