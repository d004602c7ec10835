//! weir's record format: what a gateway forwards to the central broker, as a model and as bytes.
//!
//! A *record* is one outbox entry: readings grouped per series, or a summary of other records
//! (aggregate windows, a drop marker), plus the emissions of a pipeline's event-time windows, each
//! with its quantile sketch. The format is specified in `docs/batch-format.md` with its CDDL in
//! `docs/batch.cddl`; this crate is its only implementation, and it depends on nothing of the
//! gateway, so a central consumer in Rust links the same code the gateway writes with.
//!
//! - [`model`]: [`Record`] and its parts;
//! - [`batch`]: readings, columnar ([`Batch`], [`Series`]);
//! - [`sketch`]: the quantile sketch as published (DataDog's DDSketch protobuf) and read back;
//! - [`write`] / [`write_readings`] and [`read`] / [`read_cbor_prefix`]: the bytes, CBOR (default)
//!   or JSON with the same structure.
//!
//! **Invariants:** reading a written record gives back every reading — same series, same event
//! time to the nanosecond, same value to the bit (NaN payloads aside) — grouped by series in order
//! of first appearance, each series' readings in their original order. Readers ignore envelope
//! keys and columns they do not know: later versions add keys without bumping the format version,
//! and a key never changes meaning (a new meaning gets a new key and a new version).
//!
//! Pure: no I/O, no clock (the encode time is part of the header).

pub mod batch;
mod blocks;
mod cbor;
mod json;
pub mod model;
pub mod sketch;

use serde::Deserialize;

pub use batch::{Batch, BatchBuilder, Nanos, Series};
pub use blocks::{ReadError, WriteError};
pub use model::{
    AggregateSeries, Coarsened, CustomWindow, Record, RecordHeader, RecordKind, Span, TimedValue, Window, WindowSeries,
    WindowValue, window_start,
};
pub use sketch::Sketch;

/// Version written in key 0 of every record. Version 2 publishes window sketches as DDSketch
/// protobuf (window column 17) instead of DataDog's Java binary encoding (column 13).
pub const FORMAT_VERSION: u64 = 2;

/// The oldest version read.
pub const OLDEST_FORMAT_VERSION: u64 = 1;

/// How records are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Compact CBOR, schema in docs/batch-format.md.
    #[default]
    Cbor,
    /// JSON with the same structure, for debugging and simple consumers.
    Json,
}

/// Writes a record of readings only.
pub fn write_readings(encoding: Encoding, header: &RecordHeader, batch: &Batch) -> Result<Vec<u8>, WriteError> {
    let summaries = blocks::Summaries { blocks: blocks::readings(batch)?, ..blocks::Summaries::default() };
    Ok(write_summaries(encoding, header, summaries))
}

/// Writes any record: readings, aggregates, window emissions and summary markers.
pub fn write(encoding: Encoding, record: &Record) -> Result<Vec<u8>, WriteError> {
    Ok(write_summaries(encoding, &record.header, blocks::summaries(record)?))
}

fn write_summaries(encoding: Encoding, header: &RecordHeader, summaries: blocks::Summaries<'_>) -> Vec<u8> {
    match encoding {
        Encoding::Cbor => cbor::write(header, &summaries),
        Encoding::Json => json::write(header, summaries),
    }
}

/// Reads a record, CBOR or JSON (told apart by the first byte).
pub fn read(bytes: &[u8]) -> Result<Record, ReadError> {
    let parts = if bytes.first() == Some(&b'{') { json::read(bytes)? } else { cbor::read(bytes)?.0 };
    blocks::record_of(parts)
}

/// Reads the CBOR record that starts at `bytes[0]` and ignores what follows it; returns the
/// record and its length. For reading records out of raw bytes (a damaged data file): it
/// allocates at most in proportion to `bytes.len()` and rejects any malformed item.
pub fn read_cbor_prefix(bytes: &[u8]) -> Result<(Record, usize), ReadError> {
    let (parts, length) = cbor::read(bytes)?;
    Ok((blocks::record_of(parts)?, length))
}

fn check_version(version: u64) -> Result<(), ReadError> {
    if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        Ok(())
    } else {
        Err(ReadError::Format {
            reason: format!(
                "format version {version} is not supported (expected {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION})"
            ),
        })
    }
}

#[cfg(test)]
mod tests;
