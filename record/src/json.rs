//! The JSON form of a record: the CBOR form's structure with named keys, for debugging and
//! simple consumers. JSON has no NaN or infinity: such values are written as null and read back
//! as NaN. Byte strings (sketches, partials) are hex text.

use serde::{Deserialize, Serialize};

use crate::FORMAT_VERSION;
use crate::batch::Nanos;
use crate::blocks::{AggregateBlock, Parts, ReadError, SeriesBlock, Summaries, WindowBlock};
use crate::model::{Coarsened, RecordHeader, Span};

/// The JSON form of a record (same structure as the CBOR form, named keys).
#[derive(Debug, Serialize, Deserialize)]
struct JsonRecord {
    version: u64,
    gateway: String,
    stream: String,
    seq: u64,
    encoded_at: Nanos,
    series: Vec<SeriesBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aggregates: Vec<AggregateBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    windows: Vec<WindowBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coarsened: Option<Coarsened>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropped: Option<Span>,
}

/// The JSON form of `header` and `summaries`.
pub(crate) fn write(header: &RecordHeader, summaries: Summaries<'_>) -> Vec<u8> {
    let Summaries { blocks, aggregates, windows, coarsened, dropped } = summaries;
    let finite = |values: &mut Vec<Option<f64>>| values.iter_mut().for_each(|v| *v = v.filter(|v| v.is_finite()));
    let record = JsonRecord {
        version: FORMAT_VERSION,
        gateway: header.gateway.clone(),
        stream: header.stream.clone(),
        seq: header.seq,
        encoded_at: header.encoded_at,
        series: blocks
            .into_iter()
            .map(|mut b| {
                finite(&mut b.values);
                b
            })
            .collect(),
        aggregates: aggregates
            .into_iter()
            .map(|mut a| {
                for column in [&mut a.sum, &mut a.min, &mut a.max, &mut a.m2] {
                    finite(column);
                }
                a
            })
            .collect(),
        windows: windows
            .into_iter()
            .map(|mut w| {
                for column in [&mut w.sum, &mut w.min, &mut w.max, &mut w.m2, &mut w.first, &mut w.last] {
                    finite(column);
                }
                w
            })
            .collect(),
        coarsened: coarsened.cloned(),
        dropped: dropped.cloned(),
    };
    serde_json::to_vec(&record).expect("a record of plain data always serializes")
}

/// The parts of the JSON record in `bytes`.
pub(crate) fn read(bytes: &[u8]) -> Result<Parts, ReadError> {
    let record: JsonRecord =
        serde_json::from_slice(bytes).map_err(|e| ReadError::Syntax { syntax: "JSON", reason: e.to_string() })?;
    crate::check_version(record.version)?;
    Ok(Parts {
        header: RecordHeader {
            gateway: record.gateway,
            stream: record.stream,
            seq: record.seq,
            encoded_at: record.encoded_at,
        },
        blocks: record.series,
        aggregates: record.aggregates,
        windows: record.windows,
        coarsened: record.coarsened,
        dropped: record.dropped,
    })
}

/// A column of byte strings as hex text.
pub(crate) mod hex_column {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(column: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(column.iter().map(hex::encode))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts.iter().map(|t| hex::decode(t).map_err(serde::de::Error::custom)).collect()
    }
}
