//! Dead letters: input the host could not process, kept with the reason so nothing is lost.
//!
//! Stored as CBOR (`minicbor` derive, integer keys); the layout below is the on-disk format and
//! only grows new optional fields. The stage is stored as text — the words of
//! [`DeadLetterStage`]'s `Display`, as it was stored before it had a type — and any text reads
//! (a stage this version does not know becomes [`DeadLetterStage::Unknown`]), so every dead
//! letter ever stored still reads, and reads back the same.

use std::fmt;

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
    /// Stage that refused it.
    #[n(1)]
    pub stage: DeadLetterStage,
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

/// The stage that refused a dead letter's input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeadLetterStage {
    /// `source`: the source refused the message (larger than `max_message_size`); its prefix is
    /// kept.
    Source,
    /// `decode`: the message did not decode (a built-in decoder, or a decoder function refusing,
    /// faulting or quarantined).
    Decode,
    /// `operator <name>`: an operator refused the batch, faulted on it or was quarantined.
    Operator {
        /// The use's name in its pipeline.
        name: String,
    },
    /// `window`: readings that arrived after every window they belong to had closed.
    Window,
    /// `window aggregate`: readings the window's custom aggregate could not take.
    WindowAggregate,
    /// `encode`: a part of a batch too large for the sink's record limit by itself.
    Encode,
    /// `sink <kind>`: a record the central broker refused for good.
    Sink {
        /// The sink's kind (`jetstream`, `mqtt`, `console`).
        kind: String,
    },
    /// A stage this version does not know, as stored (by another version).
    Unknown(String),
}

impl DeadLetterStage {
    /// The stage whose stored text is `text`; the inverse of `Display` (any text reads).
    pub fn from_text(text: &str) -> Self {
        match text {
            "source" => Self::Source,
            "decode" => Self::Decode,
            "window" => Self::Window,
            "window aggregate" => Self::WindowAggregate,
            "encode" => Self::Encode,
            _ => {
                if let Some(name) = text.strip_prefix("operator ") {
                    Self::Operator { name: name.to_owned() }
                } else if let Some(kind) = text.strip_prefix("sink ") {
                    Self::Sink { kind: kind.to_owned() }
                } else {
                    Self::Unknown(text.to_owned())
                }
            }
        }
    }
}

impl fmt::Display for DeadLetterStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source => f.write_str("source"),
            Self::Decode => f.write_str("decode"),
            Self::Operator { name } => write!(f, "operator {name}"),
            Self::Window => f.write_str("window"),
            Self::WindowAggregate => f.write_str("window aggregate"),
            Self::Encode => f.write_str("encode"),
            Self::Sink { kind } => write!(f, "sink {kind}"),
            Self::Unknown(text) => f.write_str(text),
        }
    }
}

impl<C> Encode<C> for DeadLetterStage {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        self.to_string().encode(e, ctx)
    }
}

impl<'b, C> Decode<'b, C> for DeadLetterStage {
    fn decode(d: &mut minicbor::Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        String::decode(d, ctx).map(|text| Self::from_text(&text))
    }
}

/// As its text (`weir dead-letters --json`).
impl serde::Serialize for DeadLetterStage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout dead letters were stored in while the stage was a string.
    #[derive(Encode, Decode)]
    struct StoredWithTextStage {
        #[n(0)]
        pipeline: String,
        #[n(1)]
        stage: String,
        #[n(2)]
        reason: String,
        #[n(3)]
        at: i64,
        #[n(4)]
        content: DeadLetterContent,
        #[n(5)]
        function: Option<String>,
    }

    const STAGES: [&str; 8] = [
        "source",
        "decode",
        "operator moving average",
        "window",
        "window aggregate",
        "encode",
        "sink jetstream",
        "a stage of another version",
    ];

    #[test]
    fn stages_read_from_their_text_and_say_it_again() {
        let stages: Vec<DeadLetterStage> = STAGES.iter().map(|text| DeadLetterStage::from_text(text)).collect();
        assert_eq!(
            stages,
            [
                DeadLetterStage::Source,
                DeadLetterStage::Decode,
                DeadLetterStage::Operator { name: "moving average".into() },
                DeadLetterStage::Window,
                DeadLetterStage::WindowAggregate,
                DeadLetterStage::Encode,
                DeadLetterStage::Sink { kind: "jetstream".into() },
                DeadLetterStage::Unknown("a stage of another version".into()),
            ]
        );
        for (stage, text) in stages.iter().zip(STAGES) {
            assert_eq!(stage.to_string(), text);
        }
        assert_eq!(serde_json::to_value(DeadLetterStage::Operator { name: "f".into() }).expect("json"), "operator f");
    }

    #[test]
    fn a_dead_letter_stored_with_a_text_stage_reads_and_is_stored_the_same_again() {
        for text in STAGES {
            let old = StoredWithTextStage {
                pipeline: "p".into(),
                stage: text.into(),
                reason: "faulted: panicked: boom".into(),
                at: 7,
                content: DeadLetterContent::message("t", b"42", 2, 5),
                function: Some("f@0123456789ab".into()),
            };
            let bytes = minicbor::to_vec(&old).expect("encodes");
            let letter = DeadLetter::from_bytes(&bytes).expect("an old dead letter reads");
            assert_eq!(letter.stage, DeadLetterStage::from_text(text));
            assert_eq!((letter.pipeline.as_str(), letter.reason.as_str()), ("p", "faulted: panicked: boom"));
            assert_eq!(letter.to_bytes(), bytes, "{text}: stored the same way as before");
        }
    }

    #[test]
    fn a_dead_letter_from_before_the_stage_type_reads_from_its_bytes() {
        // A decode dead letter as an earlier version stored it:
        // ["p", "decode", "bad", 1, [0, ["t", h'78', 2]]] (minicbor's derive: a struct is an
        // array by index, an enum [index, fields], trailing `None`s left out).
        let stored = hex::decode("856170666465636f646563626164018200836174417802").expect("hex");
        // The same with its `None`s written out as nulls, which reads the same.
        let with_nulls = hex::decode("866170666465636f646563626164018200846174417802f6f6").expect("hex");
        for bytes in [&stored, &with_nulls] {
            let letter = DeadLetter::from_bytes(bytes).expect("reads");
            assert_eq!(letter.stage, DeadLetterStage::Decode);
            assert_eq!((letter.pipeline.as_str(), letter.reason.as_str(), letter.at), ("p", "bad", 1));
            let message =
                DeadLetterContent::Message { topic: "t".into(), payload: b"x".to_vec(), received_at: 2, size: None };
            assert_eq!(letter.content, message);
            assert_eq!(letter.function, None);
            assert_eq!(letter.to_bytes(), stored);
        }
    }
}
