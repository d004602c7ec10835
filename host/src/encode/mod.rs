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
//! A record may instead (or also) summarise other records: a *coarsened* record carries aggregate
//! windows and the [`Span`] of original records it replaced; a *drop marker* carries only the
//! span of records dropped (see `summary` and `state::outbox`).
//!
//! Pure: no I/O, no clock (the encode time is a parameter).

mod fit;
mod summary;

use std::collections::{BTreeMap, HashMap};

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use serde::{Deserialize, Serialize};

use crate::batch::{Batch, BatchBuilder, Nanos, Series};
use crate::config::Encoding;

pub use fit::{FitOutcome, Fitted, Unfit, fit};
pub use summary::{AggregateSeries, CustomWindow, Span, TimedValue, Window, WindowSeries, WindowValue, window_start};

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
    pub const AGGREGATES: u8 = 6;
    pub const COARSENED: u8 = 7;
    pub const DROPPED: u8 = 8;
    pub const WINDOWS: u8 = 9;
}

/// Keys of a span map (and of the coarsened marker, which adds `WIDTH`).
mod span_key {
    pub const FIRST_SEQ: u64 = 0;
    pub const LAST_SEQ: u64 = 1;
    pub const RECORDS: u64 = 2;
    pub const READINGS: u64 = 3;
    pub const EARLIEST: u64 = 4;
    pub const LATEST: u64 = 5;
    pub const FIRST_ENCODED_AT: u64 = 6;
    pub const WIDTH: u64 = 7;
}

/// Keys of an aggregate block's statistics map.
mod stat_key {
    pub const COUNT: u64 = 0;
    pub const SUM: u64 = 1;
    pub const MIN: u64 = 2;
    pub const MAX: u64 = 3;
    pub const M2: u64 = 4;
}

/// Keys of a window block's column map.
mod window_key {
    pub const KEY: u64 = 0;
    pub const START: u64 = 1;
    pub const END: u64 = 2;
    pub const REVISION: u64 = 3;
    pub const COUNT: u64 = 4;
    pub const SUM: u64 = 5;
    pub const MIN: u64 = 6;
    pub const MAX: u64 = 7;
    pub const M2: u64 = 8;
    pub const FIRST_TS: u64 = 9;
    pub const FIRST: u64 = 10;
    pub const LAST_TS: u64 = 11;
    pub const LAST: u64 = 12;
    pub const SKETCH: u64 = 13;
    pub const CUSTOM: u64 = 14;
    pub const CUSTOM_PARTIAL: u64 = 15;
    pub const CUSTOM_MISSING: u64 = 16;
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

/// A record: readings, or a summary of other records, or both.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its header.
    pub header: RecordHeader,
    /// Its readings.
    pub batch: Batch,
    /// Aggregate windows (coarsened records).
    pub aggregates: Vec<AggregateSeries>,
    /// Event-time window emissions (pipelines with a window stage).
    pub windows: Vec<WindowSeries>,
    /// Set on a coarsened record: the original records it replaces and the window width.
    pub coarsened: Option<Coarsened>,
    /// Set on a drop marker: the original records that were dropped.
    pub dropped: Option<Span>,
}

/// What a coarsened record replaced, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coarsened {
    /// The original records it stands for.
    pub span: Span,
    /// Width of its aggregate windows, ns.
    pub width: u64,
}

/// What a record is, as far as the outbox is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Readings as processed.
    Readings,
    /// Aggregates replacing original records, in windows of this width (ns).
    Coarsened {
        /// The window width, ns.
        width: u64,
    },
    /// A marker for dropped records.
    Dropped,
}

impl Record {
    /// A record of readings.
    pub fn of_readings(header: RecordHeader, batch: Batch) -> Self {
        Self { header, batch, aggregates: Vec::new(), windows: Vec::new(), coarsened: None, dropped: None }
    }

    /// What the record is.
    pub fn kind(&self) -> RecordKind {
        match (&self.coarsened, &self.dropped) {
            (Some(coarsened), _) => RecordKind::Coarsened { width: coarsened.width },
            (None, Some(_)) => RecordKind::Dropped,
            (None, None) => RecordKind::Readings,
        }
    }

    /// The original records this record stands for: its span when it summarises, else itself.
    pub fn span(&self) -> Span {
        if let Some(coarsened) = &self.coarsened {
            return coarsened.span.clone();
        }
        if let Some(dropped) = &self.dropped {
            return dropped.clone();
        }
        let times = self.batch.timestamps().iter().fold(None, |range: Option<(Nanos, Nanos)>, &ts| {
            Some(range.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))))
        });
        Span::of_record(self.header.seq, self.batch.len() as u64, times, self.header.encoded_at)
    }
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

/// One series' aggregate windows, as encoded: columns per statistic.
#[derive(Debug, Default, Serialize, Deserialize)]
struct AggregateBlock {
    name: String,
    unit: Option<String>,
    tags: Vec<(String, String)>,
    width: u64,
    start0: Nanos,
    dstart: Vec<u64>,
    count: Vec<u64>,
    sum: Vec<Option<f64>>,
    min: Vec<Option<f64>>,
    max: Vec<Option<f64>>,
    m2: Vec<Option<f64>>,
}

/// One series' window emissions, as encoded: columns, one entry per emission.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WindowBlock {
    name: String,
    unit: Option<String>,
    tags: Vec<(String, String)>,
    key: Vec<Nanos>,
    start: Vec<Nanos>,
    end: Vec<Nanos>,
    revision: Vec<u32>,
    count: Vec<u64>,
    sum: Vec<Option<f64>>,
    min: Vec<Option<f64>>,
    max: Vec<Option<f64>>,
    m2: Vec<Option<f64>>,
    first_ts: Vec<Option<Nanos>>,
    first: Vec<Option<f64>>,
    last_ts: Vec<Option<Nanos>>,
    last: Vec<Option<f64>>,
    /// DDSketch standard encoding; hex in JSON.
    #[serde(with = "hex_sketches")]
    sketch: Vec<Vec<u8>>,
    /// The custom aggregate's values (all three custom columns are empty when the pipeline has
    /// none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    custom: Vec<Option<BTreeMap<String, Option<f64>>>>,
    /// Its partials; hex in JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "hex_sketches")]
    custom_partial: Vec<Vec<u8>>,
    /// Readings the partials leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    custom_missing: Vec<u64>,
}

mod hex_sketches {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(sketches: &[Vec<u8>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(sketches.iter().map(hex::encode))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts.iter().map(|t| hex::decode(t).map_err(serde::de::Error::custom)).collect()
    }
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aggregates: Vec<AggregateBlock>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    windows: Vec<WindowBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    coarsened: Option<Coarsened>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dropped: Option<Span>,
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
    Ok(write(encoding, header, Summaries { blocks, ..Summaries::default() }))
}

/// Encodes any record: readings, aggregates and summary markers.
pub fn encode_record(encoding: Encoding, record: &Record) -> Result<Vec<u8>, EncodeError> {
    let blocks: Vec<SeriesBlock> = group(&record.batch)
        .into_iter()
        .map(|(series, readings)| block(&record.batch, series, &readings))
        .collect::<Result<_, _>>()?;
    let summaries = Summaries {
        blocks,
        aggregates: record.aggregates.iter().map(aggregate_block).collect(),
        windows: record.windows.iter().map(window_block).collect(),
        coarsened: record.coarsened.as_ref(),
        dropped: record.dropped.as_ref(),
    };
    Ok(write(encoding, &record.header, summaries))
}

fn window_block(series: &WindowSeries) -> WindowBlock {
    let windows = &series.windows;
    let stat = |f: fn(&WindowValue) -> f64| windows.iter().map(|w| Some(f(w)).filter(|_| w.stats.count > 0)).collect();
    WindowBlock {
        name: series.series.name.clone(),
        unit: series.series.unit.clone(),
        tags: series.series.tags.clone(),
        key: windows.iter().map(|w| w.key).collect(),
        start: windows.iter().map(|w| w.start).collect(),
        end: windows.iter().map(|w| w.end).collect(),
        revision: windows.iter().map(|w| w.revision).collect(),
        count: windows.iter().map(|w| w.stats.count).collect(),
        sum: stat(|w| w.stats.sum),
        min: stat(|w| w.stats.min),
        max: stat(|w| w.stats.max),
        m2: stat(|w| w.stats.m2),
        first_ts: windows.iter().map(|w| w.first.map(|f| f.ts)).collect(),
        first: windows.iter().map(|w| w.first.map(|f| f.value)).collect(),
        last_ts: windows.iter().map(|w| w.last.map(|l| l.ts)).collect(),
        last: windows.iter().map(|w| w.last.map(|l| l.value)).collect(),
        sketch: windows.iter().map(|w| w.sketch.clone()).collect(),
        ..custom_columns(windows)
    }
}

fn aggregate_block(aggregate: &AggregateSeries) -> AggregateBlock {
    let windows = &aggregate.windows;
    let column = |stat: fn(&Window) -> f64| windows.iter().map(|w| Some(stat(w))).collect();
    AggregateBlock {
        name: aggregate.series.name.clone(),
        unit: aggregate.series.unit.clone(),
        tags: aggregate.series.tags.clone(),
        width: aggregate.width,
        start0: windows.first().map_or(0, |w| w.start),
        dstart: windows
            .windows(2)
            .map(|pair| (pair[1].start - pair[0].start).unsigned_abs() / aggregate.width)
            .collect(),
        count: windows.iter().map(|w| w.count).collect(),
        sum: column(|w| w.sum),
        min: column(|w| w.min),
        max: column(|w| w.max),
        m2: column(|w| w.m2),
    }
}

/// Everything of a record besides its header, as encoded.
#[derive(Default)]
struct Summaries<'a> {
    blocks: Vec<SeriesBlock>,
    aggregates: Vec<AggregateBlock>,
    windows: Vec<WindowBlock>,
    coarsened: Option<&'a Coarsened>,
    dropped: Option<&'a Span>,
}

fn write(encoding: Encoding, header: &RecordHeader, summaries: Summaries<'_>) -> Vec<u8> {
    let Summaries { blocks, aggregates, windows, coarsened, dropped } = summaries;
    match encoding {
        Encoding::Cbor => encode_cbor(header, &blocks, &aggregates, &windows, coarsened, dropped),
        Encoding::Json => {
            // JSON has no NaN or infinity: such values become null.
            let finite =
                |values: &mut Vec<Option<f64>>| values.iter_mut().for_each(|v| *v = v.filter(|v| v.is_finite()));
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
    }
}

type CborResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn encode_cbor(
    header: &RecordHeader,
    blocks: &[SeriesBlock],
    aggregates: &[AggregateBlock],
    windows: &[WindowBlock],
    coarsened: Option<&Coarsened>,
    dropped: Option<&Span>,
) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(
        64 + blocks.iter().map(|b| 16 + b.name.len() + 8 * b.values.len()).sum::<usize>()
            + aggregates.iter().map(|a| 16 + a.name.len() + 40 * a.count.len()).sum::<usize>()
            + windows.iter().map(|w| 16 + w.name.len() + 120 * w.count.len()).sum::<usize>(),
    );
    let mut e = Encoder::new(&mut buffer);
    let written: CborResult = (|| {
        let optional = u64::from(!aggregates.is_empty())
            + u64::from(!windows.is_empty())
            + u64::from(coarsened.is_some())
            + u64::from(dropped.is_some());
        e.map(6 + optional)?;
        e.u8(key::VERSION)?.u64(FORMAT_VERSION)?;
        e.u8(key::GATEWAY)?.str(&header.gateway)?;
        e.u8(key::STREAM)?.str(&header.stream)?;
        e.u8(key::SEQ)?.u64(header.seq)?;
        e.u8(key::ENCODED_AT)?.i64(header.encoded_at)?;
        e.u8(key::SERIES)?.array(blocks.len() as u64)?;
        for block in blocks {
            e.array(7)?;
            write_series(&mut e, &block.name, block.unit.as_deref(), &block.tags)?;
            e.i64(block.t0)?.i64(block.tick)?;
            e.array(block.dt.len() as u64)?;
            for dt in &block.dt {
                e.i64(*dt)?;
            }
            write_floats(&mut e, &block.values)?;
        }
        if !aggregates.is_empty() {
            e.u8(key::AGGREGATES)?.array(aggregates.len() as u64)?;
            for block in aggregates {
                e.array(7)?;
                write_series(&mut e, &block.name, block.unit.as_deref(), &block.tags)?;
                e.u64(block.width)?.i64(block.start0)?;
                e.array(block.dstart.len() as u64)?;
                for d in &block.dstart {
                    e.u64(*d)?;
                }
                e.map(5)?;
                e.u64(stat_key::COUNT)?.array(block.count.len() as u64)?;
                for c in &block.count {
                    e.u64(*c)?;
                }
                for (stat, column) in [
                    (stat_key::SUM, &block.sum),
                    (stat_key::MIN, &block.min),
                    (stat_key::MAX, &block.max),
                    (stat_key::M2, &block.m2),
                ] {
                    e.u64(stat)?;
                    write_floats(&mut e, column)?;
                }
            }
        }
        if !windows.is_empty() {
            e.u8(key::WINDOWS)?.array(windows.len() as u64)?;
            for block in windows {
                write_window_block(&mut e, block)?;
            }
        }
        if let Some(coarsened) = coarsened {
            e.u8(key::COARSENED)?;
            write_span(&mut e, &coarsened.span, Some(coarsened.width))?;
        }
        if let Some(dropped) = dropped {
            e.u8(key::DROPPED)?;
            write_span(&mut e, dropped, None)?;
        }
        Ok(())
    })();
    written.expect("writing CBOR into a Vec cannot fail");
    buffer
}

fn write_series(
    e: &mut Encoder<&mut Vec<u8>>,
    name: &str,
    unit: Option<&str>,
    tags: &[(String, String)],
) -> CborResult {
    e.str(name)?;
    match unit {
        Some(unit) => e.str(unit)?,
        None => e.null()?,
    };
    e.map(tags.len() as u64)?;
    for (k, v) in tags {
        e.str(k)?.str(v)?;
    }
    Ok(())
}

/// The custom columns of a window block: empty when no window has a custom aggregate.
fn custom_columns(windows: &[WindowValue]) -> WindowBlock {
    if windows.iter().all(|w| w.custom.is_none()) {
        return WindowBlock::default();
    }
    let none = CustomWindow::default();
    let custom = || windows.iter().map(|w| w.custom.as_ref().unwrap_or(&none));
    WindowBlock {
        custom: custom()
            .map(|c| c.values.as_ref().map(|v| v.iter().map(|(k, v)| (k.clone(), Some(*v))).collect()))
            .collect(),
        custom_partial: custom().map(|c| c.partial.clone()).collect(),
        custom_missing: custom().map(|c| c.missing).collect(),
        ..WindowBlock::default()
    }
}

fn write_window_block(e: &mut Encoder<&mut Vec<u8>>, block: &WindowBlock) -> CborResult {
    e.array(4)?;
    write_series(e, &block.name, block.unit.as_deref(), &block.tags)?;
    let has_custom = !block.custom_partial.is_empty();
    e.map(if has_custom { 17 } else { 14 })?;
    for (k, column) in [(window_key::KEY, &block.key), (window_key::START, &block.start), (window_key::END, &block.end)]
    {
        e.u64(k)?.array(column.len() as u64)?;
        for t in column {
            e.i64(*t)?;
        }
    }
    e.u64(window_key::REVISION)?.array(block.revision.len() as u64)?;
    for r in &block.revision {
        e.u32(*r)?;
    }
    e.u64(window_key::COUNT)?.array(block.count.len() as u64)?;
    for c in &block.count {
        e.u64(*c)?;
    }
    for (k, column) in [
        (window_key::SUM, &block.sum),
        (window_key::MIN, &block.min),
        (window_key::MAX, &block.max),
        (window_key::M2, &block.m2),
    ] {
        e.u64(k)?;
        write_floats(e, column)?;
    }
    for (k_ts, times, k_value, values) in [
        (window_key::FIRST_TS, &block.first_ts, window_key::FIRST, &block.first),
        (window_key::LAST_TS, &block.last_ts, window_key::LAST, &block.last),
    ] {
        e.u64(k_ts)?.array(times.len() as u64)?;
        for t in times {
            match t {
                Some(t) => e.i64(*t)?,
                None => e.null()?,
            };
        }
        e.u64(k_value)?;
        write_floats(e, values)?;
    }
    e.u64(window_key::SKETCH)?.array(block.sketch.len() as u64)?;
    for sketch in &block.sketch {
        e.bytes(sketch)?;
    }
    if has_custom {
        e.u64(window_key::CUSTOM)?.array(block.custom.len() as u64)?;
        for values in &block.custom {
            match values {
                None => {
                    e.null()?;
                }
                Some(values) => {
                    e.map(values.len() as u64)?;
                    for (name, value) in values {
                        e.str(name)?;
                        write_shortest_float(e, value.unwrap_or(f64::NAN))?;
                    }
                }
            }
        }
        e.u64(window_key::CUSTOM_PARTIAL)?.array(block.custom_partial.len() as u64)?;
        for partial in &block.custom_partial {
            e.bytes(partial)?;
        }
        e.u64(window_key::CUSTOM_MISSING)?.array(block.custom_missing.len() as u64)?;
        for missing in &block.custom_missing {
            e.u64(*missing)?;
        }
    }
    Ok(())
}

fn write_floats(e: &mut Encoder<&mut Vec<u8>>, values: &[Option<f64>]) -> CborResult {
    e.array(values.len() as u64)?;
    for value in values {
        write_shortest_float(e, value.unwrap_or(f64::NAN))?;
    }
    Ok(())
}

fn write_span(e: &mut Encoder<&mut Vec<u8>>, span: &Span, width: Option<u64>) -> CborResult {
    e.map(7 + u64::from(width.is_some()))?;
    e.u64(span_key::FIRST_SEQ)?.u64(span.first_seq)?;
    e.u64(span_key::LAST_SEQ)?.u64(span.last_seq)?;
    e.u64(span_key::RECORDS)?.u64(span.records)?;
    e.u64(span_key::READINGS)?.u64(span.readings)?;
    for (k, time) in [(span_key::EARLIEST, span.earliest), (span_key::LATEST, span.latest)] {
        e.u64(k)?;
        match time {
            Some(t) => e.i64(t)?,
            None => e.null()?,
        };
    }
    e.u64(span_key::FIRST_ENCODED_AT)?.i64(span.first_encoded_at)?;
    if let Some(width) = width {
        e.u64(span_key::WIDTH)?.u64(width)?;
    }
    Ok(())
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

/// The parts of a record as read, before checking.
struct Parts {
    header: RecordHeader,
    blocks: Vec<SeriesBlock>,
    aggregates: Vec<AggregateBlock>,
    windows: Vec<WindowBlock>,
    coarsened: Option<Coarsened>,
    dropped: Option<Span>,
}

/// Decodes a record body, CBOR or JSON (told apart by the first byte).
pub fn decode(bytes: &[u8]) -> Result<Record, RecordDecodeError> {
    let parts = if bytes.first() == Some(&b'{') {
        let record: JsonRecord = serde_json::from_slice(bytes)
            .map_err(|e| RecordDecodeError::Syntax { syntax: "JSON", reason: e.to_string() })?;
        check_version(record.version)?;
        Parts {
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
        }
    } else {
        decode_cbor(bytes)?.0
    };
    record_of(parts)
}

/// Decodes the CBOR record that starts at `bytes[0]` and ignores what follows it; returns the
/// record and its length. For reading records out of raw bytes (a damaged data file): it
/// allocates at most in proportion to `bytes.len()` and rejects any malformed item.
pub fn decode_cbor_prefix(bytes: &[u8]) -> Result<(Record, usize), RecordDecodeError> {
    let (parts, length) = decode_cbor(bytes)?;
    Ok((record_of(parts)?, length))
}

fn record_of(parts: Parts) -> Result<Record, RecordDecodeError> {
    let mut builder = BatchBuilder::new();
    for block in parts.blocks {
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
    let aggregates = parts.aggregates.into_iter().map(aggregate_series).collect::<Result<_, _>>()?;
    let windows = parts.windows.into_iter().map(window_series).collect::<Result<_, _>>()?;
    Ok(Record {
        header: parts.header,
        batch: builder.finish(),
        aggregates,
        windows,
        coarsened: parts.coarsened,
        dropped: parts.dropped,
    })
}

fn aggregate_series(block: AggregateBlock) -> Result<AggregateSeries, RecordDecodeError> {
    let windows = block.count.len();
    let columns = [&block.sum, &block.min, &block.max, &block.m2];
    if windows == 0 || block.dstart.len() + 1 != windows || columns.iter().any(|c| c.len() != windows) {
        return Err(RecordDecodeError::Format {
            reason: format!(
                "aggregates of {:?}: every statistic needs one value per window and one start delta fewer",
                block.name
            ),
        });
    }
    let width = i64::try_from(block.width).ok().filter(|w| *w > 0).ok_or_else(|| RecordDecodeError::Format {
        reason: format!("aggregates of {:?}: window width {} is not a positive i64", block.name, block.width),
    })?;
    let mut start = block.start0;
    let mut out = Vec::with_capacity(windows);
    for i in 0..windows {
        if i > 0 {
            start = i64::try_from(block.dstart[i - 1])
                .ok()
                .and_then(|d| d.checked_mul(width))
                .and_then(|d| start.checked_add(d))
                .ok_or_else(|| RecordDecodeError::Format {
                    reason: format!("aggregates of {:?}: window start overflows", block.name),
                })?;
        }
        let stat = |column: &Vec<Option<f64>>| column[i].unwrap_or(f64::NAN);
        out.push(Window {
            start,
            count: block.count[i],
            sum: stat(&block.sum),
            min: stat(&block.min),
            max: stat(&block.max),
            m2: stat(&block.m2),
        });
    }
    Ok(AggregateSeries {
        series: Series { name: block.name, unit: block.unit, tags: block.tags },
        width: block.width,
        windows: out,
    })
}

fn window_series(block: WindowBlock) -> Result<WindowSeries, RecordDecodeError> {
    let n = block.key.len();
    let lengths = [
        block.start.len(),
        block.end.len(),
        block.revision.len(),
        block.count.len(),
        block.sum.len(),
        block.min.len(),
        block.max.len(),
        block.m2.len(),
        block.first_ts.len(),
        block.first.len(),
        block.last_ts.len(),
        block.last.len(),
        block.sketch.len(),
    ];
    let custom_lengths = [block.custom.len(), block.custom_partial.len(), block.custom_missing.len()];
    let has_custom = custom_lengths.iter().any(|len| *len > 0);
    if lengths.iter().any(|len| *len != n) || (has_custom && custom_lengths.iter().any(|len| *len != n)) {
        return Err(RecordDecodeError::Format {
            reason: format!("windows of {:?}: every column needs one entry per window", block.name),
        });
    }
    let timed =
        |ts: Option<Nanos>, value: Option<f64>| ts.map(|ts| TimedValue { ts, value: value.unwrap_or(f64::NAN) });
    let stat = |column: &Vec<Option<f64>>, i: usize| column[i].unwrap_or(f64::NAN);
    let windows = (0..n)
        .map(|i| WindowValue {
            key: block.key[i],
            start: block.start[i],
            end: block.end[i],
            revision: block.revision[i],
            stats: Window {
                start: block.start[i],
                count: block.count[i],
                sum: stat(&block.sum, i),
                min: stat(&block.min, i),
                max: stat(&block.max, i),
                m2: stat(&block.m2, i),
            },
            first: timed(block.first_ts[i], block.first[i]),
            last: timed(block.last_ts[i], block.last[i]),
            sketch: block.sketch[i].clone(),
            custom: has_custom.then(|| CustomWindow {
                values: block.custom[i]
                    .as_ref()
                    .map(|values| values.iter().map(|(k, v)| (k.clone(), v.unwrap_or(f64::NAN))).collect()),
                partial: block.custom_partial[i].clone(),
                missing: block.custom_missing[i],
            }),
        })
        .collect();
    Ok(WindowSeries { series: Series { name: block.name, unit: block.unit, tags: block.tags }, windows })
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

/// The parts of the CBOR record at the start of `bytes`, and its length.
fn decode_cbor(bytes: &[u8]) -> Result<(Parts, usize), RecordDecodeError> {
    let syntax = |e: minicbor::decode::Error| RecordDecodeError::Syntax { syntax: "CBOR", reason: e.to_string() };
    let format = |reason: &str| RecordDecodeError::Format { reason: reason.to_owned() };
    let mut d = Decoder::new(bytes);
    let entries = d.map().map_err(syntax)?.ok_or_else(|| format("envelope must be a definite-length map"))?;
    let (mut version, mut gateway, mut stream, mut seq, mut encoded_at, mut blocks) =
        (None, None, None, None, None, None);
    let (mut aggregates, mut windows, mut coarsened, mut dropped) = (Vec::new(), Vec::new(), None, None);
    for _ in 0..entries {
        match d.u64().map_err(syntax)? {
            k if k == u64::from(key::VERSION) => version = Some(d.u64().map_err(syntax)?),
            k if k == u64::from(key::GATEWAY) => gateway = Some(d.str().map_err(syntax)?.to_owned()),
            k if k == u64::from(key::STREAM) => stream = Some(d.str().map_err(syntax)?.to_owned()),
            k if k == u64::from(key::SEQ) => seq = Some(d.u64().map_err(syntax)?),
            k if k == u64::from(key::ENCODED_AT) => encoded_at = Some(d.i64().map_err(syntax)?),
            k if k == u64::from(key::SERIES) => blocks = Some(decode_blocks(&mut d).map_err(syntax)?),
            k if k == u64::from(key::AGGREGATES) => aggregates = decode_aggregates(&mut d).map_err(syntax)?,
            k if k == u64::from(key::WINDOWS) => windows = decode_windows(&mut d).map_err(syntax)?,
            k if k == u64::from(key::COARSENED) => {
                let (span, width) = decode_span(&mut d).map_err(syntax)?;
                let width = width.ok_or_else(|| format("the coarsened marker (key 7) has no window width"))?;
                coarsened = Some(Coarsened { span, width });
            }
            k if k == u64::from(key::DROPPED) => dropped = Some(decode_span(&mut d).map_err(syntax)?.0),
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
    let blocks = blocks.ok_or_else(|| format("series (key 5) is missing"))?;
    Ok((Parts { header, blocks, aggregates, windows, coarsened, dropped }, d.position()))
}

fn definite(len: Option<u64>) -> Result<u64, minicbor::decode::Error> {
    len.ok_or_else(|| minicbor::decode::Error::message("arrays and maps must have a definite length"))
}

/// Name, unit and tags: the first three elements of both kinds of block.
fn decode_series(d: &mut Decoder<'_>) -> Result<Series, minicbor::decode::Error> {
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
    Ok(Series { name, unit, tags })
}

fn decode_floats(d: &mut Decoder<'_>) -> Result<Vec<Option<f64>>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    (0..count).map(|_| d.f64().map(Some)).collect()
}

fn decode_blocks(d: &mut Decoder<'_>) -> Result<Vec<SeriesBlock>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        if definite(d.array()?)? != 7 {
            return Err(minicbor::decode::Error::message("a series block has 7 elements"));
        }
        let Series { name, unit, tags } = decode_series(d)?;
        let t0 = d.i64()?;
        let tick = d.i64()?;
        let dt_count = definite(d.array()?)?;
        let dt = (0..dt_count).map(|_| d.i64()).collect::<Result<Vec<_>, _>>()?;
        let values = decode_floats(d)?;
        blocks.push(SeriesBlock { name, unit, tags, t0, tick, dt, values });
    }
    Ok(blocks)
}

fn decode_aggregates(d: &mut Decoder<'_>) -> Result<Vec<AggregateBlock>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        if definite(d.array()?)? != 7 {
            return Err(minicbor::decode::Error::message("an aggregate block has 7 elements"));
        }
        let Series { name, unit, tags } = decode_series(d)?;
        let mut block = AggregateBlock { name, unit, tags, ..AggregateBlock::default() };
        block.width = d.u64()?;
        block.start0 = d.i64()?;
        let dstart_count = definite(d.array()?)?;
        block.dstart = (0..dstart_count).map(|_| d.u64()).collect::<Result<_, _>>()?;
        for _ in 0..definite(d.map()?)? {
            match d.u64()? {
                stat_key::COUNT => {
                    let n = definite(d.array()?)?;
                    block.count = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
                }
                stat_key::SUM => block.sum = decode_floats(d)?,
                stat_key::MIN => block.min = decode_floats(d)?,
                stat_key::MAX => block.max = decode_floats(d)?,
                stat_key::M2 => block.m2 = decode_floats(d)?,
                _ => d.skip()?, // statistics from later versions
            }
        }
        blocks.push(block);
    }
    Ok(blocks)
}

fn decode_windows(d: &mut Decoder<'_>) -> Result<Vec<WindowBlock>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    let times = |d: &mut Decoder<'_>| -> Result<Vec<Nanos>, minicbor::decode::Error> {
        let n = definite(d.array()?)?;
        (0..n).map(|_| d.i64()).collect()
    };
    let optional_times = |d: &mut Decoder<'_>| -> Result<Vec<Option<Nanos>>, minicbor::decode::Error> {
        let n = definite(d.array()?)?;
        (0..n)
            .map(|_| {
                if d.datatype()? == Type::Null {
                    d.null()?;
                    Ok(None)
                } else {
                    d.i64().map(Some)
                }
            })
            .collect()
    };
    for _ in 0..count {
        if definite(d.array()?)? != 4 {
            return Err(minicbor::decode::Error::message("a window block has 4 elements"));
        }
        let Series { name, unit, tags } = decode_series(d)?;
        let mut block = WindowBlock { name, unit, tags, ..WindowBlock::default() };
        for _ in 0..definite(d.map()?)? {
            match d.u64()? {
                window_key::KEY => block.key = times(d)?,
                window_key::START => block.start = times(d)?,
                window_key::END => block.end = times(d)?,
                window_key::REVISION => {
                    let n = definite(d.array()?)?;
                    block.revision = (0..n).map(|_| d.u32()).collect::<Result<_, _>>()?;
                }
                window_key::COUNT => {
                    let n = definite(d.array()?)?;
                    block.count = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
                }
                window_key::SUM => block.sum = decode_floats(d)?,
                window_key::MIN => block.min = decode_floats(d)?,
                window_key::MAX => block.max = decode_floats(d)?,
                window_key::M2 => block.m2 = decode_floats(d)?,
                window_key::FIRST_TS => block.first_ts = optional_times(d)?,
                window_key::FIRST => block.first = decode_floats(d)?,
                window_key::LAST_TS => block.last_ts = optional_times(d)?,
                window_key::LAST => block.last = decode_floats(d)?,
                window_key::SKETCH => {
                    let n = definite(d.array()?)?;
                    block.sketch = (0..n).map(|_| d.bytes().map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
                }
                window_key::CUSTOM => {
                    let n = definite(d.array()?)?;
                    block.custom = (0..n).map(|_| decode_custom_values(d)).collect::<Result<_, _>>()?;
                }
                window_key::CUSTOM_PARTIAL => {
                    let n = definite(d.array()?)?;
                    block.custom_partial = (0..n).map(|_| d.bytes().map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
                }
                window_key::CUSTOM_MISSING => {
                    let n = definite(d.array()?)?;
                    block.custom_missing = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
                }
                _ => d.skip()?, // columns from later versions
            }
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// One window's custom values: null, or a map from name to number.
fn decode_custom_values(d: &mut Decoder<'_>) -> Result<Option<BTreeMap<String, Option<f64>>>, minicbor::decode::Error> {
    if d.datatype()? == Type::Null {
        d.null()?;
        return Ok(None);
    }
    let n = definite(d.map()?)?;
    let mut values = BTreeMap::new();
    for _ in 0..n {
        let name = d.str()?.to_owned();
        values.insert(name, Some(d.f64()?));
    }
    Ok(Some(values))
}

fn decode_span(d: &mut Decoder<'_>) -> Result<(Span, Option<u64>), minicbor::decode::Error> {
    let missing = || minicbor::decode::Error::message("a span needs keys 0 to 6");
    let optional_time = |d: &mut Decoder<'_>| -> Result<Option<Nanos>, minicbor::decode::Error> {
        if d.datatype()? == Type::Null {
            d.null()?;
            Ok(None)
        } else {
            d.i64().map(Some)
        }
    };
    let (mut first_seq, mut last_seq, mut records, mut readings, mut first_encoded_at, mut width) =
        (None, None, None, None, None, None);
    let (mut earliest, mut latest) = (None, None);
    for _ in 0..definite(d.map()?)? {
        match d.u64()? {
            span_key::FIRST_SEQ => first_seq = Some(d.u64()?),
            span_key::LAST_SEQ => last_seq = Some(d.u64()?),
            span_key::RECORDS => records = Some(d.u64()?),
            span_key::READINGS => readings = Some(d.u64()?),
            span_key::EARLIEST => earliest = optional_time(d)?,
            span_key::LATEST => latest = optional_time(d)?,
            span_key::FIRST_ENCODED_AT => first_encoded_at = Some(d.i64()?),
            span_key::WIDTH => width = Some(d.u64()?),
            _ => d.skip()?,
        }
    }
    let span = Span {
        first_seq: first_seq.ok_or_else(missing)?,
        last_seq: last_seq.ok_or_else(missing)?,
        records: records.ok_or_else(missing)?,
        readings: readings.ok_or_else(missing)?,
        earliest,
        latest,
        first_encoded_at: first_encoded_at.ok_or_else(missing)?,
    };
    Ok((span, width))
}

#[cfg(test)]
mod tests;
