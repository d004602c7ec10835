//! Decode: message payload bytes → readings.
//!
//! Built-in decoders live here: JSON and CBOR objects through a field mapping, SenML (RFC 8428)
//! in JSON and CBOR, single raw numbers, and weir's own records (`record.rs`). A WebAssembly
//! decoder function implements the same [`Decode`] trait in [`crate::sandbox`]; the pipeline does
//! not tell them apart.
//!
//! Pure: no I/O and no clock — the receive time travels in the [`Message`].
//!
//! Failure of one message: the decoder returns a [`DecodeError`] naming what is wrong and where;
//! the pipeline dead-letters that message (payload and reason) and carries on with the next.
//! Nothing here is fatal.
//!
//! **NaN and ±infinity are not readings.** A message that would yield one — a raw number `NaN`,
//! `inf` or `1e999`, a CBOR float NaN or ±infinity anywhere in the payload, a SenML value whose
//! base and offset add up beyond the largest float, or a decoder function's output holding one —
//! is dead-lettered whole with [`DecodeError::NotFinite`], which names the value and where it was,
//! like any other message that does not decode. (JSON text cannot spell NaN or infinity, and a
//! number beyond the largest float, such as `1e999`, is a JSON syntax error.) One check,
//! [`finite`], serves every decoder.

mod cbor_value;
mod fields;
mod number;
mod record;
mod senml;

use crate::batch::{Batch, CallContext, Message};
use crate::config::DecodeConfig;
use crate::state::StateWrite;

pub use fields::FieldMappingDecoder;
pub use number::RawNumberDecoder;
pub use record::RecordDecoder;
pub use senml::{SenmlCborDecoder, SenmlJsonDecoder};

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not JSON.
    #[error("payload is not valid JSON (line {line}, column {column}): {reason}")]
    Json {
        /// 1-based line of the syntax error.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's message.
        reason: String,
    },
    /// The payload is not well-formed CBOR (or nests deeper than allowed).
    #[error("payload is not valid CBOR (at byte {offset}): {reason}")]
    Cbor {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The payload's top level is not what the format expects.
    #[error("payload must be {expected}, found {found}")]
    Shape {
        /// What the decoder expects.
        expected: &'static str,
        /// What it found.
        found: &'static str,
    },
    /// A configured field is absent.
    #[error("field {pointer} is missing{}", at_item(*item))]
    MissingField {
        /// JSON pointer of the field.
        pointer: String,
        /// Index of the object within an array payload.
        item: Option<usize>,
    },
    /// A field holds the wrong kind of value.
    #[error("field {pointer} must be {expected}, found {found}{}", at_item(*item))]
    FieldType {
        /// JSON pointer of the field.
        pointer: String,
        /// What it must hold.
        expected: &'static str,
        /// What it holds.
        found: String,
        /// Index of the object within an array payload.
        item: Option<usize>,
    },
    /// A timestamp cannot be turned into event time.
    #[error("timestamp {value:?} is not usable: {reason}{}", at_item(*item))]
    Timestamp {
        /// The timestamp as written.
        value: String,
        /// Why.
        reason: String,
        /// Index of the object within an array payload.
        item: Option<usize>,
    },
    /// A SenML record breaks RFC 8428.
    #[error("SenML record {index}: {reason}")]
    Senml {
        /// Index of the record in the pack.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A payload is not a weir record of readings.
    #[error("not a weir record of readings: {reason}")]
    Record {
        /// What is wrong.
        reason: String,
    },
    /// A raw number payload is not a number.
    #[error("payload is not a number: {reason}")]
    Number {
        /// What is wrong.
        reason: String,
    },
    /// A reading would be NaN or infinite (see the module docs).
    #[error("{at} is {value}: NaN and infinity are not readings")]
    NotFinite {
        /// Where the value is (`field /value (array item 2)`, `the CBOR float at byte 9`).
        at: String,
        /// The value.
        value: f64,
    },
    /// A decoder function refused the message (a domain error it returned).
    #[error("decoder function {function} refused the message: {reason}")]
    Refused {
        /// The function's id.
        function: String,
        /// Its reason.
        reason: String,
    },
    /// A decoder function faulted (trap, timeout, memory limit, malformed output).
    #[error("decoder function {function} faulted: {fault}")]
    Fault {
        /// The function's id.
        function: String,
        /// What happened.
        fault: crate::sandbox::Fault,
    },
    /// A decoder function is quarantined after faulting too often in a row; it was not called.
    #[error("decoder function {function} is quarantined for another {}", humantime::format_duration(crate::sandbox::round_to_millis(*.remaining)))]
    Quarantined {
        /// The function's id.
        function: String,
        /// Time left in the quarantine.
        remaining: std::time::Duration,
    },
}

impl DecodeError {
    /// The function version that refused or faulted, when a function decoded.
    pub fn function(&self) -> Option<&str> {
        match self {
            Self::Refused { function, .. } | Self::Fault { function, .. } | Self::Quarantined { function, .. } => {
                Some(function)
            }
            _ => None,
        }
    }
}

/// `value` as a reading, or [`DecodeError::NotFinite`] naming `at()` when it is NaN or infinite.
pub fn finite(value: f64, at: impl FnOnce() -> String) -> Result<f64, DecodeError> {
    if value.is_finite() { Ok(value) } else { Err(DecodeError::NotFinite { at: at(), value }) }
}

fn at_item(item: Option<usize>) -> String {
    item.map(|i| format!(" (array item {i})")).unwrap_or_default()
}

/// Turns one message into readings.
///
/// `Send` because the pipeline moves its decoder onto a blocking thread for each batch.
pub trait Decode: Send {
    /// Decodes `message`. An empty batch is a valid answer (a SenML pack of strings, say).
    /// Built-in decoders ignore `ctx`; decoder functions see it through their clock.
    fn decode(&mut self, message: &Message, ctx: &CallContext) -> Result<Batch, DecodeError>;

    /// State writes of successful calls since the last take (decoder functions only).
    fn take_state_writes(&mut self) -> Vec<StateWrite> {
        Vec::new()
    }
}

/// The built-in decoder for `config`, or `None` when the config names a decoder function.
pub fn builtin(config: &DecodeConfig) -> Option<Box<dyn Decode>> {
    Some(match config {
        DecodeConfig::Json(mapping) => Box::new(FieldMappingDecoder::json(mapping.clone())),
        DecodeConfig::Cbor(mapping) => Box::new(FieldMappingDecoder::cbor(mapping.clone())),
        DecodeConfig::SenmlJson => Box::new(SenmlJsonDecoder),
        DecodeConfig::SenmlCbor => Box::new(SenmlCborDecoder),
        DecodeConfig::WeirRecord => Box::new(RecordDecoder),
        DecodeConfig::RawNumber { encoding, series_prefix, unit } => {
            Box::new(RawNumberDecoder::new(*encoding, series_prefix.clone(), unit.clone()))
        }
        DecodeConfig::Function(_) => return None,
    })
}

/// Name of a JSON value's kind, for error messages.
fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_json(payload: &[u8]) -> Result<serde_json::Value, DecodeError> {
    serde_json::from_slice(payload).map_err(|e| DecodeError::Json {
        line: e.line(),
        column: e.column(),
        reason: e.to_string(),
    })
}
