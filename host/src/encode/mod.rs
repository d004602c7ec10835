//! Encode: a batch → one *record* body, compact CBOR (default) or JSON with the same structure.
//! Also the inverse, for consumers, the console sink and tests.
//!
//! The format is specified in `docs/batch-format.md` with its CDDL in `docs/batch.cddl`; this module
//! is its only implementation. In short: an envelope map with integer keys (format version,
//! gateway, stream, seq, encoded-at) and the readings grouped per series, each group holding the
//! series description, the first event time, the time deltas in the coarsest exact tick (s, ms, µs
//! or ns) and the values as the shortest IEEE float that is exact (half, single or double).
//!
//! Invariants: decoding an encoded batch gives back every reading — same series, same event time
//! to the nanosecond, same value to the bit (NaN payloads aside) — grouped by series in order of
//! first appearance, with each series' readings in their original order. Consumers must ignore
//! envelope keys they do not know: later versions add keys without bumping the format version.
//!
//! Pure: no I/O, no clock (the encode time is a parameter).

use std::collections::HashMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use serde::{Deserialize, Serialize};

use crate::batch::{Batch, BatchBuilder, Nanos, Series};
use crate::config::Encoding;

/// Version written in key 0 of every record.
pub const FORMAT_VERSION: u64 = 1;

/// CBOR envelope keys.
mod key {
    pub const VERSION: u8 = 0;
    pub const GATEWAY: u8 = 1;
    pub const STREAM: u8 = 2;
    pub const SEQ: u8 = 3;
    pub const ENCODED_AT: u8 = 4;
    pub const SERIES: u8 = 5;
}

/// Ticks tried for time deltas, coarsest first (nanoseconds per tick).
const TICKS: [i64; 4] = [1_000_000_000, 1_000_000, 1_000, 1];

/// Identity and metadata of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Gateway that produced it.
    pub gateway: String,
    /// Stream (pipeline) within the gateway.
    pub stream: String,
    /// Position in the stream: starts at 1, increases by one per record.
    pub seq: u64,
    /// Processing time at which the record was encoded.
    pub encoded_at: Nanos,
}

impl RecordHeader {
    /// The end-to-end id `<gateway>.<stream>.<seq>`, used as `Nats-Msg-Id` and for dedup.
    pub fn record_id(&self) -> String {
        format!("{}.{}.{}", self.gateway, self.stream, self.seq)
    }
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedRecord {
    /// Its header.
    pub header: RecordHeader,
    /// Its readings.
    pub batch: Batch,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    /// Not well-formed CBOR or JSON.
    #[error("record is not well-formed {syntax}: {reason}")]
    Syntax {
        /// `CBOR` or `JSON`.
        syntax: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// Well-formed, but not a record of a supported version.
    #[error("record does not follow the batch format: {reason}")]
    Format {
        /// What is wrong.
        reason: String,
    },
}

/// One series' readings, as encoded.
#[derive(Debug, Serialize, Deserialize)]
struct SeriesBlock {
    name: String,
    unit: Option<String>,
    tags: Vec<(String, String)>,
    t0: Nanos,
    tick: i64,
    dt: Vec<i64>,
    values: Vec<Option<f64>>,
}

/// The JSON form of a record (same structure as the CBOR form, named keys).
#[derive(Debug, Serialize, Deserialize)]
struct JsonRecord {
    version: u64,
    gateway: String,
    stream: String,
    seq: u64,
    encoded_at: Nanos,
    series: Vec<SeriesBlock>,
}

/// Groups readings per series (order of first appearance), keeping their order.
fn group(batch: &Batch) -> Vec<(&Series, Vec<usize>)> {
    let mut position: HashMap<u32, usize> = HashMap::new();
    let mut groups: Vec<(&Series, Vec<usize>)> = Vec::new();
    for (reading, &series_idx) in batch.series_idx().iter().enumerate() {
        let slot = *position.entry(series_idx).or_insert_with(|| {
            groups.push((&batch.series()[series_idx as usize], Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(reading);
    }
    groups
}

/// Why a batch cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Two consecutive readings of a series are further apart than the format can express.
    #[error("series {series:?}: consecutive event times {earlier} and {later} are more than 292 years apart")]
    TimeSpan {
        /// The series.
        series: String,
        /// First event time (ns).
        earlier: Nanos,
        /// Second event time (ns).
        later: Nanos,
    },
}

fn block(batch: &Batch, series: &Series, readings: &[usize]) -> Result<SeriesBlock, EncodeError> {
    let ts: Vec<Nanos> = readings.iter().map(|&i| batch.timestamps()[i]).collect();
    let deltas: Vec<i128> = ts.windows(2).map(|w| i128::from(w[1]) - i128::from(w[0])).collect();
    let tick = TICKS
        .into_iter()
        .find(|&tick| deltas.iter().all(|d| d % i128::from(tick) == 0))
        .expect("a tick of 1 ns divides every delta");
    let dt = deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            i64::try_from(d / i128::from(tick)).map_err(|_| EncodeError::TimeSpan {
                series: series.name.clone(),
                earlier: ts[i],
                later: ts[i + 1],
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(SeriesBlock {
        name: series.name.clone(),
        unit: series.unit.clone(),
        tags: series.tags.clone(),
        t0: ts[0],
        tick,
        dt,
        values: readings.iter().map(|&i| Some(batch.values()[i])).collect(),
    })
}

/// Encodes `batch` as a record body.
pub fn encode(encoding: Encoding, header: &RecordHeader, batch: &Batch) -> Result<Vec<u8>, EncodeError> {
    let blocks: Vec<SeriesBlock> =
        group(batch).into_iter().map(|(series, readings)| block(batch, series, &readings)).collect::<Result<_, _>>()?;
    Ok(match encoding {
        Encoding::Cbor => encode_cbor(header, &blocks),
        Encoding::Json => {
            let record = JsonRecord {
                version: FORMAT_VERSION,
                gateway: header.gateway.clone(),
                stream: header.stream.clone(),
                seq: header.seq,
                encoded_at: header.encoded_at,
                series: blocks
                    .into_iter()
                    .map(|mut b| {
                        // JSON has no NaN or infinity: those values become null.
                        b.values.iter_mut().for_each(|v| *v = v.filter(|v| v.is_finite()));
                        b
                    })
                    .collect(),
            };
            serde_json::to_vec(&record).expect("a record of plain data always serializes")
        }
    })
}

fn encode_cbor(header: &RecordHeader, blocks: &[SeriesBlock]) -> Vec<u8> {
    let mut buffer =
        Vec::with_capacity(64 + blocks.iter().map(|b| 16 + b.name.len() + 8 * b.values.len()).sum::<usize>());
    let mut e = Encoder::new(&mut buffer);
    let written: Result<(), minicbor::encode::Error<std::convert::Infallible>> = (|| {
        e.map(6)?;
        e.u8(key::VERSION)?.u64(FORMAT_VERSION)?;
        e.u8(key::GATEWAY)?.str(&header.gateway)?;
        e.u8(key::STREAM)?.str(&header.stream)?;
        e.u8(key::SEQ)?.u64(header.seq)?;
        e.u8(key::ENCODED_AT)?.i64(header.encoded_at)?;
        e.u8(key::SERIES)?.array(blocks.len() as u64)?;
        for block in blocks {
            e.array(7)?;
            e.str(&block.name)?;
            match &block.unit {
                Some(unit) => e.str(unit)?,
                None => e.null()?,
            };
            e.map(block.tags.len() as u64)?;
            for (k, v) in &block.tags {
                e.str(k)?.str(v)?;
            }
            e.i64(block.t0)?.i64(block.tick)?;
            e.array(block.dt.len() as u64)?;
            for dt in &block.dt {
                e.i64(*dt)?;
            }
            e.array(block.values.len() as u64)?;
            for value in &block.values {
                write_shortest_float(&mut e, value.unwrap_or(f64::NAN))?;
            }
        }
        Ok(())
    })();
    written.expect("writing CBOR into a Vec cannot fail");
    buffer
}

/// Writes `value` as the shortest IEEE float that represents it exactly.
fn write_shortest_float<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    value: f64,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    let single = value as f32;
    if f64::from(single) == value || value.is_nan() {
        let half = half::f16::from_f32(single);
        if half.to_f32() == single || value.is_nan() {
            e.f16(single)?;
        } else {
            e.f32(single)?;
        }
    } else {
        e.f64(value)?;
    }
    Ok(())
}

/// Decodes a record body, CBOR or JSON (told apart by the first byte).
pub fn decode(bytes: &[u8]) -> Result<DecodedRecord, RecordDecodeError> {
    let (header, blocks) = if bytes.first() == Some(&b'{') {
        let record: JsonRecord = serde_json::from_slice(bytes)
            .map_err(|e| RecordDecodeError::Syntax { syntax: "JSON", reason: e.to_string() })?;
        check_version(record.version)?;
        let header = RecordHeader {
            gateway: record.gateway,
            stream: record.stream,
            seq: record.seq,
            encoded_at: record.encoded_at,
        };
        (header, record.series)
    } else {
        decode_cbor(bytes)?
    };
    let mut builder = BatchBuilder::new();
    for block in blocks {
        if block.values.is_empty() || block.dt.len() + 1 != block.values.len() || block.tick <= 0 {
            return Err(RecordDecodeError::Format {
                reason: format!(
                    "series {:?}: {} values need {} time deltas and a positive tick",
                    block.name,
                    block.values.len(),
                    block.values.len().saturating_sub(1)
                ),
            });
        }
        let series = Series { name: block.name, unit: block.unit, tags: block.tags };
        let index = builder.intern(&series);
        let mut ts = block.t0;
        for (i, value) in block.values.into_iter().enumerate() {
            if i > 0 {
                ts = block.dt[i - 1].checked_mul(block.tick).and_then(|d| ts.checked_add(d)).ok_or_else(|| {
                    RecordDecodeError::Format { reason: format!("series {:?}: event time overflows", series.name) }
                })?;
            }
            builder.push(index, ts, value.unwrap_or(f64::NAN));
        }
    }
    Ok(DecodedRecord { header, batch: builder.finish() })
}

fn check_version(version: u64) -> Result<(), RecordDecodeError> {
    if version == FORMAT_VERSION {
        Ok(())
    } else {
        Err(RecordDecodeError::Format {
            reason: format!("format version {version} is not supported (expected {FORMAT_VERSION})"),
        })
    }
}

fn decode_cbor(bytes: &[u8]) -> Result<(RecordHeader, Vec<SeriesBlock>), RecordDecodeError> {
    let syntax = |e: minicbor::decode::Error| RecordDecodeError::Syntax { syntax: "CBOR", reason: e.to_string() };
    let format = |reason: &str| RecordDecodeError::Format { reason: reason.to_owned() };
    let mut d = Decoder::new(bytes);
    let entries = d.map().map_err(syntax)?.ok_or_else(|| format("envelope must be a definite-length map"))?;
    let (mut version, mut gateway, mut stream, mut seq, mut encoded_at, mut blocks) =
        (None, None, None, None, None, None);
    for _ in 0..entries {
        match d.u64().map_err(syntax)? {
            k if k == u64::from(key::VERSION) => version = Some(d.u64().map_err(syntax)?),
            k if k == u64::from(key::GATEWAY) => gateway = Some(d.str().map_err(syntax)?.to_owned()),
            k if k == u64::from(key::STREAM) => stream = Some(d.str().map_err(syntax)?.to_owned()),
            k if k == u64::from(key::SEQ) => seq = Some(d.u64().map_err(syntax)?),
            k if k == u64::from(key::ENCODED_AT) => encoded_at = Some(d.i64().map_err(syntax)?),
            k if k == u64::from(key::SERIES) => blocks = Some(decode_blocks(&mut d).map_err(syntax)?),
            _ => d.skip().map_err(syntax)?, // keys from later versions
        }
    }
    check_version(version.ok_or_else(|| format("format version (key 0) is missing"))?)?;
    let header = RecordHeader {
        gateway: gateway.ok_or_else(|| format("gateway (key 1) is missing"))?,
        stream: stream.ok_or_else(|| format("stream (key 2) is missing"))?,
        seq: seq.ok_or_else(|| format("seq (key 3) is missing"))?,
        encoded_at: encoded_at.ok_or_else(|| format("encoded-at (key 4) is missing"))?,
    };
    Ok((header, blocks.ok_or_else(|| format("series (key 5) is missing"))?))
}

fn decode_blocks(d: &mut Decoder<'_>) -> Result<Vec<SeriesBlock>, minicbor::decode::Error> {
    let definite = |len: Option<u64>| {
        len.ok_or_else(|| minicbor::decode::Error::message("arrays and maps must have a definite length"))
    };
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        if definite(d.array()?)? != 7 {
            return Err(minicbor::decode::Error::message("a series block has 7 elements"));
        }
        let name = d.str()?.to_owned();
        let unit = if d.datatype()? == Type::Null {
            d.null()?;
            None
        } else {
            Some(d.str()?.to_owned())
        };
        let tag_count = definite(d.map()?)?;
        let mut tags = Vec::with_capacity(tag_count.min(64) as usize);
        for _ in 0..tag_count {
            tags.push((d.str()?.to_owned(), d.str()?.to_owned()));
        }
        let t0 = d.i64()?;
        let tick = d.i64()?;
        let dt_count = definite(d.array()?)?;
        let dt = (0..dt_count).map(|_| d.i64()).collect::<Result<Vec<_>, _>>()?;
        let value_count = definite(d.array()?)?;
        let values = (0..value_count).map(|_| d.f64().map(Some)).collect::<Result<Vec<_>, _>>()?;
        blocks.push(SeriesBlock { name, unit, tags, t0, tick, dt, values });
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests;
